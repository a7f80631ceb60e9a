"""The benchmark's statistics, depth extrapolation, interleaving, partial results and report, with fake
engine timings (no engine runs here; tests/test_benchmark_engines.py runs the real ones)."""

import json

import pytest

from benchmarks.engines import MeasureSpec
from benchmarks.report import write_report
from benchmarks.runner import load_results, run_benchmark
from benchmarks.settings import BenchmarkSettings
from pydantic import ValidationError
from benchmarks.stats import depth_fit, extrapolate, spread, summarize
from pipeline.common.errors import PipelineError

# A synthetic machine: ms per token = fixed + layers * per_layer * (1 - gain * sparsity) per engine.
FIXED = {"deepsparse": 20.0, "onnxruntime": 30.0, "pytorch": 40.0}
PER_LAYER = {"deepsparse": 100.0, "onnxruntime": 120.0, "pytorch": 130.0}
GAIN = {"deepsparse": 1.0, "onnxruntime": 0.0, "pytorch": 0.0}  # only DeepSparse exploits zeros


def artifact(name, method, sparsity, layers):
    return {"key": f"depth{layers}/{name}", "name": name, "path": f"/fake/depth{layers}/{name}", "method": method,
            "requested_sparsity": sparsity, "sparsity": sparsity or 0.0, "layers": layers,
            "graphs": ["deepsparse", "onnxruntime"] if method == "none" else ["deepsparse"]}


ARTIFACTS = [artifact(n, m, s, d) for d in (1, 2) for n, m, s in
             (("dense", "none", None), ("dass-50", "dass", 0.5), ("dass-70", "dass", 0.7))]
ARTIFACTS.append(artifact("wanda-50", "wanda", 0.5, 2))
BY_PATH = {a["path"]: a for a in ARTIFACTS}


def fake_measure(noise=None):
    calls = []

    def measure(spec: MeasureSpec) -> dict:
        a = BY_PATH[spec.artifact]
        calls.append((spec.mode, spec.engine, a["key"]))
        ms = FIXED[spec.engine] + a["layers"] * PER_LAYER[spec.engine] * (1 - GAIN[spec.engine] * a["sparsity"])
        if spec.mode == "prefill":
            ms *= 10
        ms *= noise(len(calls)) if noise else 1.0
        return {"ms_median": ms, "ms_mean": ms, "iterations": 5,
                "tokens_per_s": spec.tokens_per_step * 1000 / ms}

    return measure, calls


def settings(**kw):
    base = dict(engines=["deepsparse", "onnxruntime", "pytorch"], modes=["decode", "prefill"], sequence_length=64,
                prefill_length=16, repeats=3, extrapolate_to_layers=32, seconds=1, warmup_seconds=1)
    return BenchmarkSettings(**{**base, **kw})


def test_spread_and_depth_fit_recover_a_known_line():
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    fit = depth_fit([1, 2, 4], [25.0, 32.0, 46.0])  # 18 + 7 * layers
    assert fit["fixed_ms"] == pytest.approx(18.0) and fit["per_layer_ms"] == pytest.approx(7.0)
    assert fit["max_residual_ms"] == pytest.approx(0.0, abs=1e-9)
    e = extrapolate(fit, 32)
    assert e["ms"] == pytest.approx(18 + 7 * 32) and e["tokens_per_s"] == pytest.approx(1000 / 242)
    noisy = depth_fit([1, 1, 2, 2], [24.0, 26.0, 31.0, 33.0])
    assert noisy["per_layer_ms"] == pytest.approx(7.0) and noisy["max_residual_ms"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        depth_fit([2, 2], [1.0, 1.0])


def test_benchmark_interleaves_and_extrapolates_fake_timings(tmp_path):
    measure, calls = fake_measure()
    results = run_benchmark(ARTIFACTS, settings(), tmp_path, progress=False, measure_fn=measure)
    # one round: dense and sparse of the same engine and mode follow each other; PyTorch once per depth (dense)
    per_round = len(calls) // 3
    assert calls[:per_round] == calls[per_round:2 * per_round]
    first = calls[:4]
    assert first == [("decode", "deepsparse", "depth1/dense"), ("decode", "deepsparse", "depth1/dass-50"),
                     ("decode", "deepsparse", "depth1/dass-70"), ("decode", "deepsparse", "depth2/dense")]
    torch_calls = {c[2] for c in calls if c[1] == "pytorch"}
    assert torch_calls == {"depth1/dense", "depth2/dense"}
    assert {c[2] for c in calls if c[1] == "onnxruntime"} == {"depth1/dense", "depth2/dense"}

    s = results["summary"]
    ext = {(e["name"], e["engine"], e["mode"]): e for e in s["extrapolation"]}
    dense32 = FIXED["deepsparse"] + 32 * PER_LAYER["deepsparse"]
    sparse70 = FIXED["deepsparse"] + 32 * PER_LAYER["deepsparse"] * 0.3
    e70 = ext[("dass-70", "deepsparse", "decode")]
    assert e70["fit"]["per_layer_ms"] == pytest.approx(30.0) and e70["fit"]["fixed_ms"] == pytest.approx(20.0)
    assert e70["tokens_per_s"] == pytest.approx(1000 / sparse70)
    assert e70["speedup_vs_dense"] == pytest.approx(dense32 / sparse70)
    ort32 = FIXED["onnxruntime"] + 32 * PER_LAYER["onnxruntime"]
    assert e70["vs_onnxruntime_dense"] == pytest.approx(ort32 / sparse70)
    assert ("wanda-50", "deepsparse", "decode") not in ext  # one depth only: no fit
    sp = {(x["artifact"], x["engine"], x["mode"], x["vs"]): x for x in s["speedups"]}
    measured = sp[("depth2/dass-50", "deepsparse", "decode", "deepsparse")]
    assert measured["ratio"] == pytest.approx((20 + 200) / (20 + 100))
    assert measured["per_round"]["n"] == 3
    prefill = sp[("depth2/dass-50", "deepsparse", "prefill", "deepsparse")]
    assert prefill["ratio"] == pytest.approx((20 + 200) / (20 + 100))
    # the file on disk is complete and gives the same summary when loaded again
    again = load_results(tmp_path)
    assert again["summary"] == json.loads(json.dumps(s)) and again["partial"] is None


def test_speedup_uses_paired_rounds_under_drift(tmp_path):
    # the machine slows down 2x in round 2: paired ratios stay exact, the medians' ratio too
    measure, calls = fake_measure()

    def drifting(spec):
        out = measure(spec)
        if (len(calls) - 1) // 4 == 1:  # 4 measurements a round
            out["ms_median"] *= 2
            out["tokens_per_s"] /= 2
        return out

    arts = [a for a in ARTIFACTS if a["layers"] == 2]
    results = run_benchmark(arts, settings(engines=["deepsparse"], modes=["decode"], repeats=2), tmp_path,
                            progress=False, measure_fn=drifting)
    sp = [x for x in results["summary"]["speedups"] if x["artifact"] == "depth2/dass-70"][0]
    want = 220 / (20 + 60)
    assert [m["ms_median"] for m in results["measurements"] if m["artifact"] == "depth2/dense"] == [220.0, 440.0]
    assert sp["per_round"]["min"] == pytest.approx(want) and sp["per_round"]["max"] == pytest.approx(want)


def test_time_budget_keeps_partial_results_labelled(tmp_path):
    import time

    def slow(spec):
        time.sleep(0.2)
        return fake_measure()[0](spec)

    results = run_benchmark(ARTIFACTS, settings(time_budget_seconds=0.5), tmp_path, progress=False, measure_fn=slow)
    assert results["partial"].startswith("time budget of 0 s reached after")
    assert 0 < len(results["measurements"]) < 10
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["partial"] == results["partial"] and len(on_disk["measurements"]) == len(results["measurements"])
    write_report(results, tmp_path)
    assert "**Partial results: time budget" in (tmp_path / "report.md").read_text()


def test_failed_measurement_is_recorded_and_the_rest_goes_on(tmp_path):
    measure, _ = fake_measure()

    def flaky(spec):
        if spec.engine == "onnxruntime":
            raise PipelineError("onnxruntime died with SIGKILL", "see the message")
        return measure(spec)

    results = run_benchmark(ARTIFACTS, settings(repeats=1), tmp_path, progress=False, measure_fn=flaky)
    assert results["failures"] and all(f["engine"] == "onnxruntime" for f in results["failures"])
    assert {m["engine"] for m in results["measurements"]} == {"deepsparse", "pytorch"}
    write_report(results, tmp_path)
    assert "failed: onnxruntime decode on depth1/dense (round 1): onnxruntime died with SIGKILL" in (tmp_path / "report.md").read_text()


def test_report_has_the_paper_table_ours_and_the_plots(tmp_path):
    measure, _ = fake_measure()
    results = run_benchmark(ARTIFACTS, settings(), tmp_path, progress=False, measure_fn=measure)
    made = write_report(results, tmp_path, command="python -m scripts.paper_table run X")
    text = (tmp_path / "report.md").read_text()
    assert made == ["report.md", "tokens_by_artifact.png", "tokens_vs_sparsity.png", "speedup_vs_paper.png"]
    for name in made[1:]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "python -m scripts.paper_table run X" in text
    table = text.split("## The paper's CPU table")[1].split("##")[0]
    dense32 = 1000 / (20 + 32 * 100)
    d70 = 1000 / (20 + 32 * 30)
    assert "| dense | 3.05 |" in table and "| dass 50% | 5.64 (1.85x) |" in table and "| dass 70% | 8.27 (2.71x) |" in table
    assert f"{dense32:.2f}" in table and f"{d70:.2f} ({d70 / dense32:.2f}x)" in table
    assert "## Depth fit and extrapolation to 32 layers" in text
    assert "| dass-70 | DeepSparse | decode | 20.0 | 30.00 | 1, 2 | 0.00 |" in text
    equal = text.split("## Equal speed at equal sparsity")[1].split("\n## ")[0]
    assert "| dass | 0.500 |" in equal and "| wanda | 0.500 |" in equal and "1.00x" in equal
    assert "## Prefill tokens/s, every measurement" in text


def test_summary_without_dense_has_no_speedups():
    arts = [a for a in ARTIFACTS if a["method"] != "none"]
    results = {"artifacts": arts, "measurements": [
        {"artifact": a["key"], "engine": "deepsparse", "mode": "decode", "round": 1, "tokens_per_s": 5.0, "ms_median": 200.0}
        for a in arts]}
    s = summarize(results)
    assert s["speedups"] == [] and len(s["cells"]) == len(arts)


def test_report_of_depths_without_a_dense_artifact_has_no_speedups(tmp_path):
    """Sparse artifacts at two depths and no dense one: the extrapolation has no dense to divide by."""
    arts = [a for a in ARTIFACTS if a["method"] == "dass"]
    measure, _ = fake_measure()
    results = run_benchmark(arts, settings(engines=["deepsparse"], modes=["decode"], repeats=1), tmp_path,
                            progress=False, measure_fn=measure)
    assert {e["speedup_vs_dense"] for e in results["summary"]["extrapolation"]} == {None}
    write_report(results, tmp_path)
    table = (tmp_path / "report.md").read_text().split("## The paper's CPU table")[1].split("##")[0]
    row = next(line for line in table.splitlines() if line.startswith("| dass 70%"))
    assert f"| {1000 / (20 + 32 * 30):.2f} |" in row  # the 32-layer figure, no speedup beside it


def test_bad_settings_are_clear_errors(tmp_path):
    import os

    with pytest.raises(PipelineError, match=f"this machine has {os.cpu_count()} cores"):
        run_benchmark(ARTIFACTS, settings(threads=os.cpu_count() + 1), tmp_path, measure_fn=fake_measure()[0])
    with pytest.raises(ValidationError, match="tensorrt"):
        settings(engines=["tensorrt"])
    with pytest.raises(ValidationError, match=r"prefill length 64 is not below sequence_length 64 .* — fix: raise "
                                              r"sequence_length to 65 or more"):
        settings(prefill_length=64)
    with pytest.raises(ValidationError, match="prefill length 128 is not below .* drop the prefill lengths from 64 up"):
        settings(prefill_lengths=[16, 64, 128])
    with pytest.raises(ValidationError, match="each must be 1 or more"):
        settings(prefill_lengths=[0, 16])
    assert not (tmp_path / "results.json").exists()


def single_run_artifacts():
    """One run's artifacts: dense, pruned (DeepSparse and ONNX Runtime graphs) and the pruned INT8 copy."""
    arts = [artifact("run-dense", "none", None, 2), artifact("run", "dass", 0.5, 2), artifact("run-int8", "dass+int8", 0.5, 2)]
    for a in arts:
        a["graphs"], a["model"] = ["deepsparse", "onnxruntime"], "tiny/model"
        BY_PATH[a["path"]] = a
    return arts


def test_single_run_plot_has_a_bar_per_artifact_and_engine_with_speedups(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import BarContainer

    from benchmarks.report import artifact_bars, tokens_by_artifact_figure

    arts = single_run_artifacts()
    measure, _ = fake_measure(noise=lambda i: 1.0 + 0.01 * (i % 3))
    results = run_benchmark(arts, settings(engines=["deepsparse", "onnxruntime"], extrapolate_to_layers=None),
                            tmp_path, progress=False, measure_fn=measure)
    data = artifact_bars(results)
    assert data["artifacts"] == ["depth2/run-dense", "depth2/run", "depth2/run-int8"]
    assert list(data["labels"].values()) == ["dense", "dass 50%", "dass+int8 50%"]
    fig = tokens_by_artifact_figure(results)
    for ax, mode in zip(fig.axes, ("decode", "prefill")):
        containers = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert [c.get_label() for c in containers] == ["dense", "dass 50%", "dass+int8 50%"]
        for c, key in zip(containers, data["artifacts"]):
            heights = [bar.get_height() for bar in c]  # one bar per engine, the median of the rounds
            assert heights == [data["modes"][mode][e][key]["median"] for e in ("deepsparse", "onnxruntime")]
        ds = data["modes"][mode]["deepsparse"]["depth2/run"]
        assert ds["speedup"] == pytest.approx(ds["median"] / data["modes"][mode]["deepsparse"]["depth2/run-dense"]["median"])
        assert ds["speedup"] > 1.5  # DeepSparse's synthetic gain at 50%
        assert f"{ds['speedup']:.2f}x" in {t.get_text().split("\n")[-1] for t in ax.texts}
    assert "tiny/model" in fig._suptitle.get_text() and results["machine"]["cpu"] in fig._suptitle.get_text()
    made = write_report(results, tmp_path)
    assert made[:2] == ["report.md", "tokens_by_artifact.png"] and "tokens_vs_sparsity.png" in made  # 0 and 50%
    assert (tmp_path / "tokens_by_artifact.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    alone = run_benchmark(arts[1:2], settings(engines=["deepsparse"], modes=["decode"], extrapolate_to_layers=None),
                          tmp_path / "alone", progress=False, measure_fn=measure)
    assert write_report(alone, tmp_path / "alone") == ["report.md", "tokens_by_artifact.png"]  # no one-point line


def test_the_paper_table_names_the_scope_the_artifacts_were_pruned_in(tmp_path):
    """The paper pruned attention + MLP; an MLP-only run's table says MLP only, and artifacts from before the scope
    was recorded say so instead of guessing."""
    measure, _ = fake_measure()
    for scope, label in (("mlp", "DaSS, MLP only;"), ("attention+mlp", "DaSS, attention + MLP;"),
                         (None, "DaSS, scope not recorded;")):
        arts = [{**a, "scope": scope if a["method"] != "none" else None} for a in ARTIFACTS]
        results = run_benchmark(arts, settings(engines=["deepsparse"], modes=["decode"], repeats=1), tmp_path,
                                progress=False, measure_fn=measure)
        write_report(results, tmp_path)
        table = (tmp_path / "report.md").read_text().split("## The paper's CPU table")[1].split("##")[0]
        assert f"| model ({label} the paper: attention + MLP) |" in table, (scope, table.splitlines()[2])


def test_the_run_reports_throughput_names_the_artifact_of_each_speedup():
    from pipeline.stages.benchmark import report

    bench = {"tokens_per_s": {"deepsparse decode": 50.0, "deepsparse decode int8": 80.0},
             "speedups": [{"engine": "deepsparse", "mode": "decode", "vs": "deepsparse", "dense": "run-dense",
                           "artifact": "run", "ratio": 1.2},
                          {"engine": "deepsparse", "mode": "decode", "vs": "deepsparse", "dense": "run-dense",
                           "artifact": "run-int8", "ratio": 1.9}]}
    lines = report({"benchmark": bench})
    assert "- deepsparse decode, `run` vs deepsparse on `run-dense` (dense): **1.20x**, fewer than 3 rounds" in lines
    assert "- deepsparse decode, `run-int8` vs deepsparse on `run-dense` (dense): **1.90x**, fewer than 3 rounds" in lines
