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


def _phi3_and_its_unfused_llama():
    """A tiny Phi-3 (fused qkv_proj, gate_up_proj; full rotary) and the LLaMA model with the same weights split
    into q/k/v and gate/up: the same function, so every method must prune them alike."""
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    from conftest import COMMON

    torch.manual_seed(0)
    phi = Phi3ForCausalLM(Phi3Config(**COMMON, pad_token_id=0, rms_norm_eps=1e-6)).eval()
    llama = LlamaForCausalLM(LlamaConfig(**COMMON, rms_norm_eps=1e-6)).eval()
    weights = {}
    for name, tensor in phi.state_dict().items():
        if "qkv_proj" in name:
            q, k, v = tensor.split([64, 32, 32])  # 4 heads x 16, 2 KV heads x 16
            for role, part in zip("qkv", (q, k, v)):
                weights[name.replace("qkv_proj", f"{role}_proj")] = part
        elif "gate_up_proj" in name:
            gate, up = tensor.chunk(2)
            weights[name.replace("gate_up_proj", "gate_proj")], weights[name.replace("gate_up_proj", "up_proj")] = gate, up
        else:
            weights[name] = tensor
    llama.load_state_dict(weights)
    return phi, llama


def test_fused_phi3_is_pruned_role_by_role_as_its_unfused_twin(ids):
    """Phi-3's fused linears are pruned per role (q/k/v and gate/up are row ranges of one weight): DaSS (column
    balance and N:M groups within gate and within up), Wanda and SparseGPT give exactly the masks they give the
    same model with separate projections."""
    phi, llama = _phi3_and_its_unfused_llama()
    with torch.no_grad():
        assert torch.allclose(phi(ids[:1]).logits, llama(ids[:1]).logits, atol=1e-5), "the twins compute one function"
    names = {"self_attn.qkv_proj[q]": "self_attn.q_proj", "self_attn.qkv_proj[k]": "self_attn.k_proj",
             "self_attn.qkv_proj[v]": "self_attn.v_proj", "mlp.gate_up_proj[gate]": "mlp.gate_proj",
             "mlp.gate_up_proj[up]": "mlp.up_proj", "self_attn.o_proj": "self_attn.o_proj", "mlp.down_proj": "mlp.down_proj"}
    for method, pattern in (("dass", "0.5"), ("dass", "2:4"), ("wanda", "0.5"), ("sparsegpt", "2:4")):
        a, b = copy.deepcopy(phi), copy.deepcopy(llama)
        fused = prune_model(a, make_method(method), SparsitySpec.parse(pattern), ids, scope="attention+mlp",
                            keep_masks=True, progress=False)
        plain = prune_model(b, make_method(method), SparsitySpec.parse(pattern), ids, scope="attention+mlp",
                            keep_masks=True, progress=False)
        assert len(fused.masks) == len(plain.masks) == 2 * 7
        for name, mask in fused.masks.items():
            layer, rest = name.split(".", 2)[1], name.split(".", 2)[2]
            twin = plain.masks[f"layers.{layer}.{names[rest]}"]
            assert torch.equal(mask, twin), (method, pattern, name)
            assert fused.layers[name]["role"] == plain.layers[f"layers.{layer}.{names[rest]}"]["role"]
    gate_up = a.model.layers[0].mlp.gate_up_proj.weight  # the zeros landed in the fused weight itself
    assert torch.equal(gate_up[:128] != 0, fused.masks["layers.0.mlp.gate_up_proj[gate]"].bool())


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
