"""The full-depth table (scripts/full_depth*.py): which cells are measured and which fitted, and the
arithmetic behind the 32-layer speedups, on synthetic per-depth results with known timings."""

from __future__ import annotations

import json

import pytest

from scripts.full_depth import pipeline_command
from scripts.full_depth_report import table, write_full_depth_report

# ms per token = fixed + layers x per-layer, per model (the line the fit must recover)
LINES = {"dense": (20.0, 30.0), "dass-50": (20.0, 16.0), "dass-70": (20.0, 10.0)}
SPARSITY = {"dense": 0.0, "dass-50": 0.5, "dass-70": 0.7}


def _results(depth: int, names: list[str], slow_32: float = 1.0) -> dict:
    arts, ms = [], []
    for name in names:
        key = f"depth{depth}/{name}"
        arts.append({"key": key, "name": name, "layers": depth, "method": "none" if name == "dense" else "dass",
                     "sparsity": SPARSITY[name], "requested_sparsity": None})
        fixed, per = LINES[name]
        for r, drift in enumerate((1.0, 1.1, 0.95), start=1):  # machine drift shared by the models of a round
            t = (fixed + depth * per) * drift * (slow_32 if depth == 32 else 1.0)
            ms.append({"artifact": key, "engine": "deepsparse", "mode": "decode", "round": r, "ms_median": t,
                       "tokens_per_s": 1000.0 / t})
    return {"artifacts": arts, "measurements": ms, "command": f"bench --depth {depth}",
            "machine": {"cpu": "test CPU", "cores": 2, "memory_gib": 23.5,
                        "deepsparse": {"isa": "avx512", "vnni": True, "physical_cores": 2}},
            "settings": {"sequence_length": 512, "repeats": 3, "seconds": 8.0, "warmup_seconds": 2.0},
            "engine_peak_memory": {"rss_bytes": 2**33, "anonymous_bytes": 2**32}}


def test_dense_at_32_is_fitted_sparse_at_32_is_measured_and_the_speedup_mixes_them_as_labelled(tmp_path):
    runs = [_results(d, ["dense", "dass-50", "dass-70"]) for d in (4, 8, 12)]
    runs.append(_results(32, ["dass-70"], slow_32=1.25))  # the deep artifact runs slower than its fit says
    t = table(runs, tmp_path)
    dense, sparse = t["at_target"]["dense"], t["at_target"]["dass-70"]
    assert dense["how"].startswith("fitted") and sparse["how"] == "measured"
    assert dense["tokens_per_s"] == pytest.approx(1000 / (20 + 32 * 30), rel=0.03)  # drift: the median round
    assert sparse["tokens_per_s"] == pytest.approx(1000 / ((20 + 32 * 10) * 1.25))  # median over rounds: drift 1.0
    assert sparse["speedup"] == pytest.approx(sparse["tokens_per_s"] / dense["tokens_per_s"])
    assert sparse["speedup_fitted"] == pytest.approx((20 + 32 * 30) / (20 + 32 * 10), rel=0.03)
    assert t["at_target"]["dass-50"]["how"].startswith("fitted")  # not measured at 32: fitted, and said so
    assert t["per_layer_speedup"]["dass-70"] == pytest.approx(3.0)
    assert t["fits"]["dense"]["fit"]["depths"] == [4, 8, 12]  # the 32-layer point never enters a fit
    # paired rounds: the drift cancels, every per-round ratio equals the true one
    s = t["speedups"]["dass-50"][8]
    assert s["per_round"]["min"] == pytest.approx(s["per_round"]["max"]) == pytest.approx((20 + 8 * 30) / (20 + 8 * 16))


def test_report_names_measured_and_fitted_cells_and_writes_the_plot(tmp_path):
    results = tmp_path / "results"
    for d in (4, 8):
        (results / f"depth{d}").mkdir(parents=True)  # any folder name starting depthN
        (results / f"depth{d}" / "results.json").write_text(json.dumps(_results(d, ["dense", "dass-70"])))
    (results / "depth32").mkdir()
    (results / "depth32" / "results.json").write_text(json.dumps(_results(32, ["dass-70"])))
    (results / "depth32" / "dass-70_summary.json").write_text(json.dumps(
        {"resources": {"prune": {"seconds": 300.0, "peak_rss_bytes": 3 * 2**30},
                       "export": {"seconds": 900.0, "peak_rss_bytes": 6 * 2**30}}}))
    made = write_full_depth_report(results, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "fitted over depths [4, 8]" in report and "| DaSS 70% | 8.27 (2.71x)" in report
    assert "avx512" in report and "test CPU" in report
    assert "| 32 | dass-70 | 300 | 3.00 GiB | 900 | 6.00 GiB |" in report
    assert (tmp_path / "out" / "full_depth.png").stat().st_size > 10_000 and "full_depth.png" in made


def test_the_build_overrides_are_a_valid_recipe(tmp_path):
    """The overrides full_depth passes to `pipeline run` validate against the recipe schema (no run needed)."""
    from pipeline.overrides import load_recipe_with_overrides

    for name, method, sparsity in (("dense", "none", None), ("dass-70", "dass", 0.7)):
        command = pipeline_command(tmp_path / "ckpt", tmp_path / "run", name, (4, 128))
        sets = [command[i + 1] for i, a in enumerate(command) if a == "--set"]
        recipe = load_recipe_with_overrides(command[command.index("run") + 1], sets, str(tmp_path / "run"))
        assert recipe.prune.method == method and recipe.export.engines == ["deepsparse"]
        assert (recipe.calibration.num_samples, recipe.calibration.seq_len) == (4, 128)
        if sparsity:
            assert float(recipe.prune.sparsity) == sparsity


def test_a_dense_only_interleaved_run_replaces_the_dense_fit_and_the_old_one_stays_beside_it(tmp_path):
    runs = [_results(d, ["dense", "dass-70"]) for d in (4, 8)] + [_results(32, ["dass-70"])]
    runs[1]["measurements"] = [{**m, "ms_median": m["ms_median"] * 1.3, "tokens_per_s": m["tokens_per_s"] / 1.3}
                               if m["artifact"] == "depth8/dense" else m for m in runs[1]["measurements"]]  # drifted
    dense = _results(4, ["dense"])
    for d in (8, 12):
        extra = _results(d, ["dense"])
        dense["artifacts"] += extra["artifacts"]
        dense["measurements"] += extra["measurements"]
    t = table(runs, tmp_path, dense_run=dense)
    assert t["fits"]["dense"]["fit"]["depths"] == [4, 8, 12]
    assert t["fits"]["dense"]["fit"]["per_layer_ms"] == pytest.approx(30.0, rel=0.01)  # the true line, not the drift
    assert t["fits"]["dense (per-depth runs)"]["fit"]["per_layer_ms"] > 35
    assert "of one interleaved dense-only run" in t["at_target"]["dense"]["how"]
    assert t["per_layer_speedup"]["dass-70"] == pytest.approx(3.0, rel=0.01)
