"""Workloads, not modes: the end-to-end time of a request (a prompt of P tokens, an answer of G tokens) in each
artifact and engine, computed from its measured rates, and which artifact serves each workload fastest, also among
those within a perplexity margin of the dense model (pure functions; the report renders ``workload_table``).

    seconds(P, G) = P / prefill tokens/s (measured at the prompt length L nearest P) + G / decode tokens/s

Prefill is measured at the benchmark's prompt lengths, decode at one context (``sequence_length - 1`` cached
tokens, batch 1); both are medians over the interleaved rounds. Where no prompt of exactly P tokens was measured,
the rate of the nearest measured length (nearest by ratio, ties to the longer) stands in, and the cell says so:
nothing is extrapolated silently. PyTorch is left out (it runs re-initialised weights: its perplexity is not an
artifact's).
"""

from __future__ import annotations

import math

from benchmarks.engines import ENGINE_NAMES, engine_facts
from benchmarks.report_format import prompt_length, sparsity_label
from benchmarks.tradeoff import engine_figure

PROMPTS = (128, 512, 2048)
ANSWERS = (16, 128, 512)
MARGIN = 0.10  # "within +10% of dense perplexity"


def nearest_length(measured: list[int], prompt: int) -> int:
    """The measured prompt length nearest ``prompt`` by ratio (|log L/P|); a tie goes to the longer length."""
    return min(measured, key=lambda n: (abs(math.log(n / prompt)), -n))


def rates(results: dict) -> list[dict]:
    """Per (artifact, engine) with a decode and at least one prefill measurement: the median tokens/s of decode and
    of each measured prompt length, the artifact's label and perplexity (the one the row's engine computed where
    the run recorded it, else the reference: benchmarks/tradeoff.py:engine_figure)."""
    arts = {a["key"]: a for a in results["artifacts"]}
    st = results["settings"]
    found: dict[tuple, dict] = {}
    for c in results["summary"]["cells"]:
        if engine_facts(c["engine"]).reinitialised:  # PyTorch: fresh weights, no artifact's perplexity
            continue
        a = arts[c["artifact"]]
        row = found.setdefault((c["artifact"], c["engine"]), {
            "artifact": c["artifact"], "engine": c["engine"], "label": sparsity_label(a),
            "dense": a["method"] == "none" and "gguf_type" not in a,
            "perplexity": (engine_figure(a, c["engine"])[0] or {}).get("perplexity"), "decode": None, "prefill": {}})
        length = prompt_length(c["mode"], st)
        if c["mode"] == "decode":
            row["decode"] = c["tokens_per_s"]["median"]
        elif length:
            row["prefill"][length] = c["tokens_per_s"]["median"]
    return [r for r in found.values() if r["decode"] and r["prefill"]]


def latency(rate: dict, prompt: int, answer: int) -> dict:
    """Seconds for a prompt of ``prompt`` tokens and an answer of ``answer`` tokens from one ``rates`` row, and the
    prompt length whose prefill rate it used."""
    at = nearest_length(sorted(rate["prefill"]), prompt)
    seconds = prompt / rate["prefill"][at] + answer / rate["decode"]
    return {"artifact": rate["artifact"], "engine": rate["engine"], "label": rate["label"],
            "perplexity": rate["perplexity"], "seconds": seconds, "prefill_at": at}


def dense_perplexity(rows: list[dict]) -> float | None:
    """The float dense ONNX artifact's perplexity (the reference of the margin); None where none was recorded."""
    return next((r["perplexity"] for r in rows if r["dense"] and r["perplexity"]), None)


def workloads(results: dict, prompts=PROMPTS, answers=ANSWERS, margin: float = MARGIN) -> dict:
    """Per (prompt, answer): the fastest artifact and engine, and the fastest among those whose perplexity is within
    ``margin`` of the dense model's (None where none qualifies or no dense perplexity is known)."""
    rows = rates(results)
    dense = dense_perplexity(rows)
    limit = dense * (1 + margin) if dense else None
    cells = []
    for p in prompts:
        for g in answers:
            timed = sorted((latency(r, p, g) for r in rows), key=lambda t: t["seconds"])
            within = [t for t in timed if limit and t["perplexity"] and t["perplexity"] <= limit]
            cells.append({"prompt": p, "answer": g, "fastest": timed[0] if timed else None,
                          "fastest_within": within[0] if within else None})
    return {"dense_perplexity": dense, "limit": limit, "margin": margin, "cells": cells,
            "measured_lengths": sorted({n for r in rows for n in r["prefill"]})}


def _cell(t: dict | None, prompt: int) -> str:
    if not t:
        return "–"
    ppl = f"perplexity {t['perplexity']:.3f}" if t["perplexity"] else "perplexity not recorded"
    stand_in = f"; prefill rate measured at {t['prefill_at']} tokens, not {prompt}" if t["prefill_at"] != prompt else ""
    return f"{t['label']} in {ENGINE_NAMES.get(t['engine'], t['engine'])}: {t['seconds']:.2f} s ({ppl}{stand_in})"


def workload_table(results: dict) -> list[str]:
    """The report's section: one row per (prompt, answer) workload."""
    w = workloads(results)
    if not w["cells"] or not any(c["fastest"] for c in w["cells"]):
        return []
    st = results["settings"]
    ref = (f"dense perplexity {w['dense_perplexity']:.3f}, so at most {w['limit']:.3f}" if w["dense_perplexity"]
           else "no dense perplexity recorded, so none qualifies")
    lines = ["## Workloads: a prompt of P tokens, an answer of G tokens", "",
             "End-to-end seconds of one request, computed (not measured) from each artifact and engine's medians: "
             "P / prefill tokens/s + G / decode tokens/s. Prefill rates were measured at prompts of "
             f"{', '.join(map(str, w['measured_lengths']))} tokens; a cell whose P was not measured uses the rate of "
             "the nearest measured length and says which. Decode is the rate at one context "
             f"({st['sequence_length'] - 1} cached tokens, batch 1), whatever P + G is. Fastest: by these medians, "
             "without the faster/slower rule's round-by-round test; the tables above give that for each mode. "
             f"Within +{w['margin']:.0%}: the fastest whose perplexity is at most {1 + w['margin']:.2f}x the dense "
             f"model's ({ref}). PyTorch is left out (re-initialised weights).", "",
             f"| prompt P | answer G | fastest | fastest within +{w['margin']:.0%} of dense perplexity |",
             "|---|---|---|---|"]
    for c in w["cells"]:
        lines.append(f"| {c['prompt']} | {c['answer']} | {_cell(c['fastest'], c['prompt'])} | "
                     f"{_cell(c['fastest_within'], c['prompt'])} |")
    return lines
