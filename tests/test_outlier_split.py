"""down_proj INT8 with its outlier input channels in a float MatMul beside it (export/outlier_split.py, scheme
w8a8-static-outliers): on a tiny model with planted outlier channels it keeps the float graph's logits where
per-tensor INT8 of the whole input does not; every pruned zero stays a zero byte; both engines run it."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.quantize import linear_matmuls, quantize_artifact, quantize_graph
from export.schemes import check_scheme
from pipeline.common.errors import PipelineError

#: channels of down_proj's input made PLANT times larger (up_proj's columns), its rows PLANT times smaller
PLANTED, PLANT = (77,), 300.0


def _planted(folder, tmp_path):
    """The tiny artifact's onnxruntime graph with PLANTED channels of every down_proj input PLANT times larger
    (the float function unchanged); its config, calibration feeds, a prompt and the pruned float down weights."""
    from transformers import AutoConfig

    from export.quantize import _feeds
    from export.smooth import smoothing_groups

    graph = folder / "onnxruntime" / "model.onnx"
    config = AutoConfig.from_pretrained(folder / "onnxruntime")
    model = onnx.load(str(graph))
    inits = {i.name: i for i in model.graph.initializer}
    downs = {}
    for g in smoothing_groups(model.graph, set(linear_matmuls(model.graph, 96)[0])):
        if g.kind != "up":
            continue
        up = numpy_helper.to_array(inits[g.divisor]).copy()
        down = numpy_helper.to_array(inits[g.weights[0]]).copy()
        up[:, list(PLANTED)] *= PLANT
        down[list(PLANTED)] /= PLANT
        inits[g.divisor].CopyFrom(numpy_helper.from_array(up, g.divisor))
        inits[g.weights[0]].CopyFrom(numpy_helper.from_array(down, g.weights[0]))
        downs[g.weights[0]] = down
    assert len(downs) == 2  # one down_proj per layer
    (tmp_path / "planted").mkdir()
    onnx.save_model(model, str(out := tmp_path / "planted" / "model.onnx"), save_as_external_data=True,
                    location="model.onnx_data")
    rng = np.random.default_rng(1)
    return out, config, _feeds("onnxruntime", out, config, rng.integers(2, 96, (4, 32))), \
        rng.integers(2, 96, (1, 24)), downs


def test_split_keeps_the_float_logits_where_int8_of_the_whole_input_does_not(tiny_artifact, tmp_path):
    from export.checks import onnxruntime_graph_logits

    _, folder, _ = tiny_artifact
    planted, config, feeds, ids, downs = _planted(folder, tmp_path)
    want = onnxruntime_graph_logits(folder / "onnxruntime" / "model.onnx", config, ids)
    np.testing.assert_allclose(onnxruntime_graph_logits(planted, config, ids), want, atol=1e-3)
    errors, done = {}, {}
    for scheme in ("w8a8-static-all", "w8a8-static-outliers"):
        out = tmp_path / scheme
        out.mkdir()
        done[scheme] = quantize_graph(planted, out, feeds, check_scheme(scheme), config, None)
        errors[scheme] = np.abs(onnxruntime_graph_logits(out / "model.onnx", config, ids) - want).max()
    # 1% of 128 channels: the planted one, in each layer's down_proj
    assert done["w8a8-static-outliers"]["outlier_split"]["channels"] == [1]
    assert done["w8a8-static-outliers"]["outlier_split"]["max_range_ratio"] > 20
    # the stated tolerance: within 3% of the largest float logit (0.008 of 0.58 measured); without the split the
    # planted channel sets the uint8 range of the whole input and the error is at least 5x larger (0.088 measured)
    assert errors["w8a8-static-outliers"] < 0.03 * np.abs(want).max(), errors
    assert errors["w8a8-static-all"] > 5 * errors["w8a8-static-outliers"], errors

    graph = onnx.load(str(tmp_path / "w8a8-static-outliers" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulInteger") == 14 and sum(n.name.endswith(".outlier_matmul") for n in graph.node) == 2
    selects = [n for n in graph.node if n.name.endswith(".outlier_select")]
    assert len(selects) == 2 and {n.op_type for n in selects} == {"MatMul"}  # not a Gather: DeepSparse on VNNI
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name in (n.input[1] for n in selects):
        want = np.zeros((128, len(PLANTED)), np.float32)
        want[list(PLANTED), range(len(PLANTED))] = 1
        np.testing.assert_array_equal(inits[name], want)  # one-hot: X S is X[:, O] exactly
    for name, down in downs.items():
        q, rows = inits[f"{name}.int8"], inits[f"{name}.outlier_rows"]
        assert q.dtype == np.int8 and (q[down == 0] == 0).all()  # every pruned zero is a zero byte
        assert (q[list(PLANTED)] == 0).all() and (q[[c for c in range(128) if c not in PLANTED]] != 0).any()
        np.testing.assert_array_equal(rows, down[list(PLANTED)])  # the float rows: copies (no smoothing here)


def test_both_graphs_split_alike_share_one_weights_file_and_run_in_deepsparse(tiny_artifact, tmp_path):
    """The artifact's two graphs (smoothed as the recipe default) get the same split from one calibration, so the
    onnxruntime graph still reads the deepsparse graph's weights file; DeepSparse compiles and decodes the INT8
    graph with its Gather / float MatMul / Add beside each down_proj."""
    import os

    import torch

    from export.engines import run_engine

    model, folder, _ = tiny_artifact
    rng = np.random.default_rng(0)
    target = tmp_path / "int8"
    manifest = quantize_artifact(folder, target, "w8a8-static-outliers", rng.integers(2, 96, (8, 32)),
                                 rng.integers(2, 96, (1, 16)), smoothing_strength=0.5)
    pruned = [m.weight.detach().T.numpy() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"]
    for engine, info in manifest["engines"].items():
        assert info["quantized_matmuls"] == 14 and info["pruned_zeros_kept"], engine
        assert info["outlier_split"]["matmuls"] == 2 and info["outlier_split"]["channels"] == [1]
        assert info["top1_agreement_vs_float"] >= 0.9, engine
        graph = onnx.load(str(target / engine / "model.onnx")).graph
        int8 = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8
                and len(i.dims) == 2]
        assert len(int8) == 14
        for q in int8:  # read from the file, independently of the manifest
            assert any(w.shape == q.shape and ((w == 0) <= (q == 0)).all() for w in pruned)
    ds, ort = target / "deepsparse" / "model.onnx_data", target / "onnxruntime" / "model.onnx_data"
    assert os.stat(ds).st_ino == os.stat(ort).st_ino
    spec = {"sequence_length": 64, "prompt_sequence_length": 4, "internal_kv_cache": True}
    a = run_engine("deepsparse", folder, "test", prompt="Hello there", max_new_tokens=8, **spec)
    b = run_engine("deepsparse", target, "test", prompt="Hello there", max_new_tokens=8, **spec)
    assert len(b["ids"]) == len(a["ids"]) and b["ids"][:4] == a["ids"][:4]


def test_the_fraction_and_the_smoothing_of_the_split_are_the_callers(tiny_artifact, tmp_path):
    """quantize.outlier_fraction: 5% of 128 channels is 6 split off per down_proj, the planted one among them;
    quantize.outlier_smoothing false: down_proj's input is not smoothed (the norm outputs still are), so the float
    rows are the pruned weights' own rows, and up_proj's weight read by the INT8 MatMul is unscaled."""
    from export.checks import onnxruntime_graph_logits

    _, folder, _ = tiny_artifact
    planted, config, feeds, ids, downs = _planted(folder, tmp_path)
    want = onnxruntime_graph_logits(folder / "onnxruntime" / "model.onnx", config, ids)
    out = tmp_path / "wide"
    out.mkdir()
    done = quantize_graph(planted, out, feeds, check_scheme("w8a8-static-outliers"), config, 0.5,
                          outlier_fraction=0.05, smooth_split=False)
    assert done["outlier_split"]["channels"] == [6] and done["outlier_split"]["fraction"] == 0.05
    assert done["smoothing"]["norm"] == done["smoothing"]["groups"] == 4  # the norm outputs; no down_proj input
    graph = onnx.load(str(out / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name, down in downs.items():
        rows = inits[f"{name}.outlier_rows"]
        assert rows.shape == (6, down.shape[1])
        hits = [c for c in range(down.shape[0]) if any(np.array_equal(down[c], r) for r in rows)]
        assert set(PLANTED) <= set(hits) and len(hits) >= 6  # unsmoothed: the rows are copies
    error = np.abs(onnxruntime_graph_logits(out / "model.onnx", config, ids) - want).max()
    assert error < 0.03 * np.abs(want).max(), error


def test_a_split_setting_with_a_scheme_that_splits_nothing_is_refused(tiny_artifact, tmp_path):
    from pipeline.common.errors import PipelineError

    _, folder, _ = tiny_artifact
    with pytest.raises(PipelineError, match="splits no channels off"):
        quantize_artifact(folder, tmp_path / "x", "w8a8-static-all", np.zeros((1, 8), np.int64),
                          np.zeros((1, 4), np.int64), outlier_fraction=0.05)
