"""The trade-off a user weighs: for every artifact in every engine, decode and prefill tokens/s, perplexity, size on
disk and the engine's peak RAM, in one table, and tokens/s against perplexity as a scatter plot with the Pareto
frontier marked (the points no other point beats on both speed and perplexity).

Rows come from one interleaved benchmark (results.json): tokens/s are medians over its rounds, peak RAM the largest
resident set of the engine's measurement processes (model loaded and run). Perplexity is the one computed by the row's
engine, as recorded beside the artifact (``perplexity_by_engine``: the quantize stage's figures of the float and INT8
artifacts, each graph run by its own engine, export/engine_perplexity.py; a GGUF's measured in llama.cpp), all by the
evaluation section's windows. Where the row's engine has none, the artifact's reference figure stands in, marked with
the engine that computed it (PyTorch for a float model, ONNX Runtime for an INT8 graph). A line above the table names
each engine figure that leaves the reference by more than export/perplexity_agreement.py's tolerance. Rows whose
perplexity was measured on other windows are flagged.
"""

from __future__ import annotations

from benchmarks.engines import ENGINE_NAMES, ENGINES
from benchmarks.report_format import batch_size, measured_modes, prompt_length
from export.perplexity_agreement import TOLERANCE, beyond, gap
from export.weight_kinds import KINDS


def _label(a: dict) -> str:
    if "gguf_type" in a:
        return f"dense, GGUF {a['gguf_type']}"
    method = a["method"].replace("none", "dense").replace("+int8", " INT8")
    req = a.get("requested_sparsity")
    if req is None or method.startswith("dense"):
        return method
    amount = f"{req:.0%}" if isinstance(req, float) else str(req)
    return method.replace(" INT8", "") + f" {amount}" + (" INT8" if "+int8" in a["method"] else "")


def _protocol(p: dict | None) -> tuple | None:
    return (p.get("dataset"), p.get("windows"), p.get("context_length")) if p else None


def engine_figure(a: dict, engine: str) -> tuple[dict | None, str | None]:
    """(the perplexity of artifact ``a`` for a row of benchmark engine ``engine``, the engine that computed it where
    that is not the row's: "" when not recorded, None when it is the row's own)."""
    own = ENGINES[engine].perplexity_in if engine in ENGINES else None
    figure = (a.get("perplexity_by_engine") or {}).get(own) if own else None
    if figure:
        return figure, None
    reference = a.get("perplexity")
    if not reference:
        return None, None
    source = reference.get("measured_in") or ""
    return reference, (None if own and source == own else source)


def tradeoff_rows(results: dict) -> list[dict]:
    """One row per (artifact, engine) measured: label, tokens/s per mode, perplexity (the row engine's own, else the
    reference with ``perplexity_from`` naming its engine), bytes, peak RSS; ``frontier`` marks the rows on the
    decode tokens/s vs perplexity Pareto frontier."""
    arts = {a["key"]: a for a in results["artifacts"]}
    rows: dict[tuple, dict] = {}
    for c in results["summary"]["cells"]:
        a = arts[c["artifact"]]
        figure, source = engine_figure(a, c["engine"])
        row = rows.setdefault((c["artifact"], c["engine"]), {
            "artifact": c["artifact"], "label": _label(a), "engine": c["engine"], "tokens_per_s": {},
            "perplexity": (figure or {}).get("perplexity"), "perplexity_from": source, "protocol": _protocol(figure),
            "gap": gap(figure, a.get("perplexity")) if source is None and beyond(figure, a.get("perplexity")) else None,
            "bytes": a.get("bytes"), "peak_rss_bytes": None})
        row["tokens_per_s"][c["mode"]] = c["tokens_per_s"]["median"]
        if c.get("peak_rss_bytes"):
            row["peak_rss_bytes"] = max(row["peak_rss_bytes"] or 0, c["peak_rss_bytes"])
    out = sorted(rows.values(), key=lambda r: -(r["tokens_per_s"].get("decode") or 0))
    protocols = [r["protocol"] for r in out if r["protocol"]]
    common = max(set(protocols), key=protocols.count) if protocols else None
    front = pareto_front([(r["tokens_per_s"].get("decode"), r["perplexity"]) for r in out])
    for i, r in enumerate(out):
        r["frontier"] = i in front
        r["other_protocol"] = r["protocol"] is not None and r["protocol"] != common
    return out


def pareto_front(points: list[tuple[float | None, float | None]]) -> set[int]:
    """Indices of the points (tokens/s, perplexity) that no other point beats: at least as fast and at least as
    low, and strictly better in one. Points missing either value are never on it."""
    known = [(i, t, p) for i, (t, p) in enumerate(points) if t is not None and p is not None]
    return {i for i, t, p in known
            if not any(t2 >= t and p2 <= p and (t2 > t or p2 < p) for j, t2, p2 in known if j != i)}


def _mib(n: int | None) -> str:
    return f"{n / 2**20:,.0f}" if n else "–"


def tradeoff_table(results: dict) -> list[str]:
    rows = tradeoff_rows(results)
    if not rows or not any(r["perplexity"] for r in rows):
        return []
    modes = measured_modes(results)
    common = next((r["protocol"] for r in rows if r["protocol"] and not r["other_protocol"]), None)
    st = results["settings"]
    what = {m: f"decode tok/s (context {st['sequence_length']})" if m == "decode"
            else f"batch {batch_size(m)} decode tok/s (all sequences)" if batch_size(m)
            else f"prefill tok/s ({prompt_length(m, st)}-token prompt)" for m in modes}
    lines = ["## Trade-off: speed, perplexity, size, memory", ""]
    off = [f"{r['label']} in {ENGINE_NAMES.get(r['engine'], r['engine'])} {r['perplexity']:.3f} ({100 * r['gap']:+.1f}%)"
           for r in rows if r["gap"] is not None]
    if off:
        lines += [f"**Perplexity differs by engine** (more than {100 * TOLERANCE:.0f}% from the artifact's reference "
                  f"figure, PyTorch's or ONNX Runtime's): {'; '.join(off)}.", ""]
    lines += ["One row per artifact and engine, fastest decode first; **bold**: on the Pareto frontier of decode "
              "tokens/s against perplexity (no other row is both faster and lower). Perplexity"
              + (f" on {common[0]}, {common[1]} windows of {common[2]} tokens" if common else "")
              + ", computed by the row's engine; where it has none, the artifact's reference figure, marked with the "
              "engine that computed it; size: the artifact's files on disk (a shared weights file once); peak RAM: "
              "the engine process's largest resident set while measuring.", "",
              "| artifact | engine | " + " | ".join(what[m] for m in modes) + " | perplexity | size MiB | peak RAM MiB |",
              "|---|---|" + "---|" * len(modes) + "---|---|---|"]
    for r in rows:
        name = f"**{r['label']}**" if r["frontier"] else r["label"]
        speeds = " | ".join(f"{r['tokens_per_s'][m]:.2f}" if m in r["tokens_per_s"] else "–" for m in modes)
        source = r["perplexity_from"]
        mark = "" if source is None else f" (in {ENGINE_NAMES.get(source, source)})" if source else " (engine not recorded)"
        ppl = (f"{r['perplexity']:.3f}" + mark + (" (other windows)" if r["other_protocol"] else "")
               if r["perplexity"] else "–")
        lines.append(f"| {name} | {ENGINE_NAMES.get(r['engine'], r['engine'])} | {speeds} | {ppl} | "
                     f"{_mib(r['bytes'])} | {_mib(r['peak_rss_bytes'])} |")
    return lines


def weights_table(results: dict) -> list[str]:
    """Bytes of each ONNX artifact's weights by kind (export/weight_kinds.py) and each GGUF's file: what a dense
    engine holds in memory, and what a sparse one can skip (the zeros)."""
    arts = [a for a in results["artifacts"] if a.get("weight_bytes") or "gguf_type" in a]
    if not any(a.get("weight_bytes") for a in arts):
        return []
    lines = ["## Weights by kind", "",
             "MiB of each artifact's weights (the graph named, read tensor by tensor): float and int8 matrices, zero and "
             "non-zero; other: norms, biases, scales. A dense engine (ONNX Runtime) holds all of it; a sparse engine "
             "(DeepSparse) can skip the zeros, so it needs at least the non-zero bytes (plus its index). A GGUF's "
             "weights are its file (quantized blocks, zeros not stored apart).", "",
             "| artifact | graph | float non-zero | float zeros | int8 non-zero | int8 zeros | other | total | "
             "non-zero share |", "|---|---|---|---|---|---|---|---|---|"]
    for a in arts:
        w = a.get("weight_bytes")
        if not w:
            lines.append(f"| {_label(a)} | GGUF file | – | – | – | – | – | {_mib(a.get('bytes'))} | – |")
            continue
        total = sum(w[k] for k in KINDS)
        nonzero = w["float_nonzero"] + w["int8_nonzero"] + w["other"]
        lines.append(f"| {_label(a)} | {w['graph']} | " + " | ".join(_mib(w[k]) if w[k] else "0" for k in KINDS)
                     + f" | {_mib(total)} | {nonzero / total:.0%} |")
    return lines


def tradeoff_figure(results: dict):
    """Decode tokens/s against perplexity, one marker per engine, the frontier joined; None without perplexities."""
    import matplotlib.pyplot as plt

    rows = [r for r in tradeoff_rows(results) if r["perplexity"] and r["tokens_per_s"].get("decode")]
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8))
    markers = dict(zip(ENGINE_NAMES, "osD^vP"))
    for engine in dict.fromkeys(r["engine"] for r in rows):
        mine = [r for r in rows if r["engine"] == engine]
        ax.scatter([r["perplexity"] for r in mine], [r["tokens_per_s"]["decode"] for r in mine],
                   marker=markers.get(engine, "o"), s=40, label=ENGINE_NAMES.get(engine, engine))
    for r in rows:
        ax.annotate(r["label"], (r["perplexity"], r["tokens_per_s"]["decode"]), textcoords="offset points",
                    xytext=(4, 3), fontsize=6)
    front = sorted((r for r in rows if r["frontier"]), key=lambda r: r["perplexity"])
    ax.plot([r["perplexity"] for r in front], [r["tokens_per_s"]["decode"] for r in front], color="grey",
            linestyle="--", linewidth=1, label="Pareto frontier")
    # a broken model (70% of a small one) would squeeze every other point into one column
    log_x = max(r["perplexity"] for r in rows) / min(r["perplexity"] for r in rows) > 4
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("perplexity (lower is better)" + (", log scale" if log_x else ""))
    ax.set_ylabel("decode tokens/s (higher is better)")
    m, st = results["machine"], results["settings"]
    models = sorted({a.get("model") or a["name"] for a in results["artifacts"]})
    ax.set_title(f"Speed vs perplexity: {', '.join(models)}\n{m['cpu']}, {m['cores']} cores; batch 1, context "
                 f"{st['sequence_length']}, threads {st['threads'] or 'all'}, {st['repeats']} interleaved round(s)",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
