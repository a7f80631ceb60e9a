"""SparseGPT: the requested pattern, lower output error than magnitude on a small layer (and than Wanda with one block),
reconstruction (kept weights change), singular Hessians damped with a warning, and the whole model loop."""

import logging

import pytest
import torch

from conftest import calibration_ids, tiny_model
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.sparsity import SparsitySpec
from pipeline.core.prune.sequential import prune_model
from pipeline.core.prune.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from pipeline.core.prune.wanda import wanda_score


def correlated_inputs(n=2048, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    scales = torch.logspace(-1, 1, d)[torch.randperm(d, generator=g)]  # outlier features spread over the blocks
    return (torch.randn(n, d, generator=g) @ mix) * scales


def layer_error(w_dense, w_pruned, x):
    return ((x @ w_dense.T - x @ w_pruned.T) ** 2).mean().item()


@pytest.mark.parametrize("pattern", ["0.5", "2:4", "4:8", "0.7"])
def test_pattern_and_lower_error_than_magnitude_and_wanda(pattern):
    spec = SparsitySpec.parse(pattern if ":" in pattern else float(pattern))
    x = correlated_inputs()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 64, generator=g)
    gram = x.double().T @ x.double()
    pruned = w.clone()
    keep = sparsegpt_prune(pruned, inverse_hessian_factor(gram.clone(), 0.01), spec, block_size=16)
    assert torch.equal(pruned != 0, keep)
    if spec.is_nm:
        groups = keep.reshape(48, -1, spec.m).sum(-1)
        assert (groups == spec.n).all(), "N of every M consecutive input weights kept, in every row"
    else:
        # the reference's adaptive mask: int(fraction x block weights) pruned in every block of block_size columns
        pruned_per_block = (~keep).reshape(48, 4, 16).sum(dim=(0, 2))
        assert (pruned_per_block == int(48 * 16 * spec.fraction)).all()
    assert not torch.equal(pruned[keep], w[keep]), "SparseGPT updates the weights it keeps"
    magnitude = w * select_mask(w.abs(), spec, "row")
    err = layer_error(w, pruned, x)
    assert err < layer_error(w, magnitude, x)
    # with the mask chosen over the whole matrix (one block), reconstruction also beats Wanda's mask
    whole = w.clone()
    sparsegpt_prune(whole, inverse_hessian_factor(gram.clone(), 0.01), spec, block_size=64)
    wanda = w * select_mask(wanda_score(w, x.pow(2).sum(0)), spec, "row")
    assert layer_error(w, whole, x) < layer_error(w, wanda, x)


def test_dead_inputs_and_singular_hessian_are_damped_with_a_warning(caplog):
    x = correlated_inputs(n=8, d=32)  # 8 tokens: rank 8 < 32, singular without damping
    x[:, 5] = 0.0  # an input that never fires
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    gram = x.double().T @ x.double()
    keep = sparsegpt_prune(w, inverse_hessian_factor(gram, 0.0, name="layers.0.mlp.down_proj"), SparsitySpec.parse(0.5))
    assert not keep[:, 5].any() and (w[:, 5] == 0).all(), "weights of a dead input are zeroed"
    assert torch.isfinite(w).all()
    assert any("not positive definite" in r.message and "down_proj" in r.message for r in caplog.records
               if r.levelno == logging.WARNING)


@pytest.mark.parametrize("arch", ["llama", "gemma", "llama3", "qwen3", "gemma2", "gemma3", "phi3"])
def test_whole_model_sparsegpt_sequential(arch):
    model = tiny_model(arch)
    ids = calibration_ids(n=8, seq_len=32)
    with torch.no_grad():
        dense_logits = model(ids[:2]).logits
    result = prune_model(model, make_method("sparsegpt"), SparsitySpec.parse("2:4"), ids, scope="attention+mlp",
                         keep_masks=True, progress=False)
    assert len(result.layers) == 2 * 7  # Phi-3 too: its fused qkv_proj and gate_up_proj are pruned role by role
    for name, info in result.layers.items():
        assert info["sparsity"] == pytest.approx(0.5)
        mask = result.masks[name]
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    layer = model.model.layers[1].mlp.down_proj.weight
    assert ((layer != 0).reshape(layer.shape[0], -1, 4).sum(-1) <= 2).all()
    with torch.no_grad():
        logits = model(ids[:2]).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits, dense_logits)
