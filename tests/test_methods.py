"""Each method's masks equal a direct, loop-by-loop computation of its formula on a small layer."""

import itertools

import pytest
import torch

from pipeline.core.prune.methods import make_method
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.sparsity import SparsitySpec

OUT, IN, INTER = 16, 8, 16


@pytest.fixture
def layer():
    g = torch.Generator().manual_seed(3)
    return {
        "gate": torch.randn(INTER, IN, generator=g),
        "up": torch.randn(INTER, IN, generator=g),
        "down": torch.randn(IN, INTER, generator=g),
        "q": torch.randn(IN, IN, generator=g),
        "stats": {"gate": torch.rand(IN, generator=g, dtype=torch.float64) * 10,
                  "up": torch.rand(IN, generator=g, dtype=torch.float64) * 10,
                  "down": torch.rand(INTER, generator=g, dtype=torch.float64) * 10,
                  "q": torch.rand(IN, generator=g, dtype=torch.float64) * 10},
    }


def keep_top(values: list[float], keep: int) -> set[int]:
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)
    return set(order[:keep])


def loop_mask(weight, score_fn, spec: SparsitySpec, along: str) -> torch.Tensor:
    """Reference: score each weight with score_fn(i, j), then select per row or per column by loops."""
    rows, cols = weight.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    lines = range(rows) if along == "row" else range(cols)
    for line in lines:
        length = cols if along == "row" else rows
        cells = [(line, k) if along == "row" else (k, line) for k in range(length)]
        scores = [score_fn(i, j) for i, j in cells]
        if spec.is_nm:
            for start in range(0, length, spec.m):
                block = list(range(start, start + spec.m))
                for k in keep_top([scores[b] for b in block], spec.n):
                    mask[cells[block[k]]] = True
        else:
            for k in keep_top(scores, length - int(length * spec.fraction)):
                mask[cells[k]] = True
    return mask


PATTERNS = ["0.5", "0.75", "2:4", "4:8"]


@pytest.mark.parametrize("pattern,alpha", itertools.product(PATTERNS, [0.5, 1.0, 0.0]))
def test_dass_gate_and_up_are_input_balanced_with_channel_norm_power(layer, pattern, alpha):
    spec = SparsitySpec.parse(pattern)
    method = make_method("dass", alpha=alpha)
    y_norm = layer["stats"]["down"].sqrt()
    for role in ("gate", "up"):
        w = layer[role]
        got = select_mask(method.score(role, w, layer["stats"]), spec, method.axis(role))
        want = loop_mask(w, lambda i, j: abs(w[i, j].item()) * y_norm[i].item() ** alpha, spec, "column")
        assert torch.equal(got, want), role


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dass_down_is_wanda_on_intermediate_activation(layer, pattern):
    spec = SparsitySpec.parse(pattern)
    method = make_method("dass")
    w, y_norm = layer["down"], layer["stats"]["down"].sqrt()
    got = select_mask(method.score("down", w, layer["stats"]), spec, method.axis("down"))
    want = loop_mask(w, lambda i, j: abs(w[i, j].item()) * y_norm[j].item(), spec, "row")
    assert torch.equal(got, want)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dass_attention_uses_wanda(layer, pattern):
    spec = SparsitySpec.parse(pattern)
    dass, wanda = make_method("dass"), make_method("wanda")
    w = layer["q"]
    got = select_mask(dass.score("q", w, layer["stats"]), spec, dass.axis("q"))
    want = select_mask(wanda.score("q", w, layer["stats"]), spec, wanda.axis("q"))
    assert torch.equal(got, want)


@pytest.mark.parametrize("pattern,role", itertools.product(PATTERNS, ["gate", "down", "q"]))
def test_wanda_matches_loop(layer, pattern, role):
    spec = SparsitySpec.parse(pattern)
    method = make_method("wanda")
    w, x_norm = layer[role], layer["stats"][role].sqrt()
    got = select_mask(method.score(role, w, layer["stats"]), spec, method.axis(role))
    want = loop_mask(w, lambda i, j: abs(w[i, j].item()) * x_norm[j].item(), spec, "row")
    assert torch.equal(got, want)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_magnitude_matches_loop(layer, pattern):
    spec = SparsitySpec.parse(pattern)
    method = make_method("magnitude")
    w = layer["gate"]
    got = select_mask(method.score("gate", w, {}), spec, method.axis("gate"))
    if spec.is_nm:
        want = loop_mask(w, lambda i, j: abs(w[i, j].item()), spec, "row")
    else:
        flat = w.abs().flatten().tolist()
        want = torch.zeros(w.numel(), dtype=torch.bool)
        want[list(keep_top(flat, w.numel() - int(w.numel() * spec.fraction)))] = True
        want = want.reshape(w.shape)
    assert torch.equal(got, want)


def test_dass_differs_from_wanda_on_gate(layer):
    """Guard against DaSS silently degenerating into Wanda."""
    spec = SparsitySpec.parse("2:4")
    dass, wanda = make_method("dass"), make_method("wanda")
    a = select_mask(dass.score("gate", layer["gate"], layer["stats"]), spec, dass.axis("gate"))
    b = select_mask(wanda.score("gate", layer["gate"], layer["stats"]), spec, wanda.axis("gate"))
    assert not torch.equal(a, b)
