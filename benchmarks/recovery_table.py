"""The real model's Table 1 with recovery: every finished run under the given folders (a sweep's points, single
runs), as one table of method x reconstruction against sparsity pattern, each cell the perplexity's change
against dense on the same windows, on every evaluation text, beside what pruning cost.

    python -m benchmarks.recovery_table /work/runs/t1-50 /work/runs/t1-24 ... \
        --out benchmarks/results/qwen2.5-coder-1.5b/recovery --command "..."

Reads each run's summary.json, perplexity.json / perplexity_dense.json (per-window losses, for the paired noise)
and the prune stage's recorded cost (summary.json resources: wall time, peak RSS); computes nothing a run did not measure except those ratios.
Writes recovery.json, recovery.md and recovery.png (perplexity change by configuration, log axis).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from functools import partial
from pathlib import Path

from benchmarks.runner import cpu_name
from pipeline.common.outputs import figure_png, write_bytes_atomic, write_json_atomic, write_text_atomic
from pipeline.core.evaluate import paired_change
from pipeline.core.prune.options import BlockOptions

#: what the issue asks of a DaSS-family configuration: the largest perplexity ratio against dense, by pattern
TARGETS = {("0.5", "mlp"): 1.15, ("2:4", "mlp"): 1.35, ("0.7", "mlp"): 3.0, ("0.5", "attention+mlp"): 1.25}
DASS_FAMILY = ("dass", "dass_outlier")
DEFAULT_BLOCK_STEPS = BlockOptions().steps  # a run trained for another number of steps says so in its label
DEFAULT_BLOCK_TOKENS = BlockOptions().tokens  # ... and one trained on more (or fewer) tokens of each window


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_row(run: Path) -> dict | None:
    """One finished run's line, or None where it has no pruned perplexity yet."""
    summary = _read(run / "summary.json")
    pruned, dense = _read(run / "perplexity.json"), _read(run / "perplexity_dense.json")
    if not summary or not pruned or not dense or "pruned" not in pruned:
        return None
    texts = {pruned["dataset"]: (dense["dense"], pruned["pruned"])}
    for text, ppl in (pruned.get("also") or {}).items():
        if text in (dense.get("also") or {}):
            texts[text] = (dense["also"][text], ppl)
    cells = {}
    for text, (d, p) in texts.items():
        change = paired_change(d, p)
        cells[text] = {"dense": d["perplexity"], "pruned": p["perplexity"], "windows": p["windows"],
                       "ratio": p["perplexity"] / d["perplexity"],
                       "paired_standard_error": change["standard_error"] if change else None,
                       "window_nll": p.get("window_nll")}  # for the rules compared run against run
    record = summary.get("reconstruct") or {}
    prune_cost = (summary.get("resources") or {}).get("prune") or {}
    return {"run": str(run), "method": summary["method"], "sparsity": summary["sparsity"], "scope": summary["scope"],
            "allocation": (summary.get("allocation") or {}).get("scheme", "uniform"),
            "calibration": "+".join([(summary.get("calibration") or {}).get("dataset", "embedded"),
                                     *(summary.get("calibration") or {}).get("also", [])]),
            "calibration_windows": (summary.get("calibration") or {}).get("num_samples"),
            "reconstruct": record.get("mode", "none"), "block": record.get("block"),
            "block_seconds": record.get("block_seconds"),
            "sparsity_achieved": (summary.get("sparsity_achieved") or {}).get("overall"),
            "prune_seconds": summary.get("prune_seconds"),
            "prune_peak_rss_gib": (prune_cost["peak_rss_bytes"] / 2**30) if prune_cost.get("peak_rss_bytes") else None,
            "texts": cells}


def collect(folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        for summary in sorted(Path(folder).rglob("summary.json")):
            row = run_row(summary.parent)
            if row:
                rows.append(row)
    return rows


def pattern(row: dict) -> str:
    scope = "" if row["scope"] == "mlp" else " attn+MLP"
    alloc = "" if row["allocation"] == "uniform" else f" {row['allocation']}"
    return f"{row['sparsity']}{scope}{alloc}"


def usual_windows(rows: list[dict]) -> int | None:
    """The number of calibration windows most runs used; a run with another number says its own in its label."""
    counts = Counter(r.get("calibration_windows") for r in rows if r.get("calibration_windows"))
    return counts.most_common(1)[0][0] if counts else None


def block_steps(row: dict) -> int | None:
    """The block training's steps per layer the run recorded (None where it recorded no block settings)."""
    return (row.get("block") or {}).get("steps")


def block_tokens(row: dict) -> int | None:
    """The tokens of each window the block training read (prune.block.tokens; None: whole windows, or, where the
    run recorded no block settings, the default)."""
    return (row.get("block") or {}).get("tokens", DEFAULT_BLOCK_TOKENS)


def config(row: dict, usual: int | None = None) -> str:
    calibration = "" if row.get("calibration", "embedded") == "embedded" else f", calibrated on {row['calibration']}"
    windows = row.get("calibration_windows")
    if usual and windows and windows != usual:
        calibration += f", {windows} calibration windows"
    if "block" in row["reconstruct"]:
        steps, tokens = block_steps(row), block_tokens(row)
        if steps and steps != DEFAULT_BLOCK_STEPS:
            calibration += f", block {steps} steps"
        if tokens != DEFAULT_BLOCK_TOKENS:
            calibration += " on whole windows" if tokens is None else f" on {tokens} tokens a window"
    return row["method"] + ("" if row["reconstruct"] == "none" else f" + {row['reconstruct']}") + calibration


def _cell(entry: dict | None) -> str:
    if not entry:
        return ""
    return f"{entry['pruned']:.3f} ({(entry['ratio'] - 1) * 100:+.0f}%)"


def verdict(entry: dict, limit: float) -> str:
    """Whether a cell meets a target ratio against dense, and whether two paired standard errors of its mean loss
    change reach across the target (then the windows cannot tell, and the verdict says so)."""
    ratio, se = entry["ratio"], entry.get("paired_standard_error") or 0.0
    margin = math.exp(2 * se)
    if ratio <= limit:
        return "(met)" if ratio * margin <= limit else f"(met, within the noise: x{margin:.3f} at two standard errors)"
    return "(not met)" if ratio / margin > limit else f"(not met, within the noise: x{margin:.3f} at two standard errors)"


def rule_lines(rows: list[dict], texts: list[str]) -> list[str]:
    """Which pruning rule wins once every rule gets the same weight update: runs that differ in the method alone
    (same pattern, reconstruction, calibration text and windows), the best on the first text against each other,
    as the paired ratio of their perplexities on the same windows with its standard error."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (pattern(r), r["reconstruct"], r.get("calibration"), r.get("calibration_windows"), block_steps(r),
               block_tokens(r))
        groups.setdefault(key, []).append(r)
    main = texts[0] if texts else None
    table, winners, decisive = [], set(), True
    for (pat, reconstruct, *_), group in groups.items():
        group = [r for r in group if main in r["texts"]]
        if len({r["method"] for r in group}) < 2:
            continue
        best = min(group, key=lambda r: r["texts"][main]["ratio"])
        for other in (r for r in group if r["method"] != best["method"]):
            cells = []
            for text in texts:
                a, b = best["texts"].get(text), other["texts"].get(text)
                change = paired_change(a, b) if a and b else None
                if change is None:  # not measured on this text: "on every text" cannot be said
                    cells.append("")
                    decisive = False
                    continue
                z = change["nll_difference"] / change["standard_error"] if change["standard_error"] else math.inf
                decisive = decisive and z > 2
                cells.append(f"x{change['ratio']:.3f} " + (f"({z:.1f} standard errors)" if math.isfinite(z)
                                                           else "(the same on every window)"))
            table.append(f"| {pat} | {reconstruct} | {best['method']} | {other['method']} | "
                         + " | ".join(cells) + " |")
            winners.add(best["method"])
    if not table:
        return []
    lines = ["## Which rule wins under the same weight update", "",
             "Runs that differ in the pruning rule alone (same pattern, reconstruction and calibration): the better "
             f"one on {main}, and the other's perplexity against it on the same windows (paired ratio; the mean loss "
             "difference in paired standard errors).", "",
             "| pattern | reconstruction | better rule | against | " + " | ".join(texts) + " |",
             "|---|---|---|---|" + "---|" * len(texts)]
    lines += table
    lines.append("")
    if len(winners) == 1 and decisive:
        lines.append(f"In every pair measured, {next(iter(winners))} is the better rule on every text, each by more "
                     "than two standard errors.")
    else:
        lines.append("The better rule depends on the pattern or reconstruction (above), or some margins are within two "
                     "standard errors.")
    return lines + [""]


def render(rows: list[dict], command: str | None, cpu: str, notes: dict[str, str] | None = None) -> str:
    """``notes``: a word on the cost of the runs under a folder (by the folder's name), e.g. where it ran."""
    notes = notes or {}
    usual = usual_windows(rows)
    label = partial(config, usual=usual)
    texts = list(dict.fromkeys(t for r in rows for t in r["texts"]))
    patterns = list(dict.fromkeys(pattern(r) for r in sorted(rows, key=lambda r: (r["scope"], r["sparsity"]))))
    configs = list(dict.fromkeys(label(r) for r in rows))
    lines = ["# Qwen2.5-Coder-1.5B: Table 1 with recovery", ""]
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    lines += [f"CPU: {cpu}. Each cell is one `pipeline` run (MLP only unless it says attn+MLP), perplexity on 512-token "
              "windows, and in brackets its change against the dense model on the same windows.", ""]
    for text in texts:
        dense = sorted({round(r["texts"][text]["dense"], 4) for r in rows if text in r["texts"]})
        windows = sorted({r["texts"][text]["windows"] for r in rows if text in r["texts"]})
        lines += [f"## {text} ({', '.join(map(str, windows))} windows; dense {', '.join(f'{d:.3f}' for d in dense)})", "",
                  "| method + reconstruction | " + " | ".join(patterns) + " |", "|---|" + "---|" * len(patterns)]
        for c in configs:
            cells = []
            for p in patterns:
                hit = [r for r in rows if label(r) == c and pattern(r) == p and text in r["texts"]]
                cells.append(_cell(hit[0]["texts"][text]) if hit else "")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        noise = [r["texts"][text]["paired_standard_error"] for r in rows
                 if text in r["texts"] and r["texts"][text]["paired_standard_error"] is not None]
        if noise:
            lines += ["", f"Noise: the paired standard error of a cell's mean loss change against dense is "
                          f"{min(noise):.4f} to {max(noise):.4f} (a perplexity factor of at most "
                          f"x{math.exp(2 * max(noise)):.3f} at two standard errors); the evaluation is deterministic, "
                          "so the same run twice gives the same figure."]
        lines.append("")
    lines += rule_lines(rows, texts)
    lines += ["## Targets (asked of a DaSS-family configuration)", "",
              "| pattern | target | best DaSS-family configuration | its change | best of any method | its change |",
              "|---|---|---|---|---|---|"]
    main = texts[0] if texts else None
    for (sparsity, scope), limit in TARGETS.items():
        here = [r for r in rows if r["sparsity"] == sparsity and r["scope"] == scope and main in r["texts"]]
        family = [r for r in here if r["method"] in DASS_FAMILY]
        best_family = min(family, key=lambda r: r["texts"][main]["ratio"], default=None)
        best_any = min(here, key=lambda r: r["texts"][main]["ratio"], default=None)
        name = f"{sparsity} {'MLP' if scope == 'mlp' else 'attn+MLP'}"
        lines.append(f"| {name} | {(limit - 1) * 100:+.0f}% | "
                     + (f"{label(best_family)} ({best_family['allocation']}) | "
                        f"{(best_family['texts'][main]['ratio'] - 1) * 100:+.1f}% "
                        f"{verdict(best_family['texts'][main], limit)}"
                        + "".join(f"; {text} {(entry['ratio'] - 1) * 100:+.0f}%"
                                  for text, entry in best_family["texts"].items() if text != main)
                        if best_family else "not run | ")
                     + " | " + (f"{label(best_any)} | {(best_any['texts'][main]['ratio'] - 1) * 100:+.1f}%"
                                if best_any else "not run | ") + " |")
    lines += ["", "## Cost of pruning", "",
              "| run | pattern | prune s | of which block s | prune peak RSS GiB | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        rss = f"{r['prune_peak_rss_gib']:.2f}" if r["prune_peak_rss_gib"] else "–"
        block = f"{r['block_seconds']:.0f}" if r.get("block_seconds") is not None else "–"
        note = next((text for folder, text in notes.items() if folder in Path(r["run"]).parts), "")
        lines.append(f"| {label(r)} | {pattern(r)} | {r['prune_seconds']:.0f} | {block} | {rss} | {note} |")
    return "\n".join(lines) + "\n\n![perplexity change by configuration](recovery.png)\n"


def plot(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = next(iter(rows[0]["texts"])) if rows else None
    usual = usual_windows(rows)
    label = partial(config, usual=usual)
    patterns = list(dict.fromkeys(pattern(r) for r in sorted(rows, key=lambda r: (r["scope"], r["sparsity"]))))
    configs = list(dict.fromkeys(label(r) for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(configs), 1)
    for i, c in enumerate(configs):
        xs, ys = [], []
        for j, p in enumerate(patterns):
            hit = [r for r in rows if label(r) == c and pattern(r) == p and main in r["texts"]]
            if hit:
                xs.append(j + i * width)
                ys.append((hit[0]["texts"][main]["ratio"] - 1) * 100)
        ax.bar(xs, ys, width=width, label=c)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(patterns))], patterns)
    ax.set_yscale("log")
    ax.set_ylabel(f"perplexity increase over dense, % ({main}, log)")
    ax.set_title("Qwen2.5-Coder-1.5B: pruning with and without reconstruction")
    ax.legend(fontsize=7)
    return figure_png(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", help="the commands that made the runs, printed at the top")
    parser.add_argument("--note", action="append", default=[], metavar="FOLDER=TEXT",
                        help="a word on the cost of the runs in a folder of that name (e.g. another CPU instance)")
    parser.add_argument("--cpu", help="the CPU(s) the runs ran on, where not all on this machine's (default: its "
                                      "model name)")
    args = parser.parse_args(argv)
    notes = dict(n.split("=", 1) for n in args.note)
    rows = collect(args.folders)
    if not rows:
        raise SystemExit("no finished run under " + ", ".join(map(str, args.folders)))
    cpu = args.cpu or cpu_name()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "recovery.json", {"cpu": cpu, "command": args.command, "notes": notes, "rows": rows})
    write_text_atomic(args.out / "recovery.md", render(rows, args.command, cpu, notes))
    write_bytes_atomic(args.out / "recovery.png", plot(rows))
    print((args.out / "recovery.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
