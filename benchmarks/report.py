"""Renders a benchmark's results.json as report.md and PNG plots. It formats numbers; benchmarks/stats.py
computed them from the raw measurements.

The paper's figures (DaSS, Table "CPU", LLaMA-2-7B in DeepSparse on a 24-core Intel Xeon 8160):
dense 3.05, 50% 5.64 (1.85x), 70% 8.27 (2.71x) tokens/s.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.common.outputs import figure_png, write_bytes_atomic, write_text_atomic

PAPER = {"machine": "24-core Intel Xeon Platinum 8160, LLaMA-2-7B, DeepSparse",
         "tokens_per_s": {None: 3.05, 0.5: 5.64, 0.7: 8.27}}
from benchmarks.engines import ENGINE_NAMES
from benchmarks.tradeoff import tradeoff_figure, tradeoff_table


def _layers(n: int) -> str:
    return f"{n} layer" + ("s" if n != 1 else "")


def _tps(s: dict) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def _ratio(entry: dict | None) -> str:
    if not entry:
        return "–"
    pr = entry.get("per_round")
    rounds = f", rounds {pr['min']:.2f}–{pr['max']:.2f}" if pr and pr["n"] > 1 else ""
    return f"{entry['ratio']:.2f}x{rounds}"


def _sparsity_label(a: dict) -> str:
    if "gguf_type" in a:
        return f"dense, GGUF {a['gguf_type']}"
    if a["method"] in ("none", "none+int8"):
        return a["method"].replace("none", "dense")
    req = a["requested_sparsity"]
    return f"{a['method']} {req:.0%}" if isinstance(req, float) else f"{a['method']} {req}"


def _paper_row(sparsity) -> str:
    paper = PAPER["tokens_per_s"]
    if sparsity not in paper:
        return "–"
    ratio = paper[sparsity] / paper[None]
    return f"{paper[sparsity]:.2f}" + ("" if sparsity is None else f" ({ratio:.2f}x)")


SCOPE_LABELS = {"mlp": "MLP only", "attention+mlp": "attention + MLP"}


def _paper_table(results: dict) -> list[str]:
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
    for d in depths:
        head.append(f"ours, DeepSparse, {_layers(d)} (measured)")
    if extrap:
        head.append(f"ours, DeepSparse, {target} layers (extrapolated)")
    head.append("ours, DeepSparse sparse / ONNX Runtime dense" + (f" ({target} layers, extrapolated)" if extrap else ""))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = []
    for a in sorted(rows, key=lambda a: (a["requested_sparsity"] or 0)):
        if a["name"] in names:
            continue
        names.append(a["name"])
        line = [_sparsity_label(a), _paper_row(a["requested_sparsity"] if a["method"] == "dass" else None)]
        for d in depths:
            here = [k for k, x in arts.items() if x["name"] == a["name"] and x["layers"] == d]
            cell = cells.get((here[0], "deepsparse", "decode")) if here else None
            text = f"{cell['tokens_per_s']['median']:.2f}" if cell else "–"
            if cell and a["method"] != "none":
                text += f" ({_ratio(speed.get((here[0], 'deepsparse', 'decode', 'deepsparse')))})"
            line.append(text)
        vs_ort = "–"
        if extrap:
            e = extrap.get((a["name"], "deepsparse", "decode"))
            line.append(f"{e['tokens_per_s']:.2f}" + (f" ({e['speedup_vs_dense']:.2f}x)"
                                                       if e["speedup_vs_dense"] is not None and a["method"] != "none"
                                                       else "") if e else "–")
            if e and e["vs_onnxruntime_dense"]:
                vs_ort = f"{e['vs_onnxruntime_dense']:.2f}x"
        else:
            deepest = [k for k, x in arts.items() if x["name"] == a["name"] and x["layers"] == depths[-1]]
            if deepest:
                vs_ort = _ratio(speed.get((deepest[0], "deepsparse", "decode", "onnxruntime")))
        line.append(vs_ort)
        lines.append("| " + " | ".join(line) + " |")
    return ["## The paper's CPU table beside ours (decode tokens/s, batch 1)", ""] + lines + [
        "", "Speedups in brackets are over dense in the same engine, from the same interleaved run (ratio of medians; "
        "'rounds' gives the range of the per-round paired ratios)."]


def _cells_table(results: dict, mode: str) -> list[str]:
    s = results["summary"]
    arts = {a["key"]: a for a in results["artifacts"]}
    speed = {(x["artifact"], x["engine"], x["mode"], x["vs"]): x for x in s["speedups"]}
    cells = [c for c in s["cells"] if c["mode"] == mode]
    if not cells:
        return []
    lines = [f"## {mode.capitalize()} tokens/s, every measurement", "",
             "| artifact | layers | method | sparsity (in the ONNX file) | engine | tokens/s median (min–max) | "
             "vs dense, same engine | vs ONNX Runtime dense |", "|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["layers"], c["engine"], c["sparsity"], c["artifact"])):
        a = arts[c["artifact"]]
        same = speed.get((c["artifact"], c["engine"], mode, c["engine"]))
        ort = speed.get((c["artifact"], c["engine"], mode, "onnxruntime")) if c["engine"] == "deepsparse" else None
        lines.append(f"| {c['artifact']} | {c['layers']} | {_sparsity_label(a)} | {c['sparsity']:.3f} | "
                     f"{ENGINE_NAMES[c['engine']]} | {_tps(c['tokens_per_s'])} | {_ratio(same)} | {_ratio(ort)} |")
    return lines


def _llamacpp_table(results: dict) -> list[str]:
    """Each ONNX artifact against the dense model's GGUFs in llama.cpp: tokens/s ratio (same rounds), and the
    GGUF's perplexity where it was measured (the artifacts' own perplexities are in the run's report.md)."""
    rows = results["summary"].get("vs_llamacpp") or []
    if not rows:
        return []
    arts = {a["key"]: a for a in results["artifacts"]}
    cells = {(c["artifact"], c["engine"], c["mode"]): c for c in results["summary"]["cells"]}
    lines = ["## Against llama.cpp (the dense model as GGUF)", "",
             "Above 1x: the artifact in that engine is faster than the GGUF in llama.cpp (ratio of medians, same "
             "interleaved rounds).", "",
             "| mode | artifact | method | engine | tokens/s | GGUF | llama.cpp tokens/s | GGUF perplexity | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mine, peer = cells[(r["artifact"], r["engine"], r["mode"])], cells[(r["gguf"], "llamacpp", r["mode"])]
        ppl = (arts[r["gguf"]].get("perplexity") or {}).get("perplexity")
        lines.append(f"| {r['mode']} | {r['artifact']} | {_sparsity_label(arts[r['artifact']])} | "
                     f"{ENGINE_NAMES[r['engine']]} | {_tps(mine['tokens_per_s'])} | {r['gguf_type']} | "
                     f"{_tps(peer['tokens_per_s'])} | {f'{ppl:.3f}' if ppl else '–'} | {_ratio(r)} |")
    return lines


def _openvino_table(results: dict) -> list[str]:
    """OpenVINO with its sparse weights decompression asked against without, on the same artifact: whether the
    sparse path ran (and why not), which kernels the MatMuls ran, and the tokens/s ratio of the same rounds."""
    rows = results["summary"].get("openvino_sparse") or []
    if not rows:
        return []
    m = results["machine"]
    ov = m.get("openvino-sparse") or m.get("openvino") or {}
    lines = ["## OpenVINO: sparse weights decompression asked vs not, same artifact", "",
             f"OpenVINO {ov.get('version', '?')} on `{ov.get('device', '?')}`; AMX: {ov.get('amx')}; CPU plugin "
             f"capabilities {', '.join(ov.get('capabilities', []))}.", "",
             "| mode | artifact | sparse path | MatMul kernels (sparse asked) | MatMuls INT8 / sparse | ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        kernels = "; ".join(f"{k} x{n}" for k, n in (r.get("kernels") or {}).items())
        reason = (r.get("sparse_weights") or {}).get("reason", "?")
        lines.append(f"| {r['mode']} | {r['artifact']} | {reason} | {kernels} | {r.get('int8_matmuls')} / "
                     f"{r.get('sparse_matmuls')} | {_ratio(r)} |")
    return lines


def _fit_table(results: dict) -> list[str]:
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


def _equal_speed(results: dict) -> list[str]:
    """Artifacts of the same depth and requested sparsity, different methods, side by side (DeepSparse decode)."""
    s = results["summary"]
    cells = {(c["artifact"], c["engine"], c["mode"]): c for c in s["cells"]}
    groups: dict[tuple, list[dict]] = {}
    for a in results["artifacts"]:
        if a["method"] not in ("none", "unknown"):  # float and INT8 artifacts are compared apart
            groups.setdefault((a["layers"], a["requested_sparsity"], a["method"].endswith("+int8")), []).append(a)
    lines = []
    for (layers, sparsity, _), arts in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len({a["method"] for a in arts}) < 2:
            continue
        found = [(a, cells.get((a["key"], "deepsparse", "decode"))) for a in arts]
        found = [(a, c) for a, c in found if c]
        if len(found) < 2:
            continue
        ref = found[0][1]["tokens_per_s"]["median"]
        lines += ["", f"### {sparsity} sparsity, {layers} layers: DeepSparse decode", "",
                  "| method | sparsity in the ONNX file | tokens/s median (min–max) | vs " + found[0][0]["method"] + " |",
                  "|---|---|---|---|"]
        for a, c in found:
            lines.append(f"| {a['method']} | {c['sparsity']:.3f} | {_tps(c['tokens_per_s'])} | "
                         f"{c['tokens_per_s']['median'] / ref:.2f}x |")
    return (["## Equal speed at equal sparsity"] + lines) if lines else []


def _save(fig, path: Path, made: list[str]) -> None:
    """Lay out and write a figure atomically; record its file name in ``made``."""
    write_bytes_atomic(path, figure_png(fig))
    made.append(path.name)


def _finish(fig, ax, ylabel: str, title: str, path: Path, made: list[str]) -> None:
    """Label a one-axes plot and write it."""
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    _save(fig, path, made)


def _context(results: dict) -> str:
    """The line every plot carries: models, CPU, settings."""
    m, st = results["machine"], results["settings"]
    models = sorted({a.get("model") or a["name"] for a in results["artifacts"]})
    return (f"{', '.join(models)}; {m['cpu']}, {m['cores']} cores\nbatch 1, context {st['sequence_length']}, threads "
            f"{st['threads'] or 'all'}, {st['repeats']} interleaved round(s) x {st['seconds']} s")


def _role_order(a: dict) -> tuple:
    """Dense first, then the float pruned artifacts by sparsity, INT8 last."""
    return (a["method"].endswith("+int8"), a["method"] != "none", a["sparsity"], a["key"])


def artifact_bars(results: dict) -> dict:
    """What tokens_by_artifact.png shows, from the summary: the artifacts of the deepest depth (dense first, INT8
    last) and, per mode and engine, each one's tokens/s (median, min, max over the interleaved rounds) and its
    speedup over the dense artifact in the same engine (None for dense, or with no dense)."""
    s = results["summary"]
    deepest = max(a["layers"] for a in results["artifacts"])
    arts = sorted((a for a in results["artifacts"] if a["layers"] == deepest), key=_role_order)
    labels = {a["key"]: _sparsity_label(a) for a in arts}
    if len(set(labels.values())) < len(labels):  # compared runs of the same method and sparsity
        labels = {a["key"]: f"{a['name']}: {labels[a['key']]}" for a in arts}
    cells = {(c["artifact"], c["engine"], c["mode"]): c["tokens_per_s"] for c in s["cells"]}
    speed = {(x["artifact"], x["engine"], x["mode"]): x["ratio"] for x in s["speedups"] if x["vs"] == x["engine"]}
    modes: dict[str, dict] = {}
    for mode in results["settings"]["modes"]:
        for engine in ENGINE_NAMES:
            bars = {a["key"]: {**{k: cells[(a["key"], engine, mode)][k] for k in ("median", "min", "max")},
                               "speedup": speed.get((a["key"], engine, mode))}
                    for a in arts if (a["key"], engine, mode) in cells}
            if bars:
                modes.setdefault(mode, {})[engine] = bars
    return {"layers": deepest, "artifacts": [a["key"] for a in arts], "labels": labels,
            "models": sorted({a.get("model") or a["name"] for a in arts}), "modes": modes}


def tokens_by_artifact_figure(results: dict):
    """Bars of tokens/s per engine, one per artifact (dense / pruned / INT8), whiskers the min–max of the
    interleaved rounds, each bar labelled with its median and its speedup over dense; titled with the model,
    the CPU and the settings. Returns the matplotlib figure (None: nothing measured)."""
    import matplotlib.pyplot as plt

    data = artifact_bars(results)
    if not data["modes"]:
        return None
    m, st = results["machine"], results["settings"]
    fig, axes = plt.subplots(1, len(data["modes"]), figsize=(5.5 * len(data["modes"]), 4.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    keys = data["artifacts"]
    width = 0.8 / len(keys)
    for ax, (mode, engines) in zip(axes[0], data["modes"].items()):
        names = list(engines)
        for i, key in enumerate(keys):
            xs = [j + (i - (len(keys) - 1) / 2) * width for j, e in enumerate(names) if key in engines[e]]
            bars = [engines[e][key] for e in names if key in engines[e]]
            if not bars:
                continue
            ax.bar(xs, [b["median"] for b in bars], width, color=colors[i % len(colors)], label=data["labels"][key],
                   yerr=[[b["median"] - b["min"] for b in bars], [b["max"] - b["median"] for b in bars]], capsize=3)
            for x, b in zip(xs, bars):
                text = f"{b['median']:.1f}" + (f"\n{b['speedup']:.2f}x" if b["speedup"] else "")
                ax.annotate(text, (x, b["max"]), textcoords="offset points", xytext=(0, 2), ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), [ENGINE_NAMES[e] for e in names])
        ax.set_ylabel(f"{mode} tokens/s (higher is better)")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # room for the labels
        what = (f"1 new token, {st['sequence_length'] - 1} cached" if mode == "decode"
                else f"{st['prefill_length']}-token prompt")
        ax.set_title(f"{mode}: {what}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Tokens/s by engine: {', '.join(data['models'])} ({_layers(data['layers'])})\n"
                 f"{m['cpu']}, {m['cores']} cores; batch 1, threads {st['threads'] or 'all'}, "
                 f"{st['repeats']} interleaved round(s) x {st['seconds']} s", fontsize=9)
    fig.text(0.5, 0.005, "bar: median; whiskers: min–max over the rounds; label: median and speedup over dense "
             "in the same engine (same rounds)", ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    made = []
    fig = tokens_by_artifact_figure(results)
    if fig is not None:
        _save(fig, out / "tokens_by_artifact.png", made)
    fig = tradeoff_figure(results)
    if fig is not None:
        _save(fig, out / "tradeoff.png", made)
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
                            marker="o", capsize=3, label=f"{ENGINE_NAMES[engine]} ({_layers(deepest)}, measured)")
        ext = [e for e in s.get("extrapolation", []) if e["mode"] == "decode" and e["method"] in ("none", "dass")]
        for engine in ENGINE_NAMES:
            pts = sorted((e["sparsity"], e["tokens_per_s"]) for e in ext if e["engine"] == engine)
            if len(pts) > 1 or (pts and engine != "deepsparse"):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", linestyle="--",
                        label=f"{ENGINE_NAMES[engine]} ({results['settings']['extrapolate_to_layers']} layers, extrapolated)")
        ax.set_xlabel("sparsity of the decoder linears")
        ax.set_yscale("log")
        _finish(fig, ax, "decode tokens/s", "Decode speed vs sparsity (DaSS)\n" + _context(results), out / "tokens_vs_sparsity.png", made)
    paper = PAPER["tokens_per_s"]
    bars: dict[str, list] = {"paper (LLaMA-2-7B, 24-core Xeon)": [paper[0.5] / paper[None], paper[0.7] / paper[None]]}
    arts = {a["key"]: a for a in results["artifacts"]}
    for x in s["speedups"]:
        a = arts[x["artifact"]]
        if x["engine"] == x["vs"] == "deepsparse" and x["mode"] == "decode" and a["method"] == "dass" \
                and a["requested_sparsity"] in (0.5, 0.7):
            bars.setdefault(f"ours, {_layers(a['layers'])} (measured)", [None, None])[
                0 if a["requested_sparsity"] == 0.5 else 1] = x["ratio"]
    for e in s.get("extrapolation", []):
        if e["engine"] == "deepsparse" and e["mode"] == "decode" and e["method"] == "dass" and e["sparsity"] is not None:
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
        _finish(fig, ax, "DeepSparse decode speedup over dense", "Speedup: ours vs the paper\n" + _context(results),
                out / "speedup_vs_paper.png", made)
    return made


def render(results: dict, command: str | None = None) -> str:
    m, st = results["machine"], results["settings"]
    ds = m.get("deepsparse") or {}
    lines = ["# Throughput benchmark", ""]
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    lines += [f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}",
              (f"- DeepSparse detects: instruction set `{ds.get('isa')}`, VNNI {ds.get('vnni')}, "
               f"{ds.get('physical_cores')} physical cores" if ds else "- DeepSparse: not measured"),
              f"- settings: context (sequence length) {st['sequence_length']}, prefill {st['prefill_length']} tokens, "
              f"threads {st['threads'] or 'all'}, warm-up {st['warmup_seconds']} s, {st['seconds']} s per measurement, "
              f"{st['repeats']} interleaved rounds, each measurement in its own process",
              "- decode = one new token with the KV cache holding `sequence length - 1` tokens; "
              "prefill = the prompt into an empty cache; batch 1, float32"]
    if m.get("llamacpp"):
        lines.append(f"- llama.cpp reports: `{m['llamacpp'].get('system_info')}`")
    ov = m.get("openvino") or m.get("openvino-sparse")
    if ov:
        lines.append(f"- OpenVINO {ov.get('version')} reports: `{ov.get('device')}`, capabilities "
                     f"{', '.join(ov.get('capabilities', []))}; AMX {ov.get('amx')} (its sparse INT8 kernels need it)")
    if results.get("partial"):
        lines += ["", f"**Partial results: {results['partial']}.** Figures below use what was measured."]
    for f in results.get("failures", []):
        lines += [f"- failed: {f['engine']} {f['mode']} on {f['artifact']} (round {f['round']}): {f['error']}"]
    for block in (tradeoff_table(results), _paper_table(results), _fit_table(results), _equal_speed(results),
                  _llamacpp_table(results),
                  _openvino_table(results),
                  _cells_table(results, "decode"), _cells_table(results, "prefill")):
        if block:
            lines += [""] + block
    lines += ["", "Raw measurements: `results.json`."]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path, command: str | None = None) -> list[str]:
    """report.md and the plots into ``out``; returns the file names written."""
    out = Path(out)
    made = _plots(results, out)
    text = render(results, command or results.get("command"))
    if made:
        text += "\n" + "\n".join(f"![{name}]({name})" for name in made) + "\n"
    write_text_atomic(out / "report.md", text)
    return ["report.md", *made]
