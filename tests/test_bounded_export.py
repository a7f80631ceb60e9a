"""Bounded-memory export (export/bounded.py, export/depth.py): a 2-layer template deepened to N layers with the
checkpoint's weights written tensor by tensor must be the graph a whole export writes, computing the same logits,
holding the same zeros, and running in DeepSparse."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import conftest
from conftest import calibration_ids, save_checkpoint, tiny_tokenizer
from pipeline.common.errors import PipelineError

DEPTH = 4


def deep_tiny(arch: str, layers: int = DEPTH):
    """A pruned (DaSS 2:4, attention + MLP) tiny model of ``arch`` with ``layers`` decoder layers."""
    from pipeline.core.prune.methods import make_method
    from pipeline.core.prune.sequential import prune_model
    from pipeline.core.prune.sparsity import SparsitySpec

    torch.manual_seed(0)
    shallow = conftest.ARCHITECTURES[arch]()
    settings = {**shallow.config.to_dict(), "num_hidden_layers": layers}
    settings.pop("layer_types", None)  # per-layer lists follow the depth
    model = type(shallow)(type(shallow.config)(**settings)).eval()
    with torch.no_grad():  # norms away from 1, so no two layers share a tensor the exporter could merge
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    prune_model(model, make_method("dass"), SparsitySpec.parse("2:4"), calibration_ids(), scope="attention+mlp",
                progress=False)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.bos_token_id = 1, 1
    return model


def ops(path):
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "qwen3"])
def test_deepened_graph_equals_the_whole_export(tmp_path, arch):
    from export.artifact import export_artifact
    from export.bounded import export_checkpoint_artifact
    from export.checks import deepsparse_graph_logits, onnxruntime_graph_logits

    model = deep_tiny(arch)
    folder = save_checkpoint(tmp_path / "ckpt", model)
    deep = export_checkpoint_artifact(folder, tiny_tokenizer(), tmp_path / "deep", ("deepsparse", "onnxruntime"),
                                      max_positions=64, progress=False)
    whole = export_artifact(model, tiny_tokenizer(), tmp_path / "whole", max_positions=64)

    prompt = tiny_tokenizer()("Sparse models run fast", return_tensors="np").input_ids
    for engine, logits in (("deepsparse", deepsparse_graph_logits), ("onnxruntime", onnxruntime_graph_logits)):
        info = deep["engines"][engine]
        assert info["built_from"] == f"2-layer template deepened to {DEPTH} layers"
        assert info["logits_check"] == "full depth, against PyTorch" and info["logits_max_abs_diff_vs_pytorch"] < 1e-4
        a = logits(tmp_path / "deep" / engine / "model.onnx", model.config, prompt)
        b = logits(tmp_path / "whole" / engine / "model.onnx", model.config, prompt)
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        deep_ops, whole_ops = ops(tmp_path / "deep" / engine / "model.onnx"), ops(tmp_path / "whole" / engine / "model.onnx")
        assert {k: v for k, v in deep_ops.items() if k != "Identity"} == \
            {k: v for k, v in whole_ops.items() if k != "Identity"}, "the same operators, layer for layer"
    # the zeros read back from the written file are the model's, layer by layer
    assert deep["sparsity"]["layers"] == pytest.approx(whole["sparsity"]["layers"], abs=0)
    assert min(deep["sparsity"]["layers"].values()) == 0.5
    assert len(deep["sparsity"]["layers"]) == DEPTH * 7
    # one weights file: the ONNX Runtime graph's is a hard link to the DeepSparse graph's
    ds, ort = tmp_path / "deep" / "deepsparse" / "model.onnx_data", tmp_path / "deep" / "onnxruntime" / "model.onnx_data"
    assert ds.stat().st_ino == ort.stat().st_ino
    assert deep["engines"]["onnxruntime"]["shared_weights"]["hard_link"]
    from export.artifact import open_artifact

    open_artifact(tmp_path / "deep", verify_checksums=True)


def test_deepened_graph_generates_in_deepsparse_as_in_onnxruntime(tmp_path):
    from export.bounded import export_checkpoint_artifact
    from export.engines import generation_spec, run_engine

    model = deep_tiny("llama")
    folder = save_checkpoint(tmp_path / "ckpt", model)
    export_checkpoint_artifact(folder, tiny_tokenizer(), tmp_path / "deep", ("deepsparse", "onnxruntime"),
                               max_positions=64, progress=False)
    out = {engine: run_engine(engine, tmp_path / "deep", "test", **generation_spec(engine, "abc", 8, 64))["ids"]
           for engine in ("deepsparse", "onnxruntime")}
    with torch.no_grad():
        ids = tiny_tokenizer()("abc", return_tensors="pt").input_ids
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    assert out["deepsparse"] == out["onnxruntime"] == greedy


# --- export/depth.py on a hand-made decoder graph: layer i computes h_i = h_{i-1} @ W_i + h_{i-1} ---

H = 4


def toy_decoder(share_weight: bool = False) -> onnx.ModelProto:
    nodes, inits = [], []
    prev = "/embed/Gather_output_0"
    nodes.append(helper.make_node("Identity", ["x"], [prev], name="/embed/Gather"))
    for i in range(2):
        weight = "W0" if share_weight else f"W{i}"
        if not (share_weight and i == 1):
            inits.append(numpy_helper.from_array(np.full((H, H), 0.1 * (i + 1), np.float32), weight))
        p = f"/model/layers.{i}/"
        nodes += [helper.make_node("MatMul", [prev, weight], [p + "MatMul_output_0"], name=p + "MatMul"),
                  helper.make_node("Add", [p + "MatMul_output_0", prev], [p + "Add_output_0"], name=p + "Add"),
                  helper.make_node("Concat", [f"past_key_values.{i}.key", p + "Add_output_0"], [f"present.{i}.key"],
                                   name=p + "Concat", axis=0)]
        prev = p + "Add_output_0"
    nodes.append(helper.make_node("Neg", [prev], ["logits"], name="/lm_head/Neg"))
    tensor = lambda name, rows: helper.make_tensor_value_info(name, TensorProto.FLOAT, [rows, H])  # noqa: E731
    graph = helper.make_graph(nodes, "toy", [tensor("x", 1), tensor("past_key_values.0.key", "p"),
                                             tensor("past_key_values.1.key", "p")],
                              [tensor("logits", 1), tensor("present.0.key", "t"), tensor("present.1.key", "t")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_depth_copies_layer_one_and_rewires_the_residual_stream():
    import onnxruntime as ort

    from export.depth import deepen

    deep, copies = deepen(toy_decoder(), 5)
    onnx.checker.check_model(deep)
    assert [i.name for i in deep.graph.input] == ["x", *(f"past_key_values.{i}.key" for i in range(5))]
    assert [o.name for o in deep.graph.output] == ["logits", *(f"present.{i}.key" for i in range(5))]
    assert sorted(copies.values()) == [("W1", k) for k in (2, 3, 4)]
    # the copies hold layer 1's weight (0.2) until a writer puts theirs in; compute the 5-layer result by hand
    x = np.arange(H, dtype=np.float32)[None]
    feed = {"x": x, **{f"past_key_values.{i}.key": np.zeros((0, H), np.float32) for i in range(5)}}
    got = ort.InferenceSession(deep.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    h = x
    for w in (0.1, 0.2, 0.2, 0.2, 0.2):
        h = h @ np.full((H, H), w, np.float32) + h
    np.testing.assert_allclose(got[0], -h, rtol=1e-6)
    np.testing.assert_allclose(got[5], h, rtol=1e-6)  # present.4.key: the last layer's output


def test_depth_refuses_a_weight_shared_by_two_layers():
    from export.depth import deepen

    with pytest.raises(PipelineError, match="share the initializer W0"):
        deepen(toy_decoder(share_weight=True), 4)


def test_layers_of_different_attention_types_are_never_deepened(tmp_path):
    """Gemma 2 / 3 alternate sliding and full attention layers, whose graphs differ: one copied layer cannot stand
    for both, so the bounded export refuses them and the export stage exports them whole."""
    from export.bounded import export_checkpoint_artifact
    from export.depth import layers_alike

    gemma2, gemma3 = conftest.tiny_model("gemma2"), conftest.tiny_model("gemma3")
    assert not layers_alike(gemma2.config) and not layers_alike(gemma3.config)
    assert layers_alike(conftest.tiny_model("llama").config) and layers_alike(conftest.tiny_model("qwen2").config)
    folder = conftest.save_checkpoint(tmp_path / "gemma2", gemma2)
    with pytest.raises(PipelineError, match="alternate between attention types"):
        export_checkpoint_artifact(folder, conftest.tiny_tokenizer(), tmp_path / "artifact", ("deepsparse",))
    assert not (tmp_path / "artifact").exists()
