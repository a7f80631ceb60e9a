"""The paper's CPU table (DaSS, Table "CPU", LLaMA-2-7B in DeepSparse on a 24-core Intel Xeon 8160: dense 3.05,
50% 5.64 (1.85x), 70% 8.27 (2.71x) tokens/s) beside ours: the table, the depth fit that extrapolates our shallower
measurements to the paper's depth, and their two figures (decode speed against sparsity, speedups against the
paper's). The paper's engine and its dense peer are the ENGINES table's (``paper_engine``, its ``dense_peer``)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.engines import ENGINE_NAMES, ENGINES, PAPER_ENGINE
from benchmarks.report_format import finish_figure, layers_label, plot_context, ratio, sparsity_label

PAPER = {"machine": "24-core Intel Xeon Platinum 8160, LLaMA-2-7B, DeepSparse",
         "tokens_per_s": {None: 3.05, 0.5: 5.64, 0.7: 8.27}}


def _paper_row(sparsity) -> str:
    paper = PAPER["tokens_per_s"]
    if sparsity not in paper:
        return "–"
    ratio = paper[sparsity] / paper[None]
    return f"{paper[sparsity]:.2f}" + ("" if sparsity is None else f" ({ratio:.2f}x)")


SCOPE_LABELS = {"mlp": "MLP only", "attention+mlp": "attention + MLP"}
ENGINE, PEER = PAPER_ENGINE, ENGINES[PAPER_ENGINE].dense_peer  # DeepSparse, and ONNX Runtime on the dense artifact


def paper_table(results: dict) -> list[str]:
    """The paper's table beside ours: DaSS dense/50%/70% in DeepSparse (decode), measured and extrapolated."""
    s = results["summary"]
    arts = {a["key"]: a for a in results["artifacts"]}
    rows = [a for a in results["artifacts"] if a["method"] == "none" or
            (a["method"] == "dass" and a["requested_sparsity"] in PAPER["tokens_per_s"])]
    if not rows:
        return []
    cells = {(c["artifact"], c["engine"], c["mode"]): c for c in s["cells"]}
    speed = {(x["artifact"], x["engine"], x["mode"], x["vs"]): x for x in s["speedups"]}
    depths = sorted({a["layers"] for a in rows})
    extrap = {(e["name"], e["engine"], e["mode"]): e for e in s.get("extrapolation", [])}
    target = results["settings"].get("extrapolate_to_layers")
    scopes = sorted({a.get("scope") or "scope not recorded" for a in rows if a["method"] != "none"})
    head = [f"model (DaSS, {', '.join(SCOPE_LABELS.get(s, s) for s in scopes) or 'dense only'}; the paper: "
            "attention + MLP)", f"paper: {PAPER['machine']}"]
    label = ENGINE_NAMES[ENGINE]
    for d in depths:
        head.append(f"ours, {label}, {layers_label(d)} (measured)")
    if extrap:
        head.append(f"ours, {label}, {target} layers (extrapolated)")
    head.append(f"ours, {label} sparse / {ENGINE_NAMES[PEER]} dense" + (f" ({target} layers, extrapolated)" if extrap else ""))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = []
    for a in sorted(rows, key=lambda a: (a["requested_sparsity"] or 0)):
        if a["name"] in names:
            continue
        names.append(a["name"])
        line = [sparsity_label(a), _paper_row(a["requested_sparsity"] if a["method"] == "dass" else None)]
        for d in depths:
            here = [k for k, x in arts.items() if x["name"] == a["name"] and x["layers"] == d]
            cell = cells.get((here[0], ENGINE, "decode")) if here else None
            text = f"{cell['tokens_per_s']['median']:.2f}" if cell else "–"
            if cell and a["method"] != "none":
                text += f" ({ratio(speed.get((here[0], ENGINE, 'decode', ENGINE)))})"
            line.append(text)
        vs_ort = "–"
        if extrap:
            e = extrap.get((a["name"], ENGINE, "decode"))
            line.append(f"{e['tokens_per_s']:.2f}" + (f" ({e['speedup_vs_dense']:.2f}x)"
                                                       if e["speedup_vs_dense"] is not None and a["method"] != "none"
                                                       else "") if e else "–")
            if e and e["vs_onnxruntime_dense"]:
                vs_ort = f"{e['vs_onnxruntime_dense']:.2f}x"
        else:
            deepest = [k for k, x in arts.items() if x["name"] == a["name"] and x["layers"] == depths[-1]]
            if deepest:
                vs_ort = ratio(speed.get((deepest[0], ENGINE, "decode", PEER)))
        line.append(vs_ort)
        lines.append("| " + " | ".join(line) + " |")
    return ["## The paper's CPU table beside ours (decode tokens/s, batch 1)", ""] + lines + [
        "", "Speedups in brackets are over dense in the same engine, from the same interleaved run (ratio of medians; "
        "'rounds' gives the range of the per-round paired ratios)."]


def fit_table(results: dict) -> list[str]:
    rows = results["summary"].get("extrapolation") or []
    if not rows:
        return []
    target = results["settings"]["extrapolate_to_layers"]
    lines = [f"## Depth fit and extrapolation to {target} layers", "",
             "ms per step = fixed + layers x per-layer, least squares over the measured depths (median ms of each depth). "
             "The fixed part holds the embedding, final norm, 32000-word LM head (dense, never pruned) and engine overhead.", "",
             f"| model | engine | mode | fixed ms | per-layer ms | depths | max residual ms | {target}-layer tokens/s "
             "(extrapolated) | vs dense |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["fit"]
        sp = f"{r['speedup_vs_dense']:.2f}x" if r["speedup_vs_dense"] and r["method"] != "none" else "–"
        lines.append(f"| {r['name']} | {ENGINE_NAMES[r['engine']]} | {r['mode']} | {f['fixed_ms']:.1f} | "
                     f"{f['per_layer_ms']:.2f} | {', '.join(map(str, f['depths']))} | {f['max_residual_ms']:.2f} | "
                     f"{r['tokens_per_s']:.2f} | {sp} |")
    return lines


def paper_figures(results: dict, out: Path, made: list[str]) -> None:
    """tokens_vs_sparsity.png (DaSS decode tokens/s against sparsity, measured and extrapolated) and
    speedup_vs_paper.png (our DeepSparse decode speedups beside the paper's), where the results hold them."""
    import matplotlib.pyplot as plt

    s = results["summary"]
    decode = [c for c in s["cells"] if c["mode"] == "decode" and c["method"] in ("none", "dass")]
    deepest = max((c["layers"] for c in decode), default=0)
    if len({c["sparsity"] for c in decode if c["layers"] == deepest}) > 1:  # a line needs two x values
        fig, ax = plt.subplots(figsize=(6, 4))
        for engine in ENGINE_NAMES:
            pts = sorted(((c["sparsity"], c["tokens_per_s"]) for c in decode if c["engine"] == engine
                          and c["layers"] == deepest), key=lambda p: p[0])  # artifacts of equal sparsity: any order
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1]["median"] for p in pts],
                            yerr=[[p[1]["median"] - p[1]["min"] for p in pts], [p[1]["max"] - p[1]["median"] for p in pts]],
                            marker="o", capsize=3, label=f"{ENGINE_NAMES[engine]} ({layers_label(deepest)}, measured)")
        ext = [e for e in s.get("extrapolation", []) if e["mode"] == "decode" and e["method"] in ("none", "dass")]
        for engine in ENGINE_NAMES:
            pts = sorted((e["sparsity"], e["tokens_per_s"]) for e in ext if e["engine"] == engine)
            if len(pts) > 1 or (pts and not ENGINES[engine].paper_engine):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", linestyle="--",
                        label=f"{ENGINE_NAMES[engine]} ({results['settings']['extrapolate_to_layers']} layers, extrapolated)")
        ax.set_xlabel("sparsity of the decoder linears")
        ax.set_yscale("log")
        finish_figure(fig, ax, "decode tokens/s", "Decode speed vs sparsity (DaSS)\n" + plot_context(results), out / "tokens_vs_sparsity.png", made)
    paper = PAPER["tokens_per_s"]
    bars: dict[str, list] = {"paper (LLaMA-2-7B, 24-core Xeon)": [paper[0.5] / paper[None], paper[0.7] / paper[None]]}
    arts = {a["key"]: a for a in results["artifacts"]}
    for x in s["speedups"]:
        a = arts[x["artifact"]]
        if x["engine"] == x["vs"] == ENGINE and x["mode"] == "decode" and a["method"] == "dass" \
                and a["requested_sparsity"] in (0.5, 0.7):
            bars.setdefault(f"ours, {layers_label(a['layers'])} (measured)", [None, None])[
                0 if a["requested_sparsity"] == 0.5 else 1] = x["ratio"]
    for e in s.get("extrapolation", []):
        if e["engine"] == ENGINE and e["mode"] == "decode" and e["method"] == "dass" and e["sparsity"] is not None:
            req = [a["requested_sparsity"] for a in results["artifacts"] if a["name"] == e["name"]][0]
            if req in (0.5, 0.7):
                bars.setdefault(f"ours, {results['settings']['extrapolate_to_layers']} layers (extrapolated)",
                                [None, None])[0 if req == 0.5 else 1] = e["speedup_vs_dense"]
    if len(bars) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        width = 0.8 / len(bars)
        for i, (label, values) in enumerate(bars.items()):
            xs = [j + i * width for j, v in enumerate(values) if v is not None]
            ax.bar(xs, [v for v in values if v is not None], width, label=label)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(2)], ["50%", "70%"])
        finish_figure(fig, ax, f"{ENGINE_NAMES[ENGINE]} decode speedup over dense", "Speedup: ours vs the paper\n" + plot_context(results),
                out / "speedup_vs_paper.png", made)
