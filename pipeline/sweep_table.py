"""A sweep's table (pipeline/sweep.py): SWEEP/sweep.json, SWEEP/sweep.md and SWEEP/perplexity_vs_sparsity.png.

One row per grid point: its values, method, sparsity (asked for and achieved), the dense and pruned
perplexities, and what each of its stages did (ran / skipped / copied from another point). Where
``prune.sparsity`` is on the grid, the table opens with the paper's Table 1 shape: one line per value of the
other grid keys (the method, say), one column per sparsity, the dense perplexity above. The plot
draws pruned perplexity against the achieved sparsity, one line per method, the dense perplexity as a
dashed line.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.common.outputs import figure_png, write_bytes_atomic, write_json_atomic, write_text_atomic

JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "sweep.json", "sweep.md", "perplexity_vs_sparsity.png"


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(table: dict) -> str:
    rows = table["points"]
    dataset = next((r["dataset"] for r in rows if r["dataset"]), None)
    lines = [f"# Sweep of {table['recipe']}", "",
             "grid: " + "; ".join(f"`{key}` = {', '.join(values)}" for key, values in table["grid"].items())]
    if table["overrides"]:
        lines.append("with: " + " ".join(f"`--set {o}`" for o in table["overrides"]))
    lines += ["", f"perplexity on {dataset or 'the evaluation text'}; one run folder per point", ""]
    lines += pivot(table)
    also = list(dict.fromkeys(t for r in rows for t in r.get("perplexity_also") or {}))
    heads = "".join(f" {t}: dense | {t}: pruned |" for t in also)
    lines += ["| point | method | sparsity | achieved | dense perplexity | perplexity |" + heads +
              " prune s | stages | run folder |", "|---|---|---|---|---|---|" + "---|---|" * len(also) + "---|---|---|"]
    for r in rows:
        stages = "; ".join(f"{name} {status.split(' ')[0]}" for name, status in r["stages"].items())
        cells = "".join(f" {_number(((r.get('perplexity_also') or {}).get(t) or {}).get('dense'))} | "
                        f"{_number(((r.get('perplexity_also') or {}).get(t) or {}).get('pruned'))} |" for t in also)
        lines.append(f"| {r['point']} | {r['method']} | {r['sparsity']} | {_number(r['sparsity_achieved'], 4)} | "
                     f"{_number(r['perplexity_dense'])} | {_number(r['perplexity'])} |{cells} "
                     f"{_number(r.get('prune_seconds'), 0)} | {stages} | {r['run_dir']} |")
    failures = table.get("failures") or []  # a Ray sweep runs every point; those that failed are listed here
    if failures:
        lines += [""] + [f"- failed: {f['point']}: {f['error']}" for f in failures]
    noise = [r["noise"] for r in rows if r.get("noise") is not None]
    if noise:
        lines += ["", f"noise: the standard error of a point's mean loss over its windows is {min(noise):.4f} to "
                      f"{max(noise):.4f} (a perplexity factor of x{math.exp(max(noise)):.3f} at most); the points "
                      "share their windows, so their differences are far less noisy than that"]
    return "\n".join(lines) + "\n\n![perplexity vs sparsity](" + PLOT_FILE + ")\n"


SPARSITY_KEY = "prune.sparsity"


def pivot(table: dict) -> list[str]:
    """Table 1's shape: a line per value of the other grid keys, a column per sparsity (perplexity and the
    fraction of zeros achieved); nothing where the sparsity is not on the grid."""
    sparsities = table["grid"].get(SPARSITY_KEY)
    if not sparsities:
        return []
    others = [key for key in table["grid"] if key != SPARSITY_KEY]
    cells: dict[tuple, dict[str, dict]] = {}
    for r in table["points"]:
        line = tuple(r["values"][key] for key in others)
        cells.setdefault(line, {})[r["values"][SPARSITY_KEY]] = r
    dense = sorted({r["perplexity_dense"] for r in table["points"] if r["perplexity_dense"] is not None})
    heads = [key.rsplit(".", 1)[-1] for key in others] or ["pruned"]
    lines = ["| " + " | ".join(heads) + " | " + " | ".join(sparsities) + " |",
             "|" + "---|" * (len(heads) + len(sparsities))]
    if len(dense) == 1:
        lines.append("| dense" + " |" * len(heads) + f" {dense[0]:.3f}" + " |" * len(sparsities))
    for line, by_sparsity in cells.items():
        row = [f"{_number((by_sparsity.get(s) or {}).get('perplexity'))} "
               f"({_number((by_sparsity.get(s) or {}).get('sparsity_achieved'), 4)})" if s in by_sparsity else ""
               for s in sparsities]
        lines.append("| " + " | ".join(line or ("pruned",)) + " | " + " | ".join(row) + " |")
    return lines + ["", "cells: perplexity (fraction of zeros achieved over the pruned projections)", ""]


def render_plot(table: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table["points"] if r["perplexity"] is not None and r["sparsity_achieved"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in rows}):
        points = sorted((r["sparsity_achieved"], r["perplexity"], r["sparsity"]) for r in rows if r["method"] == method)
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        for x, y, spec in points:
            ax.annotate(spec, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
    dense = {r["perplexity_dense"] for r in table["points"] if r["perplexity_dense"] is not None}
    if len(dense) == 1:
        ax.axhline(dense.pop(), linestyle="--", color="grey", label="dense")
    ax.set_xlabel("sparsity achieved (over the pruned projections)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"Sweep of {Path(table['recipe']).name}")
    if rows:
        ax.legend(fontsize=7)
    return figure_png(fig)


def write_table(table: dict, sweep_dir: Path) -> list[Path]:
    sweep_dir = Path(sweep_dir)
    write_json_atomic(sweep_dir / JSON_FILE, table)
    write_text_atomic(sweep_dir / MARKDOWN_FILE, render_markdown(table))
    write_bytes_atomic(sweep_dir / PLOT_FILE, render_plot(table))
    return [sweep_dir / JSON_FILE, sweep_dir / MARKDOWN_FILE, sweep_dir / PLOT_FILE]
