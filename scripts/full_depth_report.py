"""The full-depth table from scripts/full_depth.py's per-depth results: measured cells, the depth fit, the
32-layer figures (measured where the artifact ran, fitted where it could not be held) and the paper's beside them.

Each depth was one interleaved benchmark run, so the speedups at a depth are paired by round; figures of
different depths come from different runs of the same session on the same machine.
"""

from __future__ import annotations

import re
from pathlib import Path

from scripts.full_depth import PAPER
from scripts.shapes import LLAMA2_7B_LAYERS
from benchmarks.stats import depth_fit, extrapolate, summarize
from pipeline.common.outputs import figure_png, read_json, write_bytes_atomic, write_json_atomic, write_text_atomic

NAMES = ("dense", "dass-50", "dass-70")
LABELS = {"dense": "dense", "dass-50": "DaSS 50%", "dass-70": "DaSS 70%"}
GiB = 2**30


def load(results_dir: Path) -> list[dict]:
    """Each depth's results, with ``folder`` (where its runs' summaries were copied) added."""
    runs = [{**read_json(p, "run scripts.full_depth bench first"), "folder": str(p.parent)}
            for p in sorted(Path(results_dir).glob("depth*/results.json"), key=lambda p: (int(re.match(r"depth(\d+)", p.parent.name).group(1)), p))]
    if not runs:
        raise SystemExit(f"no depth*/results.json under {results_dir}: run `python -m scripts.full_depth bench` first")
    return runs


def _stage(run_dir: Path, name: str, stage: str) -> dict | None:
    path = run_dir / f"{name}_summary.json"
    if not path.is_file():
        return None
    return read_json(path, "").get("resources", {}).get(stage)


def _decode_cells(summary: dict) -> list[dict]:
    """A run's DeepSparse decode cells, from its summary (benchmarks/stats.py)."""
    return [c for c in summary["cells"] if (c["engine"], c["mode"]) == ("deepsparse", "decode")]


def dense_by_depth(results: dict) -> dict[int, dict]:
    """DeepSparse decode of the dense artifacts of one run, by depth: tokens/s spread and median ms."""
    return {c["layers"]: {"tokens_per_s": c["tokens_per_s"], "ms_median": c["ms_median"]}
            for c in _decode_cells(summarize(results)) if c["method"] == "none"}


def table(runs: list[dict], results_dir: Path, target: int = LLAMA2_7B_LAYERS, dense_run: dict | None = None) -> dict:
    """Every number the report shows (pure arithmetic over the runs' measurements). ``dense_run``: one interleaved
    run of the dense artifacts of several depths; the dense fit then comes from it alone (one run, no drift
    between depths), and the fit through the per-depth runs' dense cells is kept beside it for comparison."""
    measured: dict[str, dict[int, dict]] = {}
    speedups: dict[str, dict[int, dict]] = {}
    resources = []
    machines = []
    for results in runs:
        depth = results["artifacts"][0]["layers"]
        machines.append({"depth": depth, **results["machine"]})
        run_dir = Path(results.get("folder") or Path(results_dir) / f"depth{depth}")
        summary = summarize(results)
        for c in _decode_cells(summary):
            measured.setdefault(c["name"], {})[depth] = {
                "tokens_per_s": c["tokens_per_s"], "ms_median": c["ms_median"], "sparsity": c["sparsity"]}
            resources.append({"depth": depth, "name": c["name"], "prune": _stage(run_dir, c["name"], "prune"),
                              "export": _stage(run_dir, c["name"], "export")})
        names = {a["key"]: a["name"] for a in results["artifacts"]}
        for s in summary["speedups"]:  # over dense of the same depth, paired by round within the run
            if (s["engine"], s["vs"], s["mode"]) == ("deepsparse", "deepsparse", "decode"):
                speedups.setdefault(names[s["artifact"]], {})[depth] = s
        resources.append({"depth": depth, "name": "DeepSparse benchmark (all models of this depth)",
                          "engine": results.get("engine_peak_memory")})
    fits = {}
    for name, by_depth in measured.items():
        shallow = sorted(d for d in by_depth if d < target)
        if len(shallow) >= 2:
            fit = depth_fit(shallow, [by_depth[d]["ms_median"] for d in shallow])
            fits[name] = {"fit": fit, **extrapolate(fit, target)}
    dense_alone = None
    if dense_run:
        dense_alone = dense_by_depth(dense_run)
        depths = sorted(d for d in dense_alone if d < target)
        fit = depth_fit(depths, [dense_alone[d]["ms_median"] for d in depths])
        if "dense" in fits:
            fits["dense (per-depth runs)"] = fits["dense"]
        fits["dense"] = {"fit": fit, **extrapolate(fit, target), "source": "one interleaved dense-only run"}
    at_target = {}
    for name in NAMES:
        m = measured.get(name, {}).get(target)
        f = fits.get(name)
        if m:
            at_target[name] = {"tokens_per_s": m["tokens_per_s"]["median"], "how": "measured",
                               "range": m["tokens_per_s"], "fitted": f["tokens_per_s"] if f else None}
        elif f:
            source = f" of {f['source']}" if f.get("source") else ""
            at_target[name] = {"tokens_per_s": f["tokens_per_s"],
                               "how": f"fitted over depths {f['fit']['depths']}{source}", "fitted": f["tokens_per_s"]}
    dense = at_target.get("dense")
    for name, cell in at_target.items():
        cell["speedup"] = cell["tokens_per_s"] / dense["tokens_per_s"] if dense and name != "dense" else None
        if dense and name != "dense" and cell.get("fitted"):
            cell["speedup_fitted"] = cell["fitted"] / dense["fitted"]
    per_layer = {name: fits["dense"]["fit"]["per_layer_ms"] / f["fit"]["per_layer_ms"]
                 for name, f in fits.items() if not name.startswith("dense") and "dense" in fits}
    return {"target_layers": target, "measured": measured, "dense_run": dense_alone, "speedups": speedups, "fits": fits,
            "at_target": at_target, "per_layer_speedup": per_layer, "resources": resources, "machines": machines}


def runs_dense_command(t: dict) -> str:
    return t.get("dense_run_command") or "python -m scripts.paper_table run ..."


def _gib(b) -> str:
    return f"{b / GiB:.2f} GiB" if b else "–"


def _seconds(stage: dict) -> str:
    return f"{stage['seconds']:.0f}" if stage.get("seconds") else "–"


def _peak(stage: dict) -> str:
    """Measured peak RSS, and the preflight's estimate beside it."""
    if not stage.get("peak_rss_bytes"):
        return "–"
    est = stage.get("estimated_ram_bytes")
    return _gib(stage["peak_rss_bytes"]) + (f" (estimate {est / GiB:.2f})" if est else "")


def render(t: dict, runs: list[dict]) -> str:
    target = t["target_layers"]
    depths = sorted({d for by in t["measured"].values() for d in by})
    m0 = runs[0]["machine"]
    ds = m0.get("deepsparse", {})
    st = runs[0]["settings"]
    lines = ["# The paper's CPU table at full depth (LLaMA-2-7B shapes, DeepSparse decode)", "",
             "Made by (each depth one interleaved benchmark run):", "", "```",
             *[r["command"] for r in runs], "python -m scripts.full_depth report ...", "```", "",
             f"- machine: {m0['cpu']}, {m0['cores']} cores, {m0['memory_gib']} GiB RAM; DeepSparse detects instruction "
             f"set `{ds.get('isa')}`, VNNI {ds.get('vnni')}, {ds.get('physical_cores')} physical cores",
             f"- decode: one new token with {st['sequence_length'] - 1} cached tokens, batch 1, float32, "
             f"{st['repeats']} interleaved rounds of {st['seconds']} s after {st['warmup_seconds']} s warm-up, "
             "each measurement in its own process",
             "- models: LLaMA-2-7B's exact shapes, random float16 weights (scripts/shapes.py), DaSS on attention + "
             "MLP with 4 x 128 calibration tokens, exported by `pipeline run` (streaming prune, bounded-memory export)",
             "", f"## Tokens/s (median, min–max over rounds)", "",
             "| model | paper (24-core Xeon 8160, LLaMA-2-7B) | " +
             " | ".join(f"{d} layers{' (measured)' if d != target else ''}" for d in depths if d != target) +
             f" | {target} layers | how the {target}-layer cell was obtained |",
             "|---|---|" + "---|" * len([d for d in depths if d != target]) + "---|---|"]
    for name in NAMES:
        if name not in t["measured"] and name not in t["at_target"]:
            continue
        paper = PAPER[name] / PAPER["dense"]
        cells = []
        for d in depths:
            if d == target:
                continue
            m = t["measured"].get(name, {}).get(d)
            s = t["speedups"].get(name, {}).get(d)
            if not m:
                cells.append("–")
                continue
            tp = m["tokens_per_s"]
            rr = s["per_round"] if s else None
            sp = f" **{s['ratio']:.2f}x** (rounds {rr['min']:.2f}–{rr['max']:.2f})" if s and rr else ""
            cells.append(f"{tp['median']:.2f} ({tp['min']:.2f}–{tp['max']:.2f}){sp}")
        c = t["at_target"].get(name)
        if c:
            val = f"{c['tokens_per_s']:.2f}"
            if c["how"] == "measured":
                val += f" ({c['range']['min']:.2f}–{c['range']['max']:.2f})"
            if c.get("speedup"):
                val += f" **{c['speedup']:.2f}x**"
            how = c["how"] + (f"; the {target}-layer fit says {c['fitted']:.2f}" if c["how"] == "measured" and c.get("fitted") else "")
        else:
            val, how = "–", "not measured"
        lines.append(f"| {LABELS[name]} | {PAPER[name]:.2f}" + ("" if name == "dense" else f" ({paper:.2f}x)") +
                     f" | {' | '.join(cells)} | {val} | {how} |")
    lines += ["", "Speedups at a depth are over dense of the same depth in the same interleaved run (ratio of medians; "
              f"rounds: the range of the per-round paired ratios). At {target} layers the dense float32 model (27 GB) "
              "does not fit in this machine's RAM, so its cell is fitted, and the speedup there is measured sparse over "
              "fitted dense.", "", "## Depth fit (ms per token = fixed + layers x per-layer)", "",
              "| model | fixed ms | per-layer ms | depths | max residual ms | per-layer speedup over dense | "
              f"{target} layers fitted tokens/s | {target} layers measured |", "|---|---|---|---|---|---|---|---|"]
    for name, f in t["fits"].items():
        fit = f["fit"]
        m = t["measured"].get(name, {}).get(target)
        pl = t["per_layer_speedup"].get(name)
        got = f"{m['tokens_per_s']['median']:.2f} ({m['tokens_per_s']['median'] / f['tokens_per_s']:.2f} of the fit)" if m else "–"
        lines.append(f"| {LABELS.get(name, name)} | {fit['fixed_ms']:.1f} | {fit['per_layer_ms']:.2f} | "
                     f"{', '.join(map(str, fit['depths']))} | {fit['max_residual_ms']:.2f} | "
                     f"{f'{pl:.2f}x' if pl else '–'} | {f['tokens_per_s']:.2f} | {got} |")
    if t.get("dense_run"):
        cells = ", ".join(f"{d} layers {v['tokens_per_s']['median']:.2f} ({v['tokens_per_s']['min']:.2f}–"
                          f"{v['tokens_per_s']['max']:.2f})" for d, v in sorted(t["dense_run"].items()))
        lines += ["", f"The dense fit comes from one interleaved run of the dense artifacts alone ({cells} tokens/s; "
                  f"`{runs_dense_command(t)}`), so no drift between runs enters the fit; the fit through the dense "
                  "cells of the per-depth runs, which the machine's drift bends, is the row 'dense (per-depth runs)'."]
    lines += ["", "## Memory and time per run", "",
              "| depth | model | prune s | prune peak RSS | export s | export peak RSS | DeepSparse peak RSS | DeepSparse "
              "peak anonymous memory |", "|---|---|---|---|---|---|---|---|"]
    for r in t["resources"]:
        p, e, g = r.get("prune") or {}, r.get("export") or {}, r.get("engine") or {}
        lines.append(f"| {r['depth']} | {r['name']} | {_seconds(p)} | {_peak(p)} | {_seconds(e)} | {_peak(e)} | "
                     f"{_gib(g.get('rss_bytes'))} | {_gib(g.get('anonymous_bytes'))} |")
    lines += ["", "Engine memory: the largest sum over the benchmark's child processes (one DeepSparse process at a "
              "time), sampled every 0.5 s; anonymous = RSS less file-backed pages (the weights file DeepSparse maps is "
              "page cache the kernel can drop).", ""]
    return "\n".join(lines)


def plot(t: dict, runs: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = t["target_layers"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for name, colour in zip(NAMES, ("tab:gray", "tab:blue", "tab:orange")):
        by = t["dense_run"] if name == "dense" and t.get("dense_run") else t["measured"].get(name, {})
        shallow = sorted(d for d in by if d != target)
        if shallow:
            ax.plot(shallow, [by[d]["ms_median"] for d in shallow], "o", color=colour, label=f"{LABELS[name]} measured")
        f = t["fits"].get(name)
        if f:
            ax.plot([0, target], [f["fit"]["fixed_ms"], f["ms"]], "--", color=colour, lw=1, label=f"{LABELS[name]} fit")
        if target in by:
            ax.plot([target], [by[target]["ms_median"]], "*", ms=14, color=colour,
                    label=f"{LABELS[name]} measured at {target}")
    ax.set_xlabel("decoder layers")
    ax.set_ylabel("ms per decoded token (median)")
    ax.legend(fontsize=7)
    ax.set_title("DeepSparse decode time vs depth", fontsize=9)
    names = [n for n in NAMES if n != "dense" and n in t["at_target"] and t["at_target"][n].get("speedup")]
    x = range(len(names))
    paper = bx.bar([i - 0.2 for i in x], [PAPER[n] / PAPER["dense"] for n in names], 0.4,
                   label="paper (Xeon 8160, 24 cores)", color="tab:gray")
    ours = bx.bar([i + 0.2 for i in x], [t["at_target"][n]["speedup"] for n in names], 0.4,
                  label=f"ours, {target} layers (sparse {', '.join(sorted({t['at_target'][n]['how'].split(' over')[0] for n in names}))}"
                        f" / dense {t['at_target']['dense']['how'].split(' over')[0] if 'dense' in t['at_target'] else '–'})",
                  color="tab:blue")
    for bars in (paper, ours):
        bx.bar_label(bars, fmt="%.2fx", fontsize=8)
    bx.set_xticks(list(x), [LABELS[n] for n in names])
    bx.set_ylabel("decode speedup over dense")
    bx.set_ylim(0, 1.35 * max([PAPER[n] / PAPER["dense"] for n in names] + [t["at_target"][n]["speedup"] for n in names]
                              + [1.0]))
    bx.legend(fontsize=7, loc="upper left")
    bx.set_title(f"speedup at {target} layers", fontsize=9)
    m, st = runs[0]["machine"], runs[0]["settings"]
    fig.suptitle(f"LLaMA-2-7B shapes, random weights; {m['cpu']}, {m['cores']} cores; batch 1, "
                 f"{st['sequence_length'] - 1} cached tokens, {st['repeats']} rounds x {st['seconds']} s", fontsize=8)
    return fig


def write_full_depth_report(results_dir: Path, dest: Path, dense_run: Path | None = None) -> list[str]:
    runs = load(results_dir)
    dense = read_json(Path(dense_run) / "results.json", "give the folder of a finished benchmark") if dense_run else None
    t = table(runs, results_dir, dense_run=dense)
    if dense:
        t["dense_run_command"] = dense.get("command")
    dest.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest / "report.md", render(t, runs))
    write_json_atomic(dest / "results.json", {"table": t, "runs": runs, "dense_run": dense})
    write_bytes_atomic(dest / "full_depth.png", figure_png(plot(t, runs)))
    return ["report.md", "results.json", "full_depth.png"]
