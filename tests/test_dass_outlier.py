"""The DaSS variant with outlier input columns protected (prune.method: dass_outlier): planted outlier columns of
gate/up stay dense, the matrix's sparsity is exactly the recipe's (unstructured), every other column is exact N:M
(N:M), and on a whole model it beats plain DaSS where an outlier feature is planted."""

import copy

import pytest
import torch

from conftest import calibration_ids, tiny_model
from pipeline.core.models import decoder_layers
from pipeline.core.prune.dass_outlier import outlier_columns, protected_column_mask
from pipeline.core.prune.masks import prune_lowest_per_row, select_mask
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.sequential import prune_model
from pipeline.core.prune.sparsity import SparsitySpec

OUTLIERS = [3, 17, 40]


def planted(out=32, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_sq = torch.rand(cols, generator=g) + 0.5
    x_sq[OUTLIERS] = torch.tensor([400.0, 250.0, 900.0])  # norms 15-30x the median
    return torch.randn(out, cols, generator=g).abs(), x_sq


def test_outlier_columns_are_the_planted_ones_largest_first_and_capped():
    _, x_sq = planted()
    assert outlier_columns(x_sq, 3.0, 0.1).tolist() == [40, 3, 17]
    assert outlier_columns(x_sq, 3.0, 2 / 64).tolist() == [40, 3]  # at most 2 of 64 columns
    assert outlier_columns(x_sq, 100.0, 0.1).tolist() == []


@pytest.mark.parametrize("fraction", [0.5, 0.7, 0.33])
def test_unstructured_keeps_outlier_columns_and_meets_the_sparsity_exactly(fraction):
    score, x_sq = planted()
    spec = SparsitySpec(fraction=fraction)
    keep = protected_column_mask(score, spec, torch.tensor(OUTLIERS), x_sq)
    assert keep[:, OUTLIERS].all()
    plain = select_mask(score, spec, "column")
    assert (~keep).sum() == (~plain).sum(), "exactly as many weights pruned as plain DaSS prunes"
    per_column = (~keep).sum(0)
    others = [c for c in range(64) if c not in OUTLIERS]
    assert per_column[others].max() - per_column[others].min() <= 1, "spread evenly over the other columns"
    # within a column, the lowest scores go (DaSS's own comparison)
    for c in others[:5]:
        pruned_scores, kept_scores = score[~keep[:, c], c], score[keep[:, c], c]
        assert pruned_scores.max() <= kept_scores.min()


def test_nm_keeps_outlier_columns_dense_and_every_other_column_exact_nm():
    score, x_sq = planted()
    keep = protected_column_mask(score, SparsitySpec.parse("2:4"), torch.tensor(OUTLIERS), x_sq)
    assert keep[:, OUTLIERS].all()
    others = [c for c in range(64) if c not in OUTLIERS]
    groups = keep[:, others].t().reshape(len(others), -1, 4).sum(-1)
    assert (groups == 2).all()


def test_prune_lowest_per_row_counts_and_ties():
    score = torch.tensor([[1.0, 1.0, 1.0, 0.5], [4.0, 3.0, 2.0, 1.0]])
    keep = prune_lowest_per_row(score, torch.tensor([2, 0]))
    assert keep.tolist() == [[False, True, True, False], [True, True, True, True]]


def test_on_a_model_with_a_planted_outlier_feature_it_keeps_those_columns_and_the_sparsity():
    model = tiny_model("llama", seed=0)
    with torch.no_grad():  # one hidden feature scaled up before every MLP: an outlier input column of gate/up
        for layer in decoder_layers(model):
            layer.post_attention_layernorm.weight[5] = 40.0
    ids = calibration_ids(n=4, seq_len=32)
    variant = copy.deepcopy(model)
    result = prune_model(variant, make_method("dass_outlier", max_outlier_fraction=0.05), SparsitySpec(fraction=0.5), ids, progress=False,
                         keep_masks=True)
    for name, mask in result.masks.items():
        if name.endswith(("gate_proj", "up_proj")):
            assert mask[:, 5].all(), f"{name}: the outlier column is kept dense"
        assert result.layers[name]["sparsity"] == pytest.approx(0.5)
    plain = prune_model(copy.deepcopy(model), make_method("dass"), SparsitySpec(fraction=0.5), ids, progress=False,
                        keep_masks=True)
    assert not all(m[:, 5].all() for n, m in plain.masks.items() if n.endswith("gate_proj"))
