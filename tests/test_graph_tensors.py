"""Weights read, changed and written one tensor at a time (export/graph_tensors.py), and the INT8 quantization
built on it: its memory is that of a few tensors, not of the model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.graph_tensors import ALIGN, GraphTensors

MiB = 2**20


def _chain(folder: Path, layers: int, width: int, seed: int = 0) -> Path:
    """x -> MatMul(w0) -> ... -> MatMul(w{layers-1}) -> y, weights in model.onnx_data beside model.onnx."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(np.float32)
        w[rng.random(w.shape) < 0.5] = 0  # pruned
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], f"linear{i}"))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, None, width])], inits)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx_data")
    return folder / "model.onnx"


def test_changes_apply_in_order_when_written_and_every_offset_is_a_page(tmp_path):
    source = _chain(tmp_path / "src", 3, 64)
    want = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(source)).graph.initializer}
    store = GraphTensors.open(source)
    assert all(t.data_location == TensorProto.EXTERNAL for t in store.model.graph.initializer)  # nothing read yet
    store.update("w0", lambda v: v * 2)
    store.update("w0", lambda v: v + 1)  # (w0 * 2) + 1, not (w0 + 1) * 2
    store.add("w1.t", np.float32, (64, 64), lambda: store.array("w1").T)
    store.add_array(np.arange(3, dtype=np.int64), "small")
    store.remove({"w2"})
    assert np.array_equal(store.array("w2"), want["w2"])  # removed from the graph, still readable
    with pytest.raises(ValueError, match="would overwrite the weights it is read from"):
        store.save(source)
    (tmp_path / "out").mkdir()
    store.save(tmp_path / "out" / "model.onnx")
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False).graph
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in graph.initializer
               if t.data_location == TensorProto.EXTERNAL]
    assert len(offsets) == 3 and all(o % ALIGN == 0 for o in offsets)
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer}
    assert sorted(got) == ["small", "w0", "w1", "w1.t"]
    np.testing.assert_array_equal(got["w0"], want["w0"] * 2 + 1)
    np.testing.assert_array_equal(got["w1.t"], want["w1"].T)
    np.testing.assert_array_equal(got["w1"], want["w1"])
    np.testing.assert_array_equal(got["small"], np.arange(3))


def test_a_truncated_weights_file_is_named(tmp_path):
    source = _chain(tmp_path / "src", 2, 64)
    data = tmp_path / "src" / "model.onnx_data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.onnx_data is shorter than tensor 'w0' needs"):
        GraphTensors.open(source).array("w0")


CHILD = r"""
import json, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from export.quantize import quantize_graph
from export.schemes import check_scheme
from pipeline.common.peak_memory import PeakMemory, _status
import onnxruntime  # imported before the baseline, as the stage has it loaded already

source, target = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(0)
feeds = [{"x": rng.standard_normal((1, 16, int(sys.argv[3])), dtype=np.float32)} for _ in range(2)]
config = SimpleNamespace(vocab_size=7, intermediate_size=None)
before = _status("RssAnon")
with PeakMemory(interval=0.01) as peak:
    done = quantize_graph(source, target, feeds, check_scheme("w8a8-static"), config, smoothing_strength=None)
print(json.dumps({**peak.result(), **done, "anon_before": before}))
"""


def test_quantizing_a_graph_holds_a_few_tensors_not_the_model(tmp_path):
    """16 weights of 64 MiB (1 GiB of float32): quantizing holds a few weights at a time (and ONNX Runtime maps the
    file for calibration). Before, the graph was loaded whole and copied for calibration: over 2 GiB."""
    layers, width = 16, 4096
    source = _chain(tmp_path / "src", layers, width)
    (tmp_path / "out").mkdir()
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", CHILD, str(source), str(tmp_path / "out"), str(width)], cwd=root,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["quantized_matmuls"] == layers
    weight, model = width * width * 4, layers * width * width * 4
    grown = result["peak_anon_self_bytes"] - result["anon_before"]
    assert grown < 5 * weight < model / 3, (grown / MiB, result["anon_before"] / MiB)
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    assert [n.op_type for n in graph.node].count("MatMulInteger") == layers
    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(source)).graph.initializer}
    for init in graph.initializer:
        if init.name.endswith(".int8"):
            q, w = numpy_helper.to_array(init), floats[init.name[:-5]]
            # every zero kept; of the rest, only weights within half a step (|w| < max / 126) round to 0
            assert ((q == 0) == (w == 0)).mean() > 0.98 and (q[w == 0] == 0).all()


def test_block_by_block_arithmetic_equals_the_whole_tensor_formula():
    """by_rows and weight_params work a block of rows at a time (BLOCK_ROWS); the numbers are those of the
    whole-tensor formula, bit for bit, across block edges."""
    from export.graph_tensors import BLOCK_ROWS, by_rows
    from export.int8_matmul_form import WEIGHT_MAX, weight_params

    rng = np.random.default_rng(0)
    w = rng.standard_normal((2 * BLOCK_ROWS + 77, 40)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    w[:, 3] = 0  # an all-zero output channel
    s = rng.uniform(0.1, 10, w.shape[0])  # float64, as smoothing's scales
    np.testing.assert_array_equal(by_rows(w, lambda part, rows: part * s[rows, None], np.float32),
                                  (w * s[:, None]).astype(np.float32))
    peak = np.abs(w).max(0)
    scale = np.where(peak > 0, peak / WEIGHT_MAX, 1.0).astype(np.float32)
    q, got_scale = weight_params(w, per_channel=True)
    np.testing.assert_array_equal(got_scale, scale)
    np.testing.assert_array_equal(q, np.clip(np.round(w / scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8))
    assert q.dtype == np.int8 and (q[w == 0] == 0).all()


def test_quantize_stage_estimate_is_within_a_quarter_of_the_measured_32_layer_peak():
    """A regression pin on a committed measurement (read back, not re-measured):
    benchmarks/results/quantize_bounded/depth32_pipeline_summary.json: the quantize stage of the 32-layer
    LLaMA-2-7B-shaped run (LM head INT8) held 2.20 GiB anonymous; the preflight's figure for that recipe must stay
    within 25% of it, and must not grow with depth (the tensors, not the layers, set it)."""
    from scripts.shapes import llama2_7b_config
    from pipeline.recipe import load_recipe
    from pipeline.resources import Shapes
    from pipeline.stages.quantize import estimate

    root = Path(__file__).resolve().parents[1]
    summary = json.loads((root / "benchmarks/results/quantize_bounded/depth32_pipeline_summary.json").read_text())
    measured = summary["resources"]["quantize"]["peak_anon_self_bytes"]
    recipe = load_recipe(root / "recipes/llama2-7b-shaped-70pct.yaml")
    ram = {depth: estimate(Shapes.from_config(llama2_7b_config(depth)), recipe)[0] for depth in (2, 32, 80)}
    assert 0.75 * measured <= ram[32] <= 1.25 * measured, (ram[32] / 2**30, measured / 2**30)
    assert ram[2] == ram[32] == ram[80]
