"""The selection core: exact counts and exact N:M patterns in the stated dimension."""

import pytest
import torch

from pipeline.common.errors import PipelineError
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.sparsity import SparsitySpec


@pytest.mark.parametrize("text,fraction,n,m", [(0.5, 0.5, None, None), ("0.7", 0.7, None, None),
                                               ("60%", 0.6, None, None), ("2:4", 0.5, 2, 4), ("4:8", 0.5, 4, 8),
                                               ("1:4", 0.75, 1, 4), (" 3 : 8 ", 0.625, 3, 8)])
def test_parse_valid(text, fraction, n, m):
    spec = SparsitySpec.parse(text)
    assert spec.fraction == pytest.approx(fraction) and spec.n == n and spec.m == m


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0", "4:4", "5:4", "0:4", "1:1", "half", "2:x", True])
def test_parse_invalid_names_problem_and_fix(bad):
    with pytest.raises(PipelineError) as info:
        SparsitySpec.parse(bad)
    assert "fix:" in str(info.value)


def test_nm_must_divide_grouped_dimension():
    spec = SparsitySpec.parse("2:4")
    spec.check_fits((8, 12), "row", "x")
    spec.check_fits((12, 6), "column", "x")
    with pytest.raises(PipelineError, match="input dimension 6"):
        spec.check_fits((8, 6), "row", "layers.0.mlp.down_proj")
    with pytest.raises(PipelineError, match="output dimension 6"):
        spec.check_fits((6, 8), "column", "layers.0.mlp.gate_proj")


@pytest.fixture
def score():
    return torch.rand(24, 40, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.7, 0.93])
def test_unstructured_row_counts_are_exact(score, fraction):
    mask = select_mask(score, SparsitySpec.parse(fraction), "row")
    assert (mask.sum(dim=1) == 40 - int(40 * fraction)).all()
    # the kept weights are the largest of their row
    for r in range(24):
        assert score[r][mask[r]].min() > score[r][~mask[r]].max()


@pytest.mark.parametrize("fraction", [0.5, 0.7])
def test_unstructured_column_counts_are_exact(score, fraction):
    mask = select_mask(score, SparsitySpec.parse(fraction), "column")
    assert (mask.sum(dim=0) == 24 - int(24 * fraction)).all()
    for c in range(40):
        assert score[:, c][mask[:, c]].min() > score[:, c][~mask[:, c]].max()


def test_unstructured_matrix_is_global(score):
    mask = select_mask(score, SparsitySpec.parse(0.5), "matrix")
    assert mask.sum() == score.numel() // 2
    assert score[mask].min() > score[~mask].max()


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_row_groups_lie_along_input_dimension(score, pattern):
    spec = SparsitySpec.parse(pattern)
    mask = select_mask(score, spec, "row")
    groups = mask.reshape(24, 40 // spec.m, spec.m)
    assert (groups.sum(dim=2) == spec.n).all()
    s = score.reshape(24, 40 // spec.m, spec.m)
    kept_min = torch.where(groups, s, torch.inf).amin(dim=2)
    dropped_max = torch.where(~groups, s, -torch.inf).amax(dim=2)
    assert (kept_min > dropped_max).all()


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_column_groups_lie_along_output_dimension(score, pattern):
    spec = SparsitySpec.parse(pattern)
    mask = select_mask(score, spec, "column")
    groups = mask.t().reshape(40, 24 // spec.m, spec.m)
    assert (groups.sum(dim=2) == spec.n).all()
    # and not along the input dimension (that would be a different pattern)
    assert not (mask.reshape(24, 40 // spec.m, spec.m).sum(dim=2) == spec.n).all()


def test_ties_are_deterministic():
    score = torch.zeros(4, 8)
    a = select_mask(score, SparsitySpec.parse(0.5), "row")
    b = select_mask(score.clone(), SparsitySpec.parse(0.5), "row")
    assert torch.equal(a, b) and (a.sum(dim=1) == 4).all()
