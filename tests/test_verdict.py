"""When the report may call an artifact faster (benchmarks/verdict.py): only where every interleaved round's paired
ratio is above 1, and on at least 3 rounds. Fake engines of known cost per round, through the real runner."""

import pytest

from benchmarks.report import write_report
from benchmarks.runner import run_benchmark
from benchmarks.settings import BenchmarkSettings
from benchmarks.verdict import FASTER, FEW, NOISE, RULE, SLOWER, verdict

#: the artifact's ratio over llama.cpp in rounds 1, 2, 3, per mode (llama.cpp takes 100 ms a step throughout)
RATIOS = {"decode": (0.50, 0.55, 0.60), ("prefill", 16): (0.88, 1.01, 1.15), ("prefill", 64): (1.05, 1.10, 1.20),
          ("prefill", 256): (1.02, 1.30, 1.04)}


def _artifact(key, method, graphs, **extra):
    return {"key": key, "name": key, "path": f"/fake/{key}", "method": method, "requested_sparsity": 0.5,
            "sparsity": 0.5, "layers": 2, "graphs": list(graphs), "bytes": 1 << 30, "perplexity": None, **extra}


def _run(tmp_path, repeats: int, ratios=RATIOS):
    arts = [_artifact("int8", "dass+int8", ("deepsparse",)),
            _artifact("q4", "gguf-q4_0", ("llamacpp",), gguf_type="q4_0", requested_sparsity=None)]
    seen: dict[tuple, int] = {}

    def measure(spec):
        mode = "decode" if spec.mode == "decode" else (spec.mode, spec.prefill_length)
        tokens = spec.tokens_per_step
        ms = 100.0
        if spec.engine != "llamacpp":
            n = seen[(spec.engine, mode)] = seen.get((spec.engine, mode), 0) + 1
            ms = 100.0 / ratios[mode][n - 1]
        return {"ms_median": ms, "tokens_per_s": tokens * 1000 / ms}

    settings = BenchmarkSettings(engines=["deepsparse", "llamacpp"], modes=["decode", "prefill"], sequence_length=512,
                                 prefill_lengths=[16, 64, 256], repeats=repeats, seconds=1, warmup_seconds=0)
    return run_benchmark(arts, settings, tmp_path, progress=False, measure_fn=measure)


def test_verdict_needs_every_round_on_one_side_of_1_and_three_rounds():
    assert verdict({"min": 1.01, "max": 1.3, "n": 3}) == FASTER
    assert verdict({"min": 0.7, "max": 0.99, "n": 5}) == SLOWER
    assert verdict({"min": 0.88, "max": 1.15, "n": 3}) == NOISE
    assert verdict({"min": 1.0, "max": 1.2, "n": 3}) == NOISE  # a round at exactly 1 is no win
    assert verdict({"min": 1.5, "max": 1.6, "n": 2}) == FEW == "fewer than 3 rounds"
    assert verdict(None) == FEW


def test_a_win_whose_rounds_straddle_1_is_refused_and_one_above_1_in_every_round_is_granted(tmp_path):
    results = _run(tmp_path, repeats=3)
    rows = {r["mode"]: r for r in results["summary"]["vs_llamacpp"]}
    straddle = rows["prefill-16"]
    assert straddle["ratio"] == pytest.approx(1.01)  # the ratio of medians is above 1 ...
    assert (straddle["per_round"]["min"], straddle["per_round"]["max"]) == pytest.approx((0.88, 1.15))
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert RULE in text and text.count(RULE) == 1  # the rule, stated once
    llamacpp = text.split("## Against llama.cpp")[1].split("\n## ")[0]
    assert "| prefill-16 |" in llamacpp and "1.01x, rounds 0.88–1.15, within noise | within noise |" in llamacpp  # ... no win
    assert "1.10x, rounds 1.05–1.20, faster | faster |" in llamacpp
    assert "0.55x, rounds 0.50–0.60, slower | slower |" in llamacpp
    crossover = text.split("## Crossover")[1].split("\n## ")[0]
    # the old rule (ratio of medians >= 1 from some length on) said "at every measured length" here
    assert "| 0.55x slower | 1.01x within noise | 1.10x faster | 1.04x faster | from 64 tokens |" in crossover


def test_a_verdict_on_fewer_than_3_rounds_is_not_called(tmp_path):
    results = _run(tmp_path, repeats=2)
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    crossover = text.split("## Crossover")[1].split("\n## ")[0]
    assert "faster" not in crossover.split("| faster from |")[1]
    assert "| no verdict: fewer than 3 rounds |" in crossover


def test_speedups_over_dense_carry_the_verdict(tmp_path):
    """The speedup columns of every-measurement tables: a pruned artifact over the dense one, same engine."""
    arts = [_artifact("dense", "none", ("deepsparse",), requested_sparsity=None),
            _artifact("pruned", "dass", ("deepsparse",))]
    per_round = {"dense": (10.0, 10.0, 10.0), "pruned": (9.5, 10.2, 11.0)}  # ratios 0.95, 1.02, 1.10
    count: dict[str, int] = {}

    def measure(spec):
        key = spec.artifact.rsplit("/", 1)[1]
        count[key] = count.get(key, 0) + 1
        tps = per_round[key][count[key] - 1]
        return {"ms_median": 1000 / tps, "tokens_per_s": tps}

    settings = BenchmarkSettings(engines=["deepsparse"], modes=["decode"], repeats=3, seconds=1, warmup_seconds=0)
    results = run_benchmark(arts, settings, tmp_path, progress=False, measure_fn=measure)
    write_report(results, tmp_path)
    assert "1.02x, rounds 0.95–1.10, within noise" in (tmp_path / "report.md").read_text()
