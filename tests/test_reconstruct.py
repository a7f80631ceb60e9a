"""Reconstruction after masking (prune.reconstruct): obs and block keep every pruned weight exactly zero (the zero
pattern is the method's mask, exactly), lower the layer's output error against the mask alone, and obs with
SparseGPT's own mask reproduces SparseGPT's weights."""

import copy

import pytest
import torch

from conftest import calibration_ids, tiny_model
from pipeline.core.models import decoder_layers, layer_projections
from pipeline.core.prune.block_reconstruct import _cut, lr_factor, reconstruct_block, relative_error
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.options import BlockOptions
from pipeline.core.prune.sequential import capture_layer_inputs, prune_model
from pipeline.core.prune.sparsegpt import inverse_hessian_factor, obs_update, sparsegpt_prune
from pipeline.core.prune.sparsity import SparsitySpec
from pipeline.core.prune.wanda import wanda_score
from test_sparsegpt import correlated_inputs, layer_error


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_obs_with_sparsegpts_own_mask_reproduces_sparsegpts_weights(pattern):
    spec = SparsitySpec.parse(pattern if ":" in pattern else float(pattern))
    x = correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    gram = x.double().T @ x.double()
    sparsegpt = w.clone()
    keep = sparsegpt_prune(sparsegpt, inverse_hessian_factor(gram.clone(), 0.01), spec, block_size=16)
    updated = w.clone()
    held = obs_update(updated, inverse_hessian_factor(gram.clone(), 0.01), keep, block_size=16)
    assert torch.equal(held, keep)
    assert torch.equal(updated != 0, sparsegpt != 0)
    # the same arithmetic in another order (obs_update's docstring): equal up to float rounding
    assert torch.allclose(updated, sparsegpt, rtol=1e-5, atol=1e-5 * sparsegpt.abs().max().item())


@pytest.mark.parametrize("pattern", ["0.5", "2:4", "0.7"])
def test_obs_keeps_the_mask_exactly_and_beats_the_mask_alone(pattern):
    spec = SparsitySpec.parse(pattern if ":" in pattern else float(pattern))
    x = correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(3))
    keep = select_mask(wanda_score(w, x.pow(2).sum(0)), spec, "row")
    masked = w * keep
    updated = w.clone()
    obs_update(updated, inverse_hessian_factor(x.double().T @ x.double(), 0.01), keep, block_size=16)
    assert torch.equal(updated != 0, keep), "no pruned weight revived, no kept weight lost"
    assert not torch.equal(updated[keep], w[keep])
    assert layer_error(w, updated, x) < 0.9 * layer_error(w, masked, x)


def _mlp_error(dense, pruned, ids):
    """The output error of every layer's MLP on the dense model's own inputs to it (relative)."""
    errors = []
    feeds = capture_layer_inputs(dense, ids, progress=False)
    hidden = feeds.hidden
    for d_layer, p_layer in zip(decoder_layers(dense), decoder_layers(pruned)):
        x = d_layer.post_attention_layernorm(hidden)
        ref = d_layer.mlp(x)
        errors.append(((p_layer.mlp(x) - ref).pow(2).mean() / ref.pow(2).mean()).item())
        hidden = d_layer(hidden, **feeds.kwargs)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return errors


def _zero_patterns(model):
    return {f"{i}.{p.path}": p.weight(layer) == 0 for i, layer in enumerate(decoder_layers(model))
            for p in layer_projections(layer)}


@pytest.mark.parametrize("method", ["dass", "wanda", "magnitude"])
@pytest.mark.parametrize("mode", ["obs", "block"])
def test_whole_model_reconstruction_keeps_the_methods_masks_and_lowers_the_error(method, mode):
    dense = tiny_model("llama", seed=0)
    ids = calibration_ids(n=8, seq_len=32)
    plain, rebuilt = copy.deepcopy(dense), copy.deepcopy(dense)
    plain_result = prune_model(plain, make_method(method), SparsitySpec(fraction=0.5), ids, progress=False,
                               keep_masks=True)
    result = prune_model(rebuilt, make_method(method), SparsitySpec(fraction=0.5), ids, progress=False,
                         keep_masks=True, reconstruct=mode, block=BlockOptions(steps=40, lr=2e-3, batch_windows=2))
    # the first layer sees the same inputs either way, so its mask must be the method's own
    first = [name for name in result.masks if name.startswith("layers.0.")]
    for name in first:
        assert torch.equal(result.masks[name], plain_result.masks[name])
    patterns = _zero_patterns(rebuilt)
    for name, mask in result.masks.items():
        index, path = name.split(".", 2)[1], name.split(".", 2)[2]
        assert torch.equal(patterns[f"{index}.{path}"], ~mask), f"{name}: zeros are exactly the pruned weights"
    for info in result.layers.values():
        assert info["sparsity"] == pytest.approx(0.5)
    plain_error = sum(_mlp_error(dense, plain, ids))
    rebuilt_error = sum(_mlp_error(dense, rebuilt, ids))
    assert rebuilt_error < plain_error
    if mode == "block":
        assert all(b["error_after"] < b["error_before"] for b in result.blocks.values())


def _masked_first_layer(seed: int, seq_len: int, pattern: str):
    """A tiny LLaMA's first layer with its dense outputs on 4 windows, then magnitude-masked to ``pattern``:
    (layer, its inputs, the dense targets, the masks by projection path)."""
    dense = tiny_model("llama", seed=seed)
    feeds = capture_layer_inputs(dense, calibration_ids(n=4, seq_len=seq_len), progress=False)
    layer = decoder_layers(dense)[0]
    with torch.no_grad():
        outputs = [layer(feeds.hidden[s : s + 1], **feeds.kwargs) for s in range(4)]
    targets = torch.cat([out[0] if isinstance(out, tuple) else out for out in outputs])
    masks = {}
    for proj in layer_projections(layer):
        w = proj.weight(layer)
        masks[proj.path] = select_mask(w.abs(), SparsitySpec.parse(pattern), "row")
        with torch.no_grad():
            w.mul_(masks[proj.path])
    return layer, feeds, targets, masks


def test_block_reconstruction_never_moves_a_pruned_weight_even_with_adams_momentum():
    layer, feeds, targets, masks = _masked_first_layer(seed=1, seq_len=16, pattern="2:4")
    fit = reconstruct_block(layer, masks, feeds.hidden, targets, feeds.kwargs,
                            BlockOptions(steps=30, lr=5e-3, train=["pruned", "norms", "dense"]), torch.device("cpu"),
                            progress=False)
    assert fit.loss_after < fit.loss_before
    for proj in layer_projections(layer):
        assert torch.equal(proj.weight(layer) == 0, ~masks[proj.path])
    assert not any(p.requires_grad for p in layer.parameters())


def test_the_cosine_schedule_warms_up_decays_to_a_tenth_and_keeps_the_mask(monkeypatch):
    options = BlockOptions(steps=40, lr=5e-3, schedule="cosine", train=["pruned", "norms", "dense"])
    factors = [lr_factor(step, options) for step in range(options.steps)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # warm-up over the first tenth of the steps
    assert all(a >= b for a, b in zip(factors[3:], factors[4:])) and factors[-1] == pytest.approx(0.1, abs=0.01)
    assert lr_factor(7, BlockOptions(steps=40)) == 1.0  # constant: the default
    layer, feeds, targets, masks = _masked_first_layer(seed=1, seq_len=16, pattern="2:4")
    seen = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    fit = reconstruct_block(layer, masks, feeds.hidden, targets, feeds.kwargs, options, torch.device("cpu"),
                            progress=False)
    assert seen == pytest.approx([5e-3 * f for f in factors]), "the optimizer ran at the scheduled rate"
    assert fit.loss_after < fit.loss_before
    for proj in layer_projections(layer):
        assert torch.equal(proj.weight(layer) == 0, ~masks[proj.path])


def test_relative_error_is_the_block_losss_measure_before_and_after_training():
    """What scripts/block_layer_tuning.py reports for held-out windows is the measure the training reports."""
    layer, feeds, targets, masks = _masked_first_layer(seed=2, seq_len=16, pattern="0.5")
    cpu = torch.device("cpu")
    before = relative_error(layer, feeds.hidden, targets, feeds.kwargs, cpu)
    fit = reconstruct_block(layer, masks, feeds.hidden, targets, feeds.kwargs,
                            BlockOptions(steps=10, lr=2e-3, tokens=None), cpu, progress=False)
    assert fit.loss_after < fit.loss_before
    assert before == pytest.approx(fit.loss_before, rel=1e-6)
    assert relative_error(layer, feeds.hidden, targets, feeds.kwargs, cpu) == pytest.approx(fit.loss_after, rel=1e-6)


def test_cut_keeps_the_first_tokens_of_every_per_position_tensor():
    kwargs = {"position_ids": torch.arange(8).unsqueeze(0), "position_embeddings": (torch.ones(1, 8, 4), torch.ones(1, 8, 4)),
              "attention_mask": torch.zeros(1, 1, 8, 8), "use_cache": False}
    cut = _cut(kwargs, 8, 3)
    assert cut["position_ids"].tolist() == [[0, 1, 2]]
    assert cut["position_embeddings"][0].shape == (1, 3, 4)
    assert cut["attention_mask"].shape == (1, 1, 3, 3)
    assert cut["use_cache"] is False


def test_a_recipe_with_reconstruction_runs_records_it_and_reports_it(tmp_path):
    """The stage wiring: prune.reconstruct and its settings reach the loop; sparsity.json, summary and report say what
    ran; a further evaluation text (evaluation.also) is measured beside the main one."""
    import yaml

    from conftest import tiny_recipe_file
    from pipeline.recipe import load_recipe
    from pipeline.runner import run_recipe

    path = tiny_recipe_file(tmp_path, "rebuilt", {"method": "wanda", "sparsity": 0.5, "scope": "mlp",
                                                   "reconstruct": "obs+block", "block": {"steps": 3, "lr": 1e-3}})
    data = yaml.safe_load(path.read_text())
    data["evaluation"]["also"] = ["stdlib"]
    path.write_text(yaml.safe_dump(data))
    summary = run_recipe(load_recipe(path), progress=False, skip_preflight=True)
    record = summary["reconstruct"]
    assert record["mode"] == "obs+block" and record["block"]["steps"] == 3 and record["obs"]["block_size"] == 128
    assert len(record["block_layers"]) == 2  # every decoder layer of the tiny model
    assert summary["sparsity_achieved"]["overall"] == pytest.approx(0.5)
    assert set(summary["perplexity"]["pruned_also"]) == {"stdlib"} == set(summary["perplexity"]["dense_also"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "reconstruction: **obs+block**" in report and "| stdlib |" in report and "standard error" in report


@pytest.mark.parametrize("precision,tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_the_flipped_factor_is_sparsegpts_factor(precision, tolerance):
    x = correlated_inputs(n=512, d=64)
    gram = x.double().T @ x.double()
    classic = inverse_hessian_factor(gram.clone(), 0.01).upper
    flipped = inverse_hessian_factor(gram.clone(), 0.01, precision=precision, flipped=True).upper
    assert torch.equal(flipped, flipped.triu())
    assert ((flipped - classic).abs().max() / classic.abs().max()).item() < tolerance


def test_block_training_that_raises_the_error_is_discarded():
    layer, inputs, targets, masks = _masked_first_layer(seed=3, seq_len=32, pattern="0.5")
    masked = copy.deepcopy(layer.state_dict())
    fit = reconstruct_block(layer, masks, inputs.hidden, targets, inputs.kwargs,
                            BlockOptions(steps=4, lr=10.0, batch_windows=2), torch.device("cpu"), progress=False)
    assert fit.trained_error is not None and fit.trained_error > fit.loss_before
    assert fit.loss_after == fit.loss_before
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in masked.items()), "the layer is as it was"
