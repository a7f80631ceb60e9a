"""Perplexity computed by the engine that runs each graph (export/engine_perplexity.py): DeepSparse's own engine on
its graph equals ONNX Runtime on the float graph, the quantize stage records one figure per engine, the trade-off
row of an engine carries that engine's figure, and what no engine can compute is refused in one line."""

import json

import pytest

from benchmarks.stats import summarize
from benchmarks.tradeoff import tradeoff_rows, tradeoff_table
from export.engine_perplexity import check_engine, engine_perplexity
from pipeline.common.errors import PipelineError

#: DeepSparse's engine against ONNX Runtime on the same float graph and windows: both compute float32 logits of one
#: graph (the logits differ by about 2e-7 on the tiny model), so the perplexities agree far inside this
FLOAT_TOLERANCE = 1e-4


def test_the_deepsparse_engine_computes_the_float_graphs_perplexity_as_onnxruntime_does(tiny_artifact):
    from conftest import calibration_ids

    _, folder, _ = tiny_artifact
    tokens = calibration_ids(n=1, seq_len=100, seed=3)[0]  # 3 windows of 32, the last 4 tokens unused
    ds = engine_perplexity(folder, "deepsparse", tokens, 32, progress=False)
    ort = engine_perplexity(folder, "onnxruntime", tokens, 32, progress=False)
    assert (ds["engine"], ds["graph"], ort["engine"]) == ("deepsparse", "deepsparse", "onnxruntime")
    # the engine compiled the whole graph: none of it ran in DeepSparse's ONNX Runtime fallback (a past of length 0
    # would leave all of it there, docs/engines.md)
    assert ds["fraction_of_supported_ops"] == 1.0 and ds["masked_past"] == 1
    assert ds["windows"] == ort["windows"] == 3 and ds["context_length"] == 32
    assert ds["window_nll"] == pytest.approx(ort["window_nll"], rel=FLOAT_TOLERANCE)
    assert ds["perplexity"] == pytest.approx(ort["perplexity"], rel=FLOAT_TOLERANCE)


def test_what_no_engine_can_compute_is_refused_in_one_line_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    import export.engine_perplexity as ep
    from conftest import calibration_ids

    folder = tmp_path / "artifact"  # the refusals read which graph files exist, never a graph
    (folder / "deepsparse").mkdir(parents=True)
    (folder / "deepsparse" / "model.onnx").write_bytes(b"")
    tokens = calibration_ids(n=1, seq_len=64)[0]
    monkeypatch.setattr(ep, "run_child", lambda *a, **k: pytest.fail("an engine ran before the refusal"))
    with pytest.raises(PipelineError, match="in pytorch: pytorch does not run an artifact's graphs") as err:
        engine_perplexity(folder, "pytorch", tokens, 32)
    assert "perplexity.json" in err.value.fix and "\n" not in str(err.value)
    with pytest.raises(PipelineError, match="has no onnxruntime graph") as err:
        engine_perplexity(folder, "onnxruntime", tokens, 32)
    assert "export.engines including onnxruntime" in err.value.fix
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepsparse" else real(name, *a))
    with pytest.raises(PipelineError, match="needs the deepsparse package, which is not installed") as err:
        engine_perplexity(folder, "deepsparse", tokens, 32)
    assert err.value.fix.startswith("pip install deepsparse==1.8.0")


def _figure(ppl, engine=None):
    return {"perplexity": ppl, "windows": 4, "context_length": 64, "tokens": 256, "dataset": "d",
            **({"measured_in": engine} if engine else {})}


def test_the_quantize_stage_records_each_engines_figure_and_says_which_leave_the_reference(tmp_path, monkeypatch):
    """Fake figures (the engines are tested above): each exported graph's perplexity in its own engine, the
    reference reused from ONNX Runtime's, a failed engine recorded as failed, the report's line above the table."""
    import export.engine_perplexity as ep
    import export.onnx_perplexity as op
    from pipeline.recipe import parse_recipe
    from pipeline.stages.quantize import engine_perplexities, perplexities, report

    made = {("artifact", "deepsparse"): 6.0, ("artifact-int8", "deepsparse"): 6.5,  # INT8 +4.8% in DeepSparse
            ("artifact", "onnxruntime"): 6.0, ("artifact-int8", "onnxruntime"): 6.2}
    asked = []

    def fake(folder, graph, *args, **kwargs):
        asked.append((folder.name, graph))
        if graph == "openvino":
            raise PipelineError("openvino perplexity of X died with SIGABRT", "try another engine")
        return {**_figure(made[(folder.name, graph)]), "graph": graph, "engine": graph}

    monkeypatch.setattr(ep, "engine_perplexity", fake)
    monkeypatch.setattr(op, "artifact_perplexity", lambda *a, **k: pytest.fail("the reference is ONNX Runtime's own"))
    recipe = parse_recipe({"name": "t", "model": {"source": "x"}, "evaluation": {"dataset": "embedded"},
                           "export": {"enabled": True, "engines": ["deepsparse", "onnxruntime", "openvino"]}})
    result = {"scheme": "w8a8-static", "path": "p", "bytes": 1, "quantize_seconds": 1.0, "engines": {}}
    perplexities(result, recipe, tmp_path / "artifact", tmp_path / "artifact-int8", None, None, {}, False)
    assert len(asked) == 5  # float and INT8 in each engine; OpenVINO died at the first
    by = result["perplexity_by_engine"]
    assert by["deepsparse"]["int8"]["perplexity"] == 6.5 and by["deepsparse"]["engine"] == "deepsparse"
    assert "SIGABRT" in by["openvino"]["failed"] and "perplexity_openvino" not in result
    assert result["perplexity"]["graph"] == "onnxruntime" and result["perplexity"]["int8"]["perplexity"] == 6.2
    (tmp_path / "quantize.json").write_text(json.dumps(result))
    assert engine_perplexities(tmp_path / "artifact-int8") == {
        "deepsparse": {**_figure(6.5, "deepsparse"), "graph": "deepsparse", "engine": "deepsparse"},
        "onnxruntime": {**_figure(6.2, "onnxruntime"), "graph": "onnxruntime", "engine": "onnxruntime"}}
    assert engine_perplexities(tmp_path / "artifact-dense") == {}
    lines = report({"quantize": result})
    table = lines.index("### Perplexity in each engine")
    assert lines[table + 2].startswith("**Engines disagree** by more than 1%") and \
        "the int8 deepsparse graph in deepsparse 6.500 (+4.8%)" in lines[table + 2]
    assert "float deepsparse" not in lines[table + 2]  # equal to the reference: not named
    assert "| deepsparse | deepsparse | 6.000 | 6.500 |  |" in lines
    assert any(line.startswith("| openvino | openvino | – | – | openvino perplexity of X died") for line in lines)


def _results():
    """One INT8 artifact timed in three engines: DeepSparse and ONNX Runtime computed its perplexity, OpenVINO with
    sparse weights asked did not (its row falls back to the reference, ONNX Runtime's)."""
    art = {"key": "dass50-int8", "name": "dass50-int8", "path": "/fake/dass50-int8", "method": "dass+int8",
           "requested_sparsity": 0.5, "sparsity": 0.5, "layers": 2, "graphs": ["deepsparse", "onnxruntime"],
           "bytes": 2 << 30, "perplexity": _figure(6.2, "onnxruntime"),
           "perplexity_by_engine": {"deepsparse": _figure(6.5, "deepsparse"), "onnxruntime": _figure(6.2, "onnxruntime")}}
    speed = {"deepsparse": 8.0, "onnxruntime": 3.0, "openvino-sparse": 4.0}
    measurements = [{"artifact": art["key"], "engine": e, "mode": "decode", "round": r, "tokens_per_s": tps,
                     "ms_median": 1000 / tps, "peak_rss_bytes": 1 << 30} for e, tps in speed.items() for r in (1, 2)]
    results = {"artifacts": [art], "measurements": measurements, "failures": [], "partial": None,
               "settings": {"sequence_length": 256, "prefill_length": 128, "threads": 2, "repeats": 2, "seconds": 5,
                            "warmup_seconds": 1, "modes": ["decode"], "extrapolate_to_layers": None},
               "machine": {"cpu": "test CPU", "cores": 2, "memory_gib": 24, "platform": "linux"}}
    results["summary"] = summarize(results)
    return results


def test_each_tradeoff_row_carries_the_perplexity_its_engine_computed():
    rows = {r["engine"]: r for r in tradeoff_rows(_results())}
    assert rows["deepsparse"]["perplexity"] == 6.5 and rows["deepsparse"]["perplexity_from"] is None
    assert rows["onnxruntime"]["perplexity"] == 6.2 and rows["onnxruntime"]["perplexity_from"] is None
    assert rows["openvino-sparse"]["perplexity"] == 6.2 and rows["openvino-sparse"]["perplexity_from"] == "onnxruntime"
    lines = tradeoff_table(_results())
    assert lines[2] == ("**Perplexity differs by engine** (more than 1% from the artifact's reference figure, "
                        "PyTorch's or ONNX Runtime's): dass 50% INT8 in DeepSparse 6.500 (+4.8%).")
    assert "| **dass 50% INT8** | DeepSparse | 8.00 | 6.500 | 2,048 | 1,024 |" in lines
    assert "| dass 50% INT8 | ONNX Runtime | 3.00 | 6.200 | 2,048 | 1,024 |" in lines
    assert "| **dass 50% INT8** | OpenVINO, sparse weights asked | 4.00 | 6.200 (in ONNX Runtime) | 2,048 | 1,024 |" in lines


def _record_quantize(run_dir, reference_graph: str) -> dict:
    """A run folder's quantize.json: the reference figures (float 6.0, INT8 6.2, the graph ``reference_graph`` run in
    ONNX Runtime) and DeepSparse's own (6.01, 6.5); returns the window counts each figure carries."""
    one = {"windows": 4, "context_length": 64, "tokens": 256}
    entry = {"dataset": "d", "graph": "deepsparse", "engine": "deepsparse",
             "float": {"perplexity": 6.01, **one}, "int8": {"perplexity": 6.5, **one}}
    (run_dir / "quantize.json").write_text(json.dumps({
        "perplexity": {"dataset": "d", "graph": reference_graph, "run_in": "onnxruntime",
                       "float": {"perplexity": 6.0, **one}, "int8": {"perplexity": 6.2, **one}},
        "perplexity_by_engine": {"deepsparse": entry}}))
    return one


def test_the_benchmark_stage_hands_each_artifact_its_figures_by_engine(tmp_path):
    """A run folder's records: the PyTorch figure for the float artifact, the quantize stage's per engine for both,
    the reference named by the runtime that computed it (DeepSparse's graph run in ONNX Runtime is ONNX Runtime's)."""
    from pipeline.stages.benchmark import with_perplexity

    one = _record_quantize(tmp_path, "deepsparse")
    (tmp_path / "perplexity.json").write_text(json.dumps({"dataset": "d", "pruned": {"perplexity": 6.0, **one}}))
    pruned = with_perplexity({"key": "p", "path": str(tmp_path / "artifact")})
    assert pruned["perplexity"]["measured_in"] == "onnxruntime"
    assert {e: f["perplexity"] for e, f in pruned["perplexity_by_engine"].items()} == {"pytorch": 6.0, "deepsparse": 6.01}
    int8 = with_perplexity({"key": "i", "path": str(tmp_path / "artifact-int8")})
    assert int8["perplexity"]["perplexity"] == 6.2 and int8["perplexity"]["measured_in"] == "onnxruntime"
    assert {e: f["perplexity"] for e, f in int8["perplexity_by_engine"].items()} == {"deepsparse": 6.5}


def test_pipeline_benchmark_on_a_run_folder_artifact_carries_that_run_s_figures(tmp_path, monkeypatch):
    """``pipeline benchmark RUN/artifact-int8 ...`` (not only the benchmark stage) hands the artifact the perplexities
    its run recorded, so its trade-off and workload tables are not left without them."""
    import benchmarks.report
    import benchmarks.runner
    from pipeline.cli import main

    _record_quantize(tmp_path, "onnxruntime")
    seen = []
    monkeypatch.setattr(benchmarks.runner, "find_artifact", lambda entry: {"key": "i", "path": entry})
    monkeypatch.setattr(benchmarks.runner, "check_lengths", lambda *a, **k: None)
    monkeypatch.setattr(benchmarks.runner, "run_benchmark", lambda artifacts, *a, **k: seen.extend(artifacts) or {})
    monkeypatch.setattr(benchmarks.report, "write_report", lambda results, out: [])
    assert main(["benchmark", str(tmp_path / "artifact-int8"), "--out", str(tmp_path / "out")]) == 0
    assert seen[0]["perplexity"]["perplexity"] == 6.2
    assert seen[0]["perplexity_by_engine"]["deepsparse"]["perplexity"] == 6.5
