"""OpenVINO as an engine (export/openvino_graph.py, benchmarks/engines/openvino_runner.py): the sparse path's decision
and its messages, greedy parity with PyTorch (float) and ONNX Runtime (INT8), every INT8 weight and pruned zero
kept in the OpenVINO model, INT8 kernels chosen, the runner's arithmetic and the perplexity protocol.

Tests that run OpenVINO skip, naming the extra, where it is not installed (the test command installs it)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import calibration_ids, pruned_tiny, tiny_tokenizer
from export import openvino_graph as ovg
from pipeline.common.errors import PipelineError

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed: pip install "
                                                             "'dass-pipeline[openvino]'")
AMX = {"avx512f", "amx_tile", "amx_int8", "amx_bf16"}
PROMPT = "hello world, this is"
N = 12


def test_cpu_flags_are_read_from_cpuinfo_and_amx_needs_tile_and_int8(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_tile amx_int8\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert ovg.cpu_flags(info) == {"fpu", "avx2", "avx512f", "amx_tile", "amx_int8"}
    assert ovg.has_amx(ovg.cpu_flags(info))
    assert not ovg.has_amx({"avx512f", "amx_tile"})  # AMX-BF16 only machines have tiles but no INT8
    assert ovg.cpu_flags(tmp_path / "missing") == set()


def test_sparse_path_is_on_only_where_asked_with_amx_int8_and_pruned_weights():
    layers = {"q": 0.71, "gate": 0.7, "lm_like_dense": 0.0}
    assert ovg.sparse_path(False, AMX, True, layers).reason.startswith("off: not asked")
    no_amx = ovg.sparse_path(True, {"avx512f", "avx512_vnni"}, True, layers)
    assert not no_amx.on and no_amx.reason == ovg.NO_AMX and "running dense" in no_amx.reason
    floats = ovg.sparse_path(True, AMX, False, layers)
    assert not floats.on and "float32 weights" in floats.reason and "quantize.enabled" in floats.reason
    dense = ovg.sparse_path(True, AMX, True, {"a": 0.0, "b": 0.1})
    assert not dense.on and "no decoder linear" in dense.reason
    on = ovg.sparse_path(True, AMX, True, layers)
    # just below the least sparse pruned linear: every pruned one passes, the dense one does not
    assert on.on and on.rate == pytest.approx(0.7 - ovg.RATE_MARGIN) and "2 of 3 decoder linears" in on.reason
    assert on.as_dict()["on"] is True


def test_sparse_path_asked_without_amx_is_one_line_and_the_run_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(ovg, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="export.openvino_graph"):
        assert ovg.warn_if_no_amx({"avx2"}) is False
        assert ovg.warn_if_no_amx({"avx2"}) is False
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"openvino-sparse: sparse weights decompression {ovg.NO_AMX}"]
    assert ovg.warn_if_no_amx(AMX) is True


def test_openvino_not_installed_is_one_line_naming_the_install_option(monkeypatch):
    from benchmarks.engines import check_engine

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(PipelineError, match=r"needs OpenVINO, which is not installed — fix: pip install "
                                            r"'dass-pipeline\[openvino\]'"):
        ovg.openvino()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else object())
    for engine in ("openvino", "openvino-sparse"):
        with pytest.raises(PipelineError, match=rf"the {engine} engine is not installed — fix: pip install "
                                                r"'dass-pipeline\[openvino\]'"):
            check_engine(engine)


def test_openvino_engines_run_every_artifact_with_an_onnxruntime_graph():
    from benchmarks.runner import plan
    from benchmarks.settings import BenchmarkSettings

    artifacts = [{"key": "dense", "graphs": ["deepsparse", "onnxruntime"], "layers": 2, "method": "none"},
                 {"key": "ds-only", "graphs": ["deepsparse"], "layers": 2, "method": "dass"},
                 {"key": "with-ir", "graphs": ["deepsparse", "onnxruntime", "openvino"], "layers": 2, "method": "dass"}]
    steps = plan(artifacts, BenchmarkSettings(engines=["openvino", "openvino-sparse"], modes=["decode"]))
    assert steps == [("decode", e, k) for e in ("openvino", "openvino-sparse") for k in ("dense", "with-ir")]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A DaSS 2:4 tiny LLaMA exported with its OpenVINO IR, and its INT8 copy (IR made from the INT8 graph)."""
    from export.artifact import export_artifact
    from export.quantize import quantize_artifact

    model = pruned_tiny()
    tokenizer = tiny_tokenizer()
    root = tmp_path_factory.mktemp("openvino")
    export_artifact(model, tokenizer, root / "float", ("deepsparse", "onnxruntime", "openvino"), max_positions=128,
                    metadata={"method": "dass"})
    check = tokenizer("The quick brown fox", return_tensors="np").input_ids
    quantize_artifact(root / "float", root / "int8", "w8a8-static", calibration_ids(8, 32).numpy(), check)
    return model, tokenizer, root


@needs_openvino
def test_greedy_tokens_equal_pytorch_float_and_onnxruntime_int8(artifacts, tmp_path):
    from export.engines import run_engine

    model, tokenizer, root = artifacts
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=N, do_sample=False)[0, ids.shape[1]:].tolist()
    floats = run_engine("openvino", root / "float", "test", prompt=PROMPT, max_new_tokens=N)
    assert floats["ids"] == want and len(want) == N
    assert floats["graph"] == "openvino/openvino_model.xml" and ovg.int8_kernels(floats["kernels"]) == 0
    int8 = run_engine("openvino", root / "int8", "test", prompt=PROMPT, max_new_tokens=N)
    assert int8["ids"] == run_engine("onnxruntime", root / "int8", "test", prompt=PROMPT, max_new_tokens=N)["ids"]
    # the 12 INT8 MatMuls of 2 layers (q/k/v/o/gate/up) run OpenVINO's INT8 kernels
    assert ovg.int8_kernels(int8["kernels"]) == 12, int8["kernels"]
    # without the IR, OpenVINO reads the onnxruntime graph (the INT8 one rewritten) and decodes the same
    shutil.copytree(root / "int8", tmp_path / "int8", ignore=shutil.ignore_patterns("openvino"))
    again = run_engine("openvino", tmp_path / "int8", "test", prompt=PROMPT, max_new_tokens=N)
    assert again["ids"] == int8["ids"] and again["graph"] == "onnxruntime/model.onnx"


@needs_openvino
def test_every_int8_weight_and_pruned_zero_is_kept_in_the_openvino_model(artifacts, tmp_path):
    import json

    import onnx
    from onnx import numpy_helper

    _, _, root = artifacts
    manifest = json.loads((root / "float" / "manifest.json").read_text())
    assert manifest["engines"]["openvino"]["weights"]["pruned_float_weights"] == 14  # every linear of 2 layers
    assert manifest["engines"]["openvino"]["logits_max_abs_diff_vs_pytorch"] < 1e-4
    model = ovg.openvino_model(root / "int8")
    graph = root / "int8" / "onnxruntime" / "model.onnx"
    kept = ovg.weights_kept(model, graph)
    assert kept["int8_weights"] == 12 and kept["zeros_in_checked_weights"] >= 0.5
    int8 = [c for c in (np.asarray(op.get_data()) for op in model.get_ordered_ops() if op.get_type_name() == "Constant")
            if c.dtype == np.int8 and c.ndim == 2]
    assert len(int8) == 12 and all((w == 0).mean() >= 0.5 for w in int8)  # 2:4: half of every weight is zero
    # the check fails when one pruned zero of the graph is not zero in the OpenVINO model
    altered = tmp_path / "altered"
    shutil.copytree(graph.parent, altered)
    proto = onnx.load(str(altered / "model.onnx"))
    target = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2)
    w = numpy_helper.to_array(target).copy()
    w.flat[int(np.flatnonzero(w == 0)[0])] = 1
    target.CopyFrom(numpy_helper.from_array(w, target.name))
    onnx.save(proto, str(altered / "model.onnx"), save_as_external_data=True, location="altered.onnx_data")
    with pytest.raises(PipelineError, match=f"the weight {target.name} .* is not in the OpenVINO model unchanged"):
        ovg.weights_kept(model, altered / "model.onnx")


@needs_openvino
@pytest.mark.parametrize("engine", ["openvino", "openvino-sparse"])
def test_runner_measures_decode_and_prefill_and_says_whether_the_sparse_path_ran(artifacts, engine):
    from benchmarks.engines import MeasureSpec, measure
    from benchmarks.settings import BenchmarkSettings

    _, _, root = artifacts
    settings = BenchmarkSettings(sequence_length=64, prefill_length=16, warmup_seconds=0.1, seconds=0.5)
    decode = measure(MeasureSpec.of(engine, root / "int8", "decode", settings))
    prefill = measure(MeasureSpec.of(engine, root / "int8", "prefill", settings))
    batch = measure(MeasureSpec.of(engine, root / "int8", "batch", settings, size=4))
    assert decode["tokens_per_s"] == pytest.approx(1000 / decode["ms_median"])
    assert prefill["tokens_per_s"] == pytest.approx(16 * 1000 / prefill["ms_median"])
    assert batch["tokens_per_s"] == pytest.approx(4 * 1000 / batch["ms_median"])
    assert decode["int8_matmuls"] == 12 and decode["kv_cache"] == "external (inputs)"
    assert decode["machine"]["amx"] == ovg.has_amx(ovg.cpu_flags())
    sparse = decode["sparse_weights"]
    if engine == "openvino":
        assert not sparse["on"] and decode["sparse_matmuls"] == 0
    elif not decode["machine"]["amx"]:
        assert not sparse["on"] and sparse["reason"] == ovg.NO_AMX and decode["sparse_matmuls"] == 0
    else:  # an AMX CPU: the rate from the artifact's zeros, and the kernels say whether it engaged
        assert sparse["on"] and sparse["rate"] == pytest.approx(0.5 - ovg.RATE_MARGIN)


@needs_openvino
def test_openvino_perplexity_follows_the_protocol_and_equals_onnxruntime_on_the_float_graph(artifacts):
    from conftest import TEXT
    from export.onnx_perplexity import artifact_perplexity

    _, tokenizer, root = artifacts
    tokens = tokenizer(TEXT[:2000], return_tensors="pt").input_ids[0]
    ort = artifact_perplexity(root / "float", tokens, 64, 3, "onnxruntime", progress=False)
    ov = artifact_perplexity(root / "float", tokens, 64, 3, "openvino", progress=False)
    assert ov["windows"] == ort["windows"] == 3
    assert ov["perplexity"] == pytest.approx(ort["perplexity"], rel=1e-5)
    int8 = artifact_perplexity(root / "int8", tokens, 64, 3, "openvino", progress=False)
    assert int8["perplexity"] == pytest.approx(
        artifact_perplexity(root / "int8", tokens, 64, 3, "onnxruntime", progress=False)["perplexity"], rel=1e-3)


def test_report_puts_sparse_asked_beside_not_asked_on_the_same_artifact(tmp_path):
    """run_benchmark with fake OpenVINO timings (sparse asked = 2x faster on the pruned INT8 artifact, as on an AMX
    CPU): the summary pairs the two engines round by round and the report names the sparse path and the kernels."""
    from benchmarks.report import write_report
    from benchmarks.runner import run_benchmark
    from benchmarks.settings import BenchmarkSettings

    arts = [{"key": k, "name": k, "path": f"/fake/{k}", "method": m, "requested_sparsity": s, "sparsity": s or 0.0,
             "layers": 2, "graphs": ["onnxruntime"]} for k, m, s in (("dense-int8", "none+int8", None),
                                                                     ("dass-70-int8", "dass+int8", 0.7))]

    def fake(spec):
        sparse = spec.engine == "openvino-sparse" and "dass" in spec.artifact
        ms = 10.0 / (2 if sparse else 1)
        path = {"asked": spec.engine == "openvino-sparse", "rate": 0.68 if sparse else None,
                "reason": "on: rate 0.68" if sparse else "off: not asked", "on": sparse}
        kernel = "brgemm_avx512_amx_sparse_I8" if sparse else "brgemm_avx512_amx_I8"
        return {"ms_median": ms, "ms_mean": ms, "iterations": 5, "tokens_per_s": 1000 / ms,
                "kernels": {f"FullyConnected: {kernel} (u8)": 12}, "int8_matmuls": 12, "sparse_matmuls": 12 * sparse,
                "sparse_weights": path, "machine": {"version": "2026.4.1", "device": "Fake Xeon", "amx": True,
                                                    "capabilities": ["INT8", "BF16"]}}

    settings = BenchmarkSettings(engines=["openvino", "openvino-sparse"], modes=["decode"], repeats=2,
                                 warmup_seconds=0, seconds=1)
    results = run_benchmark(arts, settings, tmp_path, progress=False, measure_fn=fake)
    rows = {r["artifact"]: r for r in results["summary"]["openvino_sparse"]}
    assert rows["dass-70-int8"]["ratio"] == pytest.approx(2.0) and rows["dense-int8"]["ratio"] == pytest.approx(1.0)
    assert rows["dass-70-int8"]["per_round"]["n"] == 2 and rows["dass-70-int8"]["sparse_matmuls"] == 12
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## OpenVINO: sparse weights decompression asked vs not, same artifact" in report
    assert "| decode | dass-70-int8 | on: rate 0.68 | FullyConnected: brgemm_avx512_amx_sparse_I8 (u8) x12 | 12 / 12 | 2.00x" \
        in report
    assert "OpenVINO 2026.4.1 reports: `Fake Xeon`" in report


@needs_openvino
def test_a_recipe_exports_quantizes_and_benchmarks_in_openvino(workspace):
    """The whole pipeline on the tiny model with OpenVINO: ARTIFACT/openvino and ARTIFACT-int8/openvino written and
    checked, the smoke and greedy checks decoded by OpenVINO, the perplexity of both graphs in OpenVINO, both
    OpenVINO engines benchmarked, and (on a CPU without AMX) the sparse path refused in one line."""
    import json

    from conftest import run_cli, write_recipe

    path = write_recipe(workspace, "ok-openvino", export__enabled=True, export__engines=["onnxruntime", "openvino"],
                        export__max_sequence_length=128, export__smoke_tokens=8, quantize__enabled=True,
                        quantize__num_samples=4, quantize__seq_len=32, quantize__check_tokens=8,
                        quantize__agreement_windows=1, benchmark__enabled=True,
                        benchmark__engines=["openvino", "openvino-sparse"], benchmark__modes=["decode"],
                        benchmark__sequence_length=64, benchmark__warmup_seconds=0.2, benchmark__seconds=0.5,
                        benchmark__repeats=1)
    proc = run_cli("run", str(path), "--no-progress", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    out = workspace / "runs" / "ok-openvino"
    for artifact in ("artifact", "artifact-int8"):
        assert (out / artifact / "openvino" / "openvino_model.xml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    smoke = summary["export"]["smoke"]
    assert smoke["openvino"]["ids"] == smoke["onnxruntime"]["ids"] and len(smoke["openvino"]["ids"]) == 8
    quant = summary["quantize"]
    assert quant["engines"]["openvino"]["weights"]["int8_weights"] == 12
    assert quant["engines"]["openvino"]["greedy_vs_float"]["tokens"] == 8
    assert quant["engines"]["openvino"]["top1_agreement_on_text"]["run_in"] == "openvino"
    ov, ort = quant["perplexity_openvino"], quant["perplexity"]
    assert ov["float"]["perplexity"] == pytest.approx(ort["float"]["perplexity"], rel=1e-4)
    assert ov["int8"]["perplexity"] == pytest.approx(ort["int8"]["perplexity"], rel=1e-2)
    results = json.loads((out / "benchmark" / "results.json").read_text())
    assert not results["failures"]
    assert {(c["artifact"], c["engine"]) for c in results["summary"]["cells"]} == {
        (a, e) for a in ("ok-openvino", "ok-openvino-dense", "ok-openvino-int8") for e in ("openvino", "openvino-sparse")}
    assert {m["int8_matmuls"] for m in results["measurements"] if m["artifact"] == "ok-openvino-int8"} == {12}
    report = (out / "report.md").read_text()
    assert "The same in OpenVINO" in report and "openvino (the onnxruntime graph)" in report
    warning = f"openvino-sparse: sparse weights decompression {ovg.NO_AMX}"
    assert proc.stderr.count(warning) == (0 if ovg.has_amx(ovg.cpu_flags()) else 1), proc.stderr


def test_openvino_missing_is_refused_before_any_weights_load(workspace, tmp_path):
    """An OpenVINO export where `import openvino` fails: one line naming the install option, from the config-only
    check, before the model loads; nothing written."""
    import os

    from conftest import run_cli, write_recipe
    from test_bad_inputs import assert_one_clear_line

    fake = tmp_path / "no-openvino" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: OpenVINO is not installed')\n")
    path = write_recipe(workspace, "no-openvino", export__enabled=True,
                        export__engines=["deepsparse", "onnxruntime", "openvino"])
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(fake.parent) + (os.pathsep + previous if previous else "")
    try:
        proc = run_cli("run", str(path), cwd=workspace, log_dir=tmp_path / "logs")
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
    line = assert_one_clear_line(proc, "the openvino engine needs OpenVINO, which is not installed", tmp_path / "logs")
    assert "pip install 'dass-pipeline[openvino]'" in line and "./install.sh --with-openvino" in line
    log = sorted((tmp_path / "logs").glob("pipeline-*.log"))[-1].read_text()
    assert "loading model" not in log and "calibration:" not in log
    assert not (workspace / "runs" / "no-openvino").exists()


@needs_openvino
def test_the_sparse_rate_property_is_the_cpu_plugins_own(artifacts):
    """The property the sparse path sets is one the CPU plugin knows (a wrong name fails to compile) and reads back;
    the INT8 MatMuls then run sparse kernels on an AMX CPU, and dense INT8 ones elsewhere."""
    from transformers import AutoConfig

    from export.checks import onnxruntime_graph_feed

    _, _, root = artifacts
    forced = ovg.SparsePath(True, 0.48, "set for this test")
    compiled = ovg.compile_model(ovg.openvino_model(root / "int8"), 1, forced)
    assert float(compiled.get_property(ovg.SPARSE_RATE_PROPERTY)) == pytest.approx(0.48)
    config = AutoConfig.from_pretrained(root / "int8" / "onnxruntime")
    ovg.logits(compiled, onnxruntime_graph_feed({i.any_name for i in compiled.inputs}, config, np.array([[3, 4, 5]])))
    found = ovg.kernels(compiled)
    assert ovg.int8_kernels(found) == 12
    if not ovg.has_amx(ovg.cpu_flags()):
        assert ovg.sparse_kernels(found) == 0, found
