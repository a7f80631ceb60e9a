"""The sequential core on tiny random GLU models of several architectures."""

import copy

import pytest
import torch

from conftest import ARCHITECTURES, calibration_ids, tiny_model, tiny_non_glu_model
from pipeline.common.errors import PipelineError
from pipeline.core.models import decoder_layers, require_glu
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.sparsity import SparsitySpec
from pipeline.core.prune.sequential import prune_model


def _nm_ok(weight: torch.Tensor, n: int, m: int, along: str) -> bool:
    nonzero = weight != 0
    if along == "output":  # groups of M consecutive rows within each column
        nonzero = nonzero.t()
    groups = nonzero.reshape(nonzero.shape[0], -1, m)
    return bool((groups.sum(dim=2) == n).all())


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_dass_nm_pattern_in_the_right_dimension(arch, pattern, ids):
    model = tiny_model(arch)
    before = copy.deepcopy(model.state_dict())
    spec = SparsitySpec.parse(pattern)
    prune_model(model, make_method("dass"), spec, ids, scope="attention+mlp", progress=False)
    for layer in decoder_layers(model):
        mlp, attn = layer.mlp, layer.self_attn
        for proj in (mlp.gate_proj, mlp.up_proj):
            assert _nm_ok(proj.weight, spec.n, spec.m, "output"), arch
            assert not _nm_ok(proj.weight, spec.n, spec.m, "input"), "gate/up groups must run along the output dim"
        assert _nm_ok(mlp.down_proj.weight, spec.n, spec.m, "input")
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            assert _nm_ok(proj.weight, spec.n, spec.m, "input")
    # nothing outside the projections changed
    after = model.state_dict()
    for name, tensor in before.items():
        if "proj" not in name or "bias" in name:
            assert torch.equal(tensor, after[name]), name


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("method", ["dass", "wanda", "magnitude"])
def test_unstructured_counts_and_scope(arch, method, ids):
    model = tiny_model(arch)
    attn_before = decoder_layers(model)[0].self_attn.q_proj.weight.clone()
    result = prune_model(model, make_method(method), SparsitySpec.parse(0.5), ids, scope="mlp", progress=False)
    assert len(result.layers) == 3 * 2
    for layer in decoder_layers(model):
        gate, down = layer.mlp.gate_proj.weight, layer.mlp.down_proj.weight
        if method == "dass":  # input-balanced: exact count per input column
            assert ((gate == 0).sum(dim=0) == gate.shape[0] // 2).all()
        elif method == "wanda":  # exact count per output row
            assert ((gate == 0).sum(dim=1) == gate.shape[1] // 2).all()
        else:
            assert (gate == 0).sum() == gate.numel() // 2
        if method != "magnitude":
            assert ((down == 0).sum(dim=1) == down.shape[1] // 2).all()
    assert torch.equal(decoder_layers(model)[0].self_attn.q_proj.weight, attn_before), "scope mlp must leave attention"


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_fused_projections_pruned_as_whole_linears_and_dass_refused(method, ids):
    """Phi-3's qkv_proj and gate_up_proj are single linears: Wanda / magnitude prune them as such (2:4 along the
    input, like every Wanda linear); DaSS, whose gate and up roles would be the two halves of one weight, is
    refused with the way out."""
    model = tiny_model("phi3")
    prune_model(model, make_method(method), SparsitySpec.parse("2:4"), ids, scope="attention+mlp", progress=False)
    for layer in decoder_layers(model):
        for proj in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            assert _nm_ok(proj.weight, 2, 4, "input")
    with pytest.raises(PipelineError, match="fuses them into one gate_up_proj") as info:
        require_glu(tiny_model("phi3"), "dass")
    assert "use method wanda, sparsegpt or magnitude" in str(info.value)


def _mlp_stats_from_full_forward(model, layer_index, ids):
    """Sum of squared GLU intermediate activations y = act(gate x) * up x of one layer,
    computed by hand from the MLP's input during ordinary full-model forwards."""
    mlp = decoder_layers(model)[layer_index].mlp
    total = torch.zeros(mlp.down_proj.in_features, dtype=torch.float64)

    def hook(module, args):
        x = args[0]
        y = module.act_fn(module.gate_proj(x)) * module.up_proj(x)
        total.add_(y.reshape(-1, y.shape[-1]).double().pow(2).sum(0))

    handle = mlp.register_forward_pre_hook(hook)
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(input_ids=ids[i : i + 1])
    handle.remove()
    return {"down": total}


def _expected_mlp_masks(model, layer_index, stats, method, spec):
    mlp = decoder_layers(model)[layer_index].mlp
    return {role: select_mask(method.score(role, getattr(mlp, f"{role}_proj").weight.data, stats), spec, method.axis(role))
            for role in ("gate", "up", "down")}


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_layerwise_calibration_uses_pruned_outputs(arch):
    ids = calibration_ids(n=4, seq_len=24)
    spec, method = SparsitySpec.parse(0.5), make_method("dass")
    dense = tiny_model(arch)

    sequential = copy.deepcopy(dense)
    seq = prune_model(sequential, method, spec, ids, keep_masks=True, progress=False)
    oneshot = copy.deepcopy(dense)
    one = prune_model(oneshot, method, spec, ids, sequential=False, keep_masks=True, progress=False)

    # layer 0 sees the embeddings either way, and its masks follow the formula with y from a plain forward
    want0 = _expected_mlp_masks(dense, 0, _mlp_stats_from_full_forward(dense, 0, ids), method, spec)
    for role in ("gate", "up", "down"):
        assert torch.equal(seq.masks[f"layers.0.mlp.{role}_proj"], want0[role])
        assert torch.equal(one.masks[f"layers.0.mlp.{role}_proj"], want0[role])

    # layer 1, sequential: statistics come from the outputs of the *pruned* layer 0
    hybrid = copy.deepcopy(dense)
    decoder_layers(hybrid)[0].load_state_dict(decoder_layers(sequential)[0].state_dict())
    want_seq = _expected_mlp_masks(dense, 1, _mlp_stats_from_full_forward(hybrid, 1, ids), method, spec)
    # layer 1, one-shot: from the dense layer 0
    want_one = _expected_mlp_masks(dense, 1, _mlp_stats_from_full_forward(dense, 1, ids), method, spec)
    differs = False
    for role in ("gate", "up", "down"):
        name = f"layers.1.mlp.{role}_proj"
        assert torch.equal(seq.masks[name], want_seq[role]), name
        assert torch.equal(one.masks[name], want_one[role]), name
        differs |= not torch.equal(seq.masks[name], one.masks[name])
    assert differs, "pruning layer 0 should change layer 1's statistics and so some mask"


def test_same_seed_same_masks(ids):
    masks = []
    for _ in range(2):
        model = tiny_model("llama", seed=5)
        masks.append(prune_model(model, make_method("dass"), SparsitySpec.parse("2:4"), calibration_ids(seed=9),
                                 scope="attention+mlp", keep_masks=True, progress=False).masks)
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_nm_that_does_not_divide_fails_before_touching_weights(ids):
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PipelineError, match="not a multiple of 7"):
        prune_model(model, make_method("wanda"), SparsitySpec.parse("3:7"), ids, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ignore_keeps_listed_projections_dense(ids):
    model = tiny_model("llama")
    keep = decoder_layers(model)[1].mlp.down_proj.weight.clone()
    result = prune_model(model, make_method("dass"), SparsitySpec.parse(0.5), ids, ignore=["layers.1.mlp.down_proj"],
                         progress=False)
    assert "layers.1.mlp.down_proj" not in result.layers
    assert torch.equal(decoder_layers(model)[1].mlp.down_proj.weight, keep)


def test_non_glu_model_refused_by_dass_but_wanda_runs(ids):
    model = tiny_non_glu_model()
    with pytest.raises(PipelineError, match="needs a GLU MLP"):
        require_glu(model, "DaSS")
    result = prune_model(model, make_method("wanda"), SparsitySpec.parse(0.5), ids, progress=False)
    assert {"layers.0.fc1", "layers.0.fc2"} <= set(result.layers)
    assert all(info["sparsity"] == 0.5 for info in result.layers.values())


def test_half_precision_model_stays_half_and_is_pruned(ids):
    model = tiny_model("llama").to(torch.bfloat16)
    prune_model(model, make_method("dass"), SparsitySpec.parse(0.5), ids, progress=False)
    gate = decoder_layers(model)[0].mlp.gate_proj.weight
    assert gate.dtype == torch.bfloat16
    assert ((gate == 0).sum(dim=0) == gate.shape[0] // 2).all()


@pytest.mark.parametrize("arch", ["llama", "gemma", "qwen2"])
def test_projections_reading_one_input_are_grouped(arch):
    from pipeline.core.models import layer_projections
    from pipeline.core.prune.sequential import capture_layer_inputs, input_groups

    model = tiny_model(arch)
    inputs = capture_layer_inputs(model, calibration_ids(n=1), progress=False)
    layer = decoder_layers(model)[0]
    groups = input_groups(layer, layer_projections(layer), inputs.hidden[0:1], inputs.kwargs)
    assert sorted(sorted(p.role for p in g) for g in groups) == [["down"], ["gate", "up"], ["k", "q", "v"], ["o"]]


@pytest.mark.parametrize("method,inputs", [("wanda", 4), ("dass", 3)])
def test_statistics_are_summed_once_per_distinct_input(monkeypatch, method, inputs):
    """Wanda on attention+MLP reads 4 distinct inputs (q/k/v, o, gate/up, down), so 4 sums per window, not 7;
    DaSS scores gate/up from down's input, so 3."""
    from pipeline.core.prune import sequential

    calls = []
    original = sequential.InputStats._hook

    def counting(self, key):
        hook = original(self, key)

        def counted(*args):
            calls.append(key)
            hook(*args)

        return counted

    monkeypatch.setattr(sequential.InputStats, "_hook", counting)
    model = tiny_model("llama")
    windows = 3
    prune_model(model, make_method(method), SparsitySpec.parse(0.5), calibration_ids(n=windows), scope="attention+mlp",
                progress=False)
    assert len(calls) == inputs * windows * len(decoder_layers(model))


def test_sparsegpt_holds_one_hessian_at_a_time(monkeypatch):
    import weakref

    from pipeline.core.prune.sparsegpt import SparseGPT

    alive = []
    original = SparseGPT.prepare

    def prepare(self, gram, name):
        assert not [r for r in alive if r() is not None], f"an earlier X^T X is still alive when {name}'s arrives"
        alive.append(weakref.ref(gram))
        return original(self, gram, name)

    monkeypatch.setattr(SparseGPT, "prepare", prepare)
    model = tiny_model("llama")
    prune_model(model, make_method("sparsegpt"), SparsitySpec.parse(0.5), calibration_ids(n=2), scope="attention+mlp",
                progress=False)
    assert len(alive) == 4 * len(decoder_layers(model))  # q/k/v, o, gate/up, down: one X^T X each
