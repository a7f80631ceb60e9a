"""benchmarks/mask_error.py: the output error a mask leaves, and the outlier-column effect it was written to show."""

import torch

from benchmarks.mask_error import gate_mask, mask_error_rows, markdown, output_error
from pipeline.core.models import decoder_layers
from tests.conftest import calibration_ids, tiny_model


def test_output_error_is_the_share_of_the_output_the_pruned_weights_carried():
    torch.manual_seed(0)
    x, w = torch.randn(32, 8), torch.randn(6, 8)
    assert output_error(x, w, torch.ones_like(w, dtype=torch.bool)) == 0.0
    assert abs(output_error(x, w, torch.zeros_like(w, dtype=torch.bool)) - 1.0) < 1e-6
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, 3] = False  # one input column gone: the error is that column's contribution
    expected = (torch.outer(x[:, 3], w[:, 3]).norm() / (x @ w.t()).norm()).item()
    assert abs(output_error(x, w, keep) - expected) < 1e-6


def test_dass_prunes_half_of_an_outlier_column_and_wanda_keeps_it():
    torch.manual_seed(0)
    w, x_sq, y_sq = torch.rand(8, 8) + 0.1, torch.ones(8), torch.rand(8) + 0.5
    x_sq[5] = 1e4  # one input feature with outlier activations
    stats = {"gate": x_sq, "up": x_sq, "down": y_sq}
    dass, wanda = gate_mask("dass", w, stats, "2:4"), gate_mask("wanda", w, stats, "2:4")
    assert dass[:, 5].sum() == 4 and wanda[:, 5].all()  # DaSS: 2 of every 4 rows in each column, outlier or not
    assert gate_mask("dass", w, stats, "2:4", keep_columns=torch.tensor([5]))[:, 5].all()


def test_rows_on_a_model_with_an_outlier_feature():
    model = tiny_model("llama")
    with torch.no_grad():  # the MLP input of layer 1 gets one feature 50x the others: an outlier column
        decoder_layers(model)[1].post_attention_layernorm.weight[7] = 50.0
    rows = mask_error_rows(model, calibration_ids(), [0, 1], ["0.5", "2:4"], keep_top=1)
    outlier = rows[1]
    assert outlier["x_max_over_median"] > 20 and rows[0]["x_max_over_median"] < 20
    assert outlier["dass 2:4"] > 2 * outlier["wanda 2:4"]
    assert outlier["dass 2:4 +top1"] < outlier["dass 2:4"] / 2
    assert markdown(rows).count("\n") == 3
