"""The numbers a benchmark report shows, computed from raw measurements (pure functions, no I/O).

- ``spread``: min / median / max over repeats.
- ``depth_fit``: least-squares line ms_per_token = fixed + layers x per_layer through timings at two
  or more depths (separates per-layer cost from fixed cost: embedding, final norm, LM head, engine
  overhead); ``extrapolate`` reads it at another depth.
- ``summarize``: every cell (artifact x engine x mode), speedups over the dense artifact of the same
  depth in the same engine (ratio of medians, and the range of the per-round paired ratios, since
  rounds interleave dense and sparse), a sparse engine over its dense peer's dense artifact (DeepSparse-sparse over
  ONNX-Runtime-dense), the extrapolation, and each ONNX artifact's tokens/s over the dense model's GGUF in llama.cpp
  (``vs_llamacpp``), and an engine with its sparse path asked over the same engine without it, on the same artifact
  (``openvino_sparse``: OpenVINO's sparse weights decompression).

Which engine is compared with which is read from the engines' entries (benchmarks/engines/__init__.py: ENGINES),
never decided by an engine's name here (tests/test_engine_table.py).
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from benchmarks.engines import GGUF_ENGINE
from benchmarks.engines import engine_facts as facts


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def depth_fit(layers: list[int], ms: list[float]) -> dict:
    """Fit ms = fixed + per_layer * layers by least squares; needs two or more distinct depths."""
    if len(set(layers)) < 2:
        raise ValueError("a depth fit needs timings at two or more depths")
    n = len(layers)
    mean_l, mean_t = sum(layers) / n, sum(ms) / n
    sxx = sum((l - mean_l) ** 2 for l in layers)
    per_layer = sum((l - mean_l) * (t - mean_t) for l, t in zip(layers, ms)) / sxx
    fixed = mean_t - per_layer * mean_l
    residual = max(abs(fixed + per_layer * l - t) for l, t in zip(layers, ms))
    return {"fixed_ms": fixed, "per_layer_ms": per_layer, "depths": sorted(set(layers)), "max_residual_ms": residual}


def extrapolate(fit: dict, layers: int, tokens_per_step: int = 1) -> dict:
    ms = fit["fixed_ms"] + fit["per_layer_ms"] * layers
    return {"layers": layers, "ms": ms, "tokens_per_s": tokens_per_step * 1000.0 / ms}


def _cells(results: dict) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for m in results["measurements"]:
        cells[(m["artifact"], m["engine"], m["mode"])].append(m)
    return cells


def summarize(results: dict, target_layers: int | None = None) -> dict:
    """Everything the report shows, from ``results`` (artifacts, measurements, settings)."""
    artifacts = {a["key"]: a for a in results["artifacts"]}
    cells = _cells(results)
    table = []
    for (key, engine, mode), ms in sorted(cells.items(), key=lambda kv: kv[0]):
        a = artifacts[key]
        table.append({"artifact": key, "name": a["name"], "layers": a["layers"], "method": a["method"],
                      "sparsity": a["sparsity"], "engine": engine, "mode": mode,
                      "tokens_per_s": spread([m["tokens_per_s"] for m in ms]),
                      "ms_median": statistics.median(m["ms_median"] for m in ms),
                      "tokens_per_step": ms[0]["tokens_per_s"] * ms[0]["ms_median"] / 1000.0,
                      "peak_rss_bytes": max((m.get("peak_rss_bytes") or 0 for m in ms), default=0) or None})
    dense_at = {a["layers"]: k for k, a in artifacts.items() if a["method"] == "none"}
    speedups = []
    for key, a in artifacts.items():
        ref = dense_at.get(a["layers"])
        if ref is None or ref == key:
            continue
        for (k, engine, mode) in sorted(cells):
            if k != key:
                continue
            peers = [engine] + ([facts(engine).dense_peer] if facts(engine).dense_peer else [])
            for peer in peers:
                ratio = paired_ratio(cells, (key, engine, mode), (ref, peer, mode))
                if ratio:
                    speedups.append({"artifact": key, "dense": ref, "engine": engine, "mode": mode, "vs": peer, **ratio})
    summary = {"cells": table, "speedups": speedups, "vs_llamacpp": vs_llamacpp(results, cells),
               "openvino_sparse": openvino_sparse(cells)}
    if target_layers:
        summary["extrapolation"] = _extrapolation(table, target_layers)
    return summary


def openvino_sparse(cells: dict) -> list[dict]:
    """Per artifact and mode measured by both an engine and its sparse variant (``openvino-sparse``, the table's
    ``sparse_variant_of``): tokens/s with the sparse weights decompression asked over without (paired by round),
    whether it was on (and why not), and the MatMul kernels each ran (the last measurement's; the CPU plugin chooses
    the same ones every round)."""
    rows = []
    for (key, engine, mode) in sorted(cells):
        base = facts(engine).sparse_variant_of
        if base is None or (key, base, mode) not in cells:
            continue
        sparse, dense = cells[(key, engine, mode)][-1], cells[(key, base, mode)][-1]
        rows.append({"artifact": key, "mode": mode, **paired_ratio(cells, (key, engine, mode), (key, base, mode)),
                     "sparse_weights": sparse.get("sparse_weights"), "kernels": sparse.get("kernels"),
                     "kernels_dense": dense.get("kernels"), "int8_matmuls": sparse.get("int8_matmuls"),
                     "sparse_matmuls": sparse.get("sparse_matmuls")})
    return rows


def vs_llamacpp(results: dict, cells: dict | None = None) -> list[dict]:
    """Per ONNX-engine cell and GGUF of the same depth measured by llama.cpp in the same mode: the ratio of
    tokens/s (above 1: the artifact in that engine is faster than the model in llama.cpp), paired by round."""
    cells = cells if cells is not None else _cells(results)
    artifacts = {a["key"]: a for a in results["artifacts"]}
    ggufs = [a for a in results["artifacts"] if "gguf_type" in a]
    rows = []
    for (key, engine, mode) in sorted(cells):
        if not facts(engine).runs_onnx or "gguf_type" in artifacts[key]:
            continue
        for g in ggufs:
            if g["layers"] != artifacts[key]["layers"]:
                continue
            ratio = paired_ratio(cells, (key, engine, mode), (g["key"], GGUF_ENGINE, mode))
            if ratio:
                rows.append({"artifact": key, "engine": engine, "mode": mode, "gguf": g["key"],
                             "gguf_type": g["gguf_type"], **ratio})
    return rows


def paired_ratio(cells: dict, mine: tuple, base: tuple) -> dict | None:
    """tokens/s of cell ``mine`` over cell ``base``: ratio of medians, and the per-round paired ratios."""
    a, b = cells.get(mine), cells.get(base)
    if not a or not b:
        return None
    by_round = {m["round"]: m["tokens_per_s"] for m in b}
    rounds = [m["tokens_per_s"] / by_round[m["round"]] for m in a if m["round"] in by_round]
    ratio = statistics.median(m["tokens_per_s"] for m in a) / statistics.median(m["tokens_per_s"] for m in b)
    return {"ratio": ratio, "per_round": spread(rounds) if rounds else None}


def _extrapolation(table: list[dict], target_layers: int) -> list[dict]:
    """Per (name, engine, mode) measured at two or more depths: the fit and the figure at ``target_layers``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for cell in table:
        groups[(cell["name"], cell["engine"], cell["mode"])].append(cell)
    rows = []
    for (name, engine, mode), cells in sorted(groups.items()):
        if len({c["layers"] for c in cells}) < 2:
            continue
        fit = depth_fit([c["layers"] for c in cells], [c["ms_median"] for c in cells])
        step = round(cells[0]["tokens_per_step"])
        rows.append({"name": name, "engine": engine, "mode": mode, "method": cells[0]["method"],
                     "sparsity": cells[0]["sparsity"], "fit": fit, **extrapolate(fit, target_layers, step)})
    dense = {(r["engine"], r["mode"]): r for r in rows if r["method"] == "none"}
    for r in rows:
        ref = dense.get((r["engine"], r["mode"]))
        r["speedup_vs_dense"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
        peer = facts(r["engine"]).dense_peer  # the key keeps its name: DeepSparse's peer is ONNX Runtime
        ort = dense.get((peer, r["mode"])) if peer else None
        r["vs_onnxruntime_dense"] = r["tokens_per_s"] / ort["tokens_per_s"] if ort else None
    return rows


def variant_rows(results: dict, variants: dict[str, str]) -> list[dict]:
    """Per (engine, mode), the tokens/s spread of each variant (e.g. dense / pruned / int8 -> artifact key) and,
    for the others, the speedup over the ``dense`` variant in the same engine from the same interleaved rounds
    (ratio of medians and the range of the per-round paired ratios)."""
    cells = _cells(results)
    dense = variants.get("dense")
    keys = set(variants.values())
    rows = []
    for engine, mode in sorted({(e, m) for (k, e, m) in cells if k in keys}):
        row: dict = {"engine": engine, "mode": mode}
        for variant, key in variants.items():
            ms = cells.get((key, engine, mode))
            if not ms:
                continue
            row[variant] = {"artifact": key, "tokens_per_s": spread([m["tokens_per_s"] for m in ms])}
            ratio = paired_ratio(cells, (key, engine, mode), (dense, engine, mode)) if dense and key != dense else None
            if ratio:
                row[variant]["speedup_vs_dense"] = ratio["ratio"]
                row[variant]["speedup_per_round"] = ratio["per_round"]
        rows.append(row)
    return rows
