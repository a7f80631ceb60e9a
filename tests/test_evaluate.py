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


def test_too_short_for_one_window():
    with pytest.raises(PipelineError, match="fewer than one window"):
        perplexity(tiny_model("llama"), torch.arange(10), context_length=32, progress=False)
