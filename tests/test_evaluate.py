import math

import pytest
import torch

from conftest import tiny_model
from pipeline.common.errors import PipelineError
from pipeline.core.evaluate import perplexity


def test_perplexity_is_exp_of_mean_window_loss():
    model = tiny_model("llama")
    tokens = torch.randint(2, 96, (3 * 32 + 5,), generator=torch.Generator().manual_seed(0))
    got = perplexity(model, tokens, context_length=32, progress=False)
    with torch.no_grad():
        losses = [model(input_ids=tokens[i * 32 : (i + 1) * 32][None], labels=tokens[i * 32 : (i + 1) * 32][None]).loss
                  for i in range(3)]
    assert got["windows"] == 3
    assert got["perplexity"] == pytest.approx(math.exp(sum(l.item() for l in losses) / 3), rel=1e-5)
    assert perplexity(model, tokens, context_length=32, max_windows=1, progress=False)["windows"] == 1
    assert got["window_nll"] == pytest.approx([l.item() for l in losses], rel=1e-5)
    spread = torch.tensor([l.item() for l in losses], dtype=torch.float64).std().item()
    assert got["nll_standard_error"] == pytest.approx(spread / math.sqrt(3), rel=1e-5)
    assert perplexity(model, tokens, context_length=32, progress=False) == got, "deterministic: the same run twice"


def test_paired_change_cancels_the_windows_own_difficulty():
    from pipeline.core.evaluate import paired_change

    dense = {"window_nll": [1.0, 3.0, 5.0, 7.0]}
    pruned = {"window_nll": [1.1, 3.1, 5.1, 7.1]}  # every window 0.1 worse: no spread in the difference
    change = paired_change(dense, pruned)
    assert change["ratio"] == pytest.approx(math.exp(0.1))
    assert change["standard_error"] == pytest.approx(0.0, abs=1e-12)
    assert paired_change(dense, {"window_nll": [1.0]}) is None


def test_too_short_for_one_window():
    with pytest.raises(PipelineError, match="fewer than one window"):
        perplexity(tiny_model("llama"), torch.arange(10), context_length=32, progress=False)
