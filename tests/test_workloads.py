"""The workload table (benchmarks/workloads.py): end-to-end seconds of a prompt of P tokens and an answer of G tokens
from measured prefill and decode rates, from hand-made results whose answers are worked out below."""

import pytest

from benchmarks.report import render
from benchmarks.stats import summarize
from benchmarks.workloads import latency, nearest_length, rates, workloads

#: (decode tokens/s, prefill tokens/s at 128, at 512), perplexity
ARTIFACTS = {"dense": ((10.0, 100.0, 80.0), 10.0), "pruned": ((12.0, 150.0, 120.0), 10.8),
             "int8": ((20.0, 300.0, 250.0), 12.0), "q4": ((30.0, 60.0, 50.0), 10.5)}


def _results(dense_ppl=True):
    arts, measurements = [], []
    for key, ((decode, p128, p512), ppl) in ARTIFACTS.items():
        gguf = key == "q4"
        arts.append({"key": key, "name": key, "path": f"/fake/{key}", "layers": 2, "sparsity": 0.0 if key == "dense" else 0.5,
                     "method": {"dense": "none", "pruned": "dass", "int8": "dass+int8", "q4": "gguf-q4_0"}[key],
                     "requested_sparsity": None if key in ("dense", "q4") else 0.5,
                     "graphs": ["llamacpp"] if gguf else ["deepsparse"], **({"gguf_type": "q4_0"} if gguf else {}),
                     "perplexity": {"perplexity": ppl} if dense_ppl or key != "dense" else None})
        engine = "llamacpp" if gguf else "deepsparse"
        for mode, tps, tokens in (("decode", decode, 1), ("prefill-128", p128, 128), ("prefill-512", p512, 512)):
            for r in (1, 2, 3):
                measurements.append({"artifact": key, "engine": engine, "mode": mode, "round": r, "tokens_per_s": tps,
                                     "ms_median": tokens * 1000 / tps})
    # PyTorch: fastest of all, but its weights are re-initialised; it must not appear
    measurements += [{"artifact": "dense", "engine": "pytorch", "mode": m, "round": 1, "tokens_per_s": 1e6,
                      "ms_median": 1.0} for m in ("decode", "prefill-128", "prefill-512")]
    results = {"artifacts": arts, "measurements": measurements, "failures": [], "partial": None,
               "settings": {"sequence_length": 1024, "prefill_length": 64, "prefill_lengths": [128, 512],
                            "modes": ["decode", "prefill"], "threads": 2, "repeats": 3, "seconds": 5,
                            "warmup_seconds": 1, "batch_sizes": [4]},
               "machine": {"cpu": "test CPU", "cores": 2, "memory_gib": 24, "platform": "linux"}}
    results["summary"] = summarize(results)
    return results


def test_nearest_measured_length_by_ratio_ties_to_the_longer():
    assert nearest_length([128, 512], 128) == 128
    assert nearest_length([128, 512], 256) == 512  # 2x either way
    assert nearest_length([32, 256], 128) == 256  # 2x against 4x
    assert nearest_length([128, 512], 2048) == 512


def test_latency_is_prompt_over_prefill_plus_answer_over_decode():
    row = {"artifact": "a", "engine": "deepsparse", "label": "a", "perplexity": 1.0, "decode": 10.0,
           "prefill": {128: 100.0, 512: 80.0}}
    t = latency(row, 512, 128)
    assert t["seconds"] == pytest.approx(512 / 80 + 128 / 10) and t["prefill_at"] == 512
    assert latency(row, 2048, 16)["prefill_at"] == 512  # no 2048 measured: the nearest stands in, named


def test_each_workload_names_the_fastest_and_the_fastest_within_10_percent_of_dense():
    results = _results()
    assert {(r["artifact"], r["engine"]) for r in rates(results)} == {
        ("dense", "deepsparse"), ("pruned", "deepsparse"), ("int8", "deepsparse"), ("q4", "llamacpp")}
    w = workloads(results)
    assert w["dense_perplexity"] == 10.0 and w["limit"] == pytest.approx(11.0)
    cells = {(c["prompt"], c["answer"]): c for c in w["cells"]}
    assert len(cells) == 9
    # a short answer: the INT8 artifact's prefill wins (128/300 + 16/20 = 1.23 s), but its perplexity is 20% over
    short = cells[(128, 16)]
    assert short["fastest"]["artifact"] == "int8" and short["fastest"]["seconds"] == pytest.approx(128 / 300 + 16 / 20)
    assert short["fastest_within"]["artifact"] == "pruned"  # 2.19 s against the GGUF's 2.67 s
    # a long answer: decode dominates and llama.cpp's GGUF wins outright, and within the margin (10.5 <= 11)
    long = cells[(128, 512)]
    assert long["fastest"]["artifact"] == long["fastest_within"]["artifact"] == "q4"
    assert long["fastest"]["seconds"] == pytest.approx(128 / 60 + 512 / 30)
    assert cells[(2048, 16)]["fastest"]["prefill_at"] == 512


def test_report_has_the_workload_table_and_says_how_it_is_computed():
    text = render(_results())
    section = text.split("## Workloads: a prompt of P tokens, an answer of G tokens")[1].split("\n## ")[0]
    assert "P / prefill tokens/s + G / decode tokens/s" in section and "1023 cached tokens" in section
    assert ("| 128 | 16 | dass+int8 50% in DeepSparse: 1.23 s (perplexity 12.000) | dass 50% in DeepSparse: 2.19 s "
            "(perplexity 10.800) |") in section
    assert ("| 2048 | 16 | dass+int8 50% in DeepSparse: 8.99 s (perplexity 12.000; prefill rate measured at 512 tokens, "
            "not 2048) |") in section
    assert "PyTorch" in section and "in PyTorch" not in section
    assert "dense perplexity 10.000, so at most 11.000" in section


def test_without_a_dense_perplexity_nothing_qualifies_for_the_margin():
    w = workloads(_results(dense_ppl=False))
    assert w["dense_perplexity"] is None and all(c["fastest_within"] is None for c in w["cells"])
    assert all(c["fastest"] for c in w["cells"])


def test_each_workload_row_carries_the_perplexity_its_engine_computed():
    """The INT8 artifact's DeepSparse row carries DeepSparse's own figure (12.4), not the ONNX Runtime reference
    (12.0), as the trade-off table does; an artifact with no engine figure keeps its reference."""
    results = _results()
    int8 = next(a for a in results["artifacts"] if a["key"] == "int8")
    int8["perplexity_by_engine"] = {"deepsparse": {"perplexity": 12.4}}
    figures = {(r["artifact"], r["engine"]): r["perplexity"] for r in rates(results)}
    assert figures[("int8", "deepsparse")] == 12.4 and figures[("pruned", "deepsparse")] == 10.8
