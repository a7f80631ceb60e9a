"""Formatting shared by the benchmark report's sections (benchmarks/report.py, paper.py, peers.py, tradeoff.py):
numbers, artifact labels, and the labelling and writing of figures."""

from __future__ import annotations

from pathlib import Path

from benchmarks.verdict import entry_verdict
from pipeline.common.outputs import figure_png, write_bytes_atomic


def layers_label(n: int) -> str:
    return f"{n} layer" + ("s" if n != 1 else "")


def tps(s: dict) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def ratio(entry: dict | None) -> str:
    """A paired comparison as the report writes it: the ratio of medians, the range of the per-round paired ratios,
    and the verdict of benchmarks/verdict.py (faster / slower / within noise / fewer than 3 rounds)."""
    if not entry:
        return "–"
    pr = entry.get("per_round")
    rounds = f", rounds {pr['min']:.2f}–{pr['max']:.2f}" if pr and pr["n"] > 1 else ""
    return f"{entry['ratio']:.2f}x{rounds}, {entry_verdict(entry)}"


def sparsity_label(a: dict) -> str:
    if "gguf_type" in a:
        return f"dense, GGUF {a['gguf_type']}"
    if a["method"] in ("none", "none+int8"):
        return a["method"].replace("none", "dense")
    req = a["requested_sparsity"]
    return f"{a['method']} {req:.0%}" if isinstance(req, float) else f"{a['method']} {req}"


def save_figure(fig, path: Path, made: list[str]) -> None:
    """Lay out and write a figure atomically; record its file name in ``made``."""
    write_bytes_atomic(path, figure_png(fig))
    made.append(path.name)


def finish_figure(fig, ax, ylabel: str, title: str, path: Path, made: list[str]) -> None:
    """Label a one-axes plot and write it."""
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    save_figure(fig, path, made)


def plot_context(results: dict) -> str:
    """The line every plot carries: models, CPU, settings."""
    m, st = results["machine"], results["settings"]
    models = sorted({a.get("model") or a["name"] for a in results["artifacts"]})
    return (f"{', '.join(models)}; {m['cpu']}, {m['cores']} cores\nbatch 1, context {st['sequence_length']}, threads "
            f"{st['threads'] or 'all'}, {st['repeats']} interleaved round(s) x {st['seconds']} s")


def prompt_length(mode: str, settings: dict) -> int | None:
    """The prompt length of a measured mode: ``prefill-L`` -> L, ``prefill`` -> prefill_length, else None."""
    if mode.startswith("prefill-"):
        return int(mode.split("-", 1)[1])
    return settings["prefill_length"] if mode == "prefill" else None


def batch_size(mode: str) -> int | None:
    """The sequences of a measured batch mode: ``batch-N`` -> N, else None."""
    return int(mode.split("-", 1)[1]) if mode.startswith("batch-") else None


def measured_modes(results: dict) -> list[str]:
    """The mode labels the cells hold, in the settings' order: decode, then prefill by prompt length, batch by size."""
    present = {c["mode"] for c in results["summary"]["cells"]}
    order = {m: i for i, m in enumerate(results["settings"]["modes"])}
    return sorted(present, key=lambda m: (order.get(m.split("-")[0], 99),
                                          prompt_length(m, results["settings"]) or batch_size(m) or 0))


def mode_caption(mode: str, settings: dict) -> str:
    """What one step of a mode is, for titles and column heads."""
    if mode == "decode":
        return f"1 new token, {settings['sequence_length'] - 1} cached"
    if batch_size(mode):
        return f"{batch_size(mode)} sequences x 1 new token, {settings['sequence_length'] - 1} cached each"
    return f"{prompt_length(mode, settings)}-token prompt"
