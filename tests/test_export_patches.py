"""Each DeepSparse export patch, checked on the exported graph of tiny random GQA models."""

import numpy as np
import onnx
import pytest
import torch
from optimum.exporters.onnx import export

from conftest import ARCHITECTURES, FUSED_ARCHITECTURES, tiny_model, tiny_non_glu_model
from export.checks import ort_session
from export.deepsparse_graph import ARCHITECTURES as COVERED, DeepSparseForward, head_dim, quirks_for
from export.onnx_configs import DeepSparseDecoderOnnxConfig
from pipeline.common.errors import PipelineError

MAX_POS = 64
GLU_ARCHS = [*ARCHITECTURES, *FUSED_ARCHITECTURES]  # every tiny family of conftest.py


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    graphs = {}
    for arch in GLU_ARCHS:
        model = tiny_model(arch)
        path = tmp_path_factory.mktemp(arch) / "model.onnx"
        export(model, DeepSparseDecoderOnnxConfig(model.config, max_positions=MAX_POS), path, opset=14)
        graphs[arch] = (model, path)
    return graphs


def _feed(config, ids, past, done, attention=None):
    q = ids.shape[1]
    total = done + q
    feed = {"input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((1, total), np.int64) if attention is None else attention,
            "positions": np.arange(done, total, dtype=np.int64)[None],
            "causal_mask": np.tril(np.ones((q, total), np.int64), k=done)[None, None]}
    for i, (k, v) in enumerate(past):
        feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = k, v
    return feed


def _empty_past(config):
    shape = (1, config.num_attention_heads, 0, head_dim(config))
    return [(np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in range(config.num_hidden_layers)]


@pytest.mark.parametrize("arch", GLU_ARCHS)
def test_incremental_decoding_in_onnx_matches_pytorch(exported, arch):
    """The patched graph as a whole: prompt of 5, then one token at a time, equals a full PyTorch forward."""
    model, path = exported[arch]
    session = ort_session(path)
    outputs = [o.name for o in session.get_outputs()]
    ids = torch.randint(2, 96, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids).logits.numpy()
    past, done, logits = _empty_past(model.config), 0, []
    for q in [5] + [1] * 7:
        result = dict(zip(outputs, session.run(None, _feed(model.config, ids[:, done:done + q].numpy(), past, done))))
        logits.append(result["logits"])
        past = [(result[f"present.{i}.key"], result[f"present.{i}.value"]) for i in range(model.config.num_hidden_layers)]
        done += q
    assert np.abs(np.concatenate(logits, axis=1) - reference).max() < 1e-4


def test_patch_positions_input(exported):
    graph = onnx.load(str(exported["llama"][1])).graph
    names = [i.name for i in graph.input]
    layers = exported["llama"][0].config.num_hidden_layers
    assert names == ["input_ids", "attention_mask",
                     *[f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")],
                     "positions", "causal_mask"]
    assert "position_ids" not in names and "cache_position" not in names


def test_patch_rotary_table(exported):
    model, path = exported["llama"]
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Cos", "Sin"}, "no on-the-fly rotary (it aborts the DeepSparse compiler)"
    constants = {i.name: tuple(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = tuple(node.attribute[0].t.dims)
    gathered = [constants.get(n.input[0]) for n in graph.node if n.op_type == "Gather"]
    assert gathered.count((MAX_POS, head_dim(model.config))) == 2, "cos and sin rows gathered from precomputed tables"
    cos, sin = DeepSparseForward(model, MAX_POS).tables["global"]
    ref_cos, ref_sin = model.model.rotary_emb(torch.zeros(1), torch.arange(MAX_POS)[None])
    assert torch.allclose(cos, ref_cos[0]) and torch.allclose(sin, ref_sin[0])


def test_patch_rotary_table_per_layer_type_and_partial(exported):
    """Gemma 3 gathers a second (local rope base) table for its sliding layers; LLaMA 3's table is the scaled one."""
    model, path = exported["gemma3"]
    graph = onnx.load(str(path)).graph
    tables = {i.name for i in graph.initializer if tuple(i.dims) == (MAX_POS, head_dim(model.config))}
    tables |= {n.output[0] for n in graph.node
               if n.op_type == "Constant" and tuple(n.attribute[0].t.dims) == (MAX_POS, head_dim(model.config))}
    assert len(tables) == 4, "cos and sin, global and local"
    forward = DeepSparseForward(model, MAX_POS)
    assert not torch.allclose(forward.tables["global"][0], forward.tables["local"][0])
    llama3 = exported["llama3"][0]
    scaled = DeepSparseForward(llama3, MAX_POS).tables["global"][0]
    plain = DeepSparseForward(tiny_model("llama"), MAX_POS).tables["global"][0]
    assert not torch.allclose(scaled, plain), "LLaMA 3's rope scaling reaches the table"


def test_patch_causal_mask_input_and_left_padding(exported):
    """attention_mask zeros (left padding) and causal_mask must hide those positions exactly."""
    model, path = exported["llama"]
    session = ort_session(path)
    ids = np.array([[5, 6, 7, 8]], np.int64)
    plain = session.run(["logits"], _feed(model.config, ids, _empty_past(model.config), 0))[0]
    padded_ids = np.array([[0, 0, 5, 6, 7, 8]], np.int64)
    feed = _feed(model.config, padded_ids, _empty_past(model.config), 0, attention=np.array([[0, 0, 1, 1, 1, 1]]))
    feed["positions"] = np.array([[0, 0, 0, 1, 2, 3]], np.int64)  # as DeepSparse numbers padded prompts
    padded = session.run(["logits"], feed)[0]
    assert np.abs(padded[:, 2:] - plain).max() < 1e-4
    inputs = {i.name: i for i in onnx.load(str(path)).graph.input}
    assert inputs["causal_mask"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert len(inputs["causal_mask"].type.tensor_type.shape.dim) == 4


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_patch_repeat_kv_before_cache(exported, arch):
    model, path = exported[arch]
    assert model.config.num_key_value_heads < model.config.num_attention_heads, "the tiny models use GQA"
    graph = onnx.load(str(path)).graph
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key_values", "present")):
            assert value.type.tensor_type.shape.dim[1].dim_value == model.config.num_attention_heads, value.name


def test_patch_cache_concat_feeds_matmul(exported):
    graph = onnx.load(str(exported["llama"][1])).graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    concats = [n for n in graph.node if n.op_type == "Concat" and any(i.startswith("past_key_values") for i in n.input)]
    assert len(concats) == 2 * exported["llama"][0].config.num_hidden_layers
    for concat in concats:
        assert concat.input[0].startswith("past_key_values"), "past first, new second"
        assert onnx.helper.get_attribute_value(concat.attribute[0]) == 2, "axis 2, not negative"
        reached = set()
        for node in consumers[concat.output[0]]:
            if node.op_type == "Transpose":
                reached |= {n.op_type for n in consumers[node.output[0]]}
            else:
                reached.add(node.op_type)
        assert "MatMul" in reached
        assert not reached & {"Shape", "Slice", "Gather", "Expand", "Reshape"}, reached


def test_patch_logits_first(exported):
    graph = onnx.load(str(exported["llama"][1])).graph
    names = [o.name for o in graph.output]
    assert names[0] == "logits" and all(n.startswith("present.") for n in names[1:])


def test_uncovered_architecture_is_refused():
    assert set(COVERED) == {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"}
    with pytest.raises(PipelineError, match="DeepSparse export covers"):
        quirks_for(tiny_non_glu_model().config)
