"""Renders a benchmark's results.json as report.md and PNG plots. It formats numbers; benchmarks/stats.py
computed them from the raw measurements. Its sections: the trade-off (benchmarks/tradeoff.py), the paper's table and
the depth fit (benchmarks/paper.py), equal speed at equal sparsity, the engines users pick instead
(benchmarks/peers.py), every measurement; and the plots.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.engines import ENGINE_NAMES, ENGINES, PAPER_ENGINE, engine_facts
from benchmarks.engines.llamacpp_build import report_lines as llamacpp_build_lines
from benchmarks.paper import fit_table, paper_figures, paper_table
from benchmarks.peers import crossover_table, llamacpp_table, openvino_table
from benchmarks.report_format import (layers_label, measured_modes, mode_caption, ratio, save_figure, sparsity_label,
                                      tps)
from benchmarks.tradeoff import tradeoff_figure, tradeoff_table, weights_table
from benchmarks.verdict import RULE
from benchmarks.workloads import workload_table
from pipeline.common.outputs import write_text_atomic


def cells_table(results: dict, mode: str) -> list[str]:
    s = results["summary"]
    arts = {a["key"]: a for a in results["artifacts"]}
    speed = {(x["artifact"], x["engine"], x["mode"], x["vs"]): x for x in s["speedups"]}
    cells = [c for c in s["cells"] if c["mode"] == mode]
    if not cells:
        return []
    peers = dict.fromkeys(f.dense_peer for f in ENGINES.values() if f.dense_peer)  # the dense peers (ONNX Runtime)
    lines = [f"## {mode.capitalize()} tokens/s, every measurement", "",
             "| artifact | layers | method | sparsity (in the ONNX file) | engine | tokens/s median (min–max) | "
             f"vs dense, same engine | vs {' / '.join(ENGINE_NAMES[p] for p in peers)} dense |",
             "|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["layers"], c["engine"], c["sparsity"], c["artifact"])):
        a = arts[c["artifact"]]
        same = speed.get((c["artifact"], c["engine"], mode, c["engine"]))
        peer = engine_facts(c["engine"]).dense_peer
        ort = speed.get((c["artifact"], c["engine"], mode, peer)) if peer else None
        lines.append(f"| {c['artifact']} | {c['layers']} | {sparsity_label(a)} | {c['sparsity']:.3f} | "
                     f"{ENGINE_NAMES[c['engine']]} | {tps(c['tokens_per_s'])} | {ratio(same)} | {ratio(ort)} |")
    return lines


def _equal_speed(results: dict) -> list[str]:
    """Artifacts of the same depth and requested sparsity, different methods, side by side (decode in the paper's
    engine, DeepSparse)."""
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
        found = [(a, cells.get((a["key"], PAPER_ENGINE, "decode"))) for a in arts]
        found = [(a, c) for a, c in found if c]
        if len(found) < 2:
            continue
        ref = found[0][1]["tokens_per_s"]["median"]
        lines += ["", f"### {sparsity} sparsity, {layers} layers: {ENGINE_NAMES[PAPER_ENGINE]} decode", "",
                  "| method | sparsity in the ONNX file | tokens/s median (min–max) | vs " + found[0][0]["method"] + " |",
                  "|---|---|---|---|"]
        for a, c in found:
            lines.append(f"| {a['method']} | {c['sparsity']:.3f} | {tps(c['tokens_per_s'])} | "
                         f"{c['tokens_per_s']['median'] / ref:.2f}x |")
    return (["## Equal speed at equal sparsity"] + lines) if lines else []


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
    labels = {a["key"]: sparsity_label(a) for a in arts}
    if len(set(labels.values())) < len(labels):  # compared runs of the same method and sparsity
        labels = {a["key"]: f"{a['name']}: {labels[a['key']]}" for a in arts}
    cells = {(c["artifact"], c["engine"], c["mode"]): c["tokens_per_s"] for c in s["cells"]}
    speed = {(x["artifact"], x["engine"], x["mode"]): x["ratio"] for x in s["speedups"] if x["vs"] == x["engine"]}
    modes: dict[str, dict] = {}
    for mode in measured_modes(results):
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
        ax.set_title(f"{mode}: {mode_caption(mode, st)}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Tokens/s by engine: {', '.join(data['models'])} ({layers_label(data['layers'])})\n"
                 f"{m['cpu']}, {m['cores']} cores; batch 1, threads {st['threads'] or 'all'}, "
                 f"{st['repeats']} interleaved round(s) x {st['seconds']} s", fontsize=9)
    fig.text(0.5, 0.005, "bar: median; whiskers: min–max over the rounds; label: median and speedup over dense "
             "in the same engine (same rounds)", ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    made = []
    fig = tokens_by_artifact_figure(results)
    if fig is not None:
        save_figure(fig, out / "tokens_by_artifact.png", made)
    fig = tradeoff_figure(results)
    if fig is not None:
        save_figure(fig, out / "tradeoff.png", made)
    paper_figures(results, out, made)
    return made


def _flash_attention_lines(st: dict) -> list[str]:
    """Where llama.cpp ran with flash attention (benchmark.llamacpp_flash_attention), when it ran at all."""
    if not any(engine_facts(e).runs_gguf for e in st.get("engines", [])):
        return []
    if "llamacpp_flash_attention" not in st:
        return ["- llama.cpp flash attention: not recorded (results made before benchmark.llamacpp_flash_attention: "
                "off in decode and prefill, llama.cpp's own default, auto, in batch)"]
    on = [m for m in st["modes"] if m in st["llamacpp_flash_attention"]]
    off = [m for m in st["modes"] if m not in on]
    return [f"- llama.cpp flash attention: on in {', '.join(on) or 'no mode'}; off in {', '.join(off) or 'no mode'} "
            "(benchmark.llamacpp_flash_attention: the peer at its best per mode)"]


def render(results: dict, command: str | None = None) -> str:
    m, st = results["machine"], results["settings"]
    ds = m.get("deepsparse") or {}
    lines = ["# Throughput benchmark", ""]
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    lines += [f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}",
              (f"- DeepSparse detects: instruction set `{ds.get('isa')}`, VNNI {ds.get('vnni')}, "
               f"{ds.get('physical_cores')} physical cores" if ds else "- DeepSparse: not measured"),
              *llamacpp_build_lines(m.get("llamacpp")),  # beside DeepSparse's ISA: the peer's instruction sets
              *_flash_attention_lines(st),
              f"- settings: context (sequence length) {st['sequence_length']}, prefill "
              f"{', '.join(map(str, sorted(set(st.get('prefill_lengths') or [st['prefill_length']]))))} tokens, "
              f"threads {st['threads'] or 'all'}, warm-up {st['warmup_seconds']} s, {st['seconds']} s per measurement, "
              f"{st['repeats']} interleaved rounds, each measurement in its own process",
              "- decode = one new token with the KV cache holding `sequence length - 1` tokens; "
              "prefill = the prompt into an empty cache; both batch 1"
              + (f"; batch-N = decode for N sequences at once (N = {', '.join(map(str, sorted(set(st['batch_sizes']))))}"
                 "), each with its own cache of `sequence length - 1` tokens, tokens/s counting all N"
                 if "batch" in st["modes"] else "")]
    lines.append(f"- when a row is called faster: {RULE}")
    ov = m.get("openvino") or m.get("openvino-sparse")
    if ov:
        lines.append(f"- OpenVINO {ov.get('version')} reports: `{ov.get('device')}`, capabilities "
                     f"{', '.join(ov.get('capabilities', []))}; AMX {ov.get('amx')} (its sparse INT8 kernels need it)")
    if results.get("partial"):
        lines += ["", f"**Partial results: {results['partial']}.** Figures below use what was measured."]
    for f in results.get("failures", []):
        lines += [f"- failed: {f['engine']} {f['mode']} on {f['artifact']} (round {f['round']}): {f['error']}"]
    for block in (tradeoff_table(results), weights_table(results), paper_table(results), fit_table(results), _equal_speed(results),
                  llamacpp_table(results), crossover_table(results), workload_table(results),
                  openvino_table(results),
                  *(cells_table(results, mode) for mode in measured_modes(results))):
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
