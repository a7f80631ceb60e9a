"""Renders summary.json as Markdown: the run's identity, each stage's own section (pipeline/stages/, in run
order), the stages' status. It only formats numbers a run wrote; it computes nothing."""

from __future__ import annotations

from pipeline.stages import STAGES


def render_report(summary: dict) -> str:
    lines = [f"# Run `{summary['recipe']}`", "",
             f"- model: `{summary['model']}`",
             f"- method: **{summary['method']}**, sparsity **{summary['sparsity']}**, scope {summary['scope']}"
             + (f", alpha {summary['alpha']}" if summary.get("alpha") is not None else "")]
    if summary.get("seconds") is not None:
        lines.append(f"- whole run: {summary['seconds']:.1f} s")
    status = summary.get("stages") or {}
    for stage in STAGES:
        if stage.name in status:
            section = stage.report(summary)
            if section:
                lines += [""] + section
    if status:
        lines += ["", "## Stages (this invocation)", "", "| stage | status |", "|---|---|"]
        lines += [f"| {name} | {state} |" for name, state in status.items()]
    lines += _resources(summary.get("resources") or {})
    return "\n".join(lines) + "\n"


def _gib(value) -> str:
    return f"{value / 2**30:.2f}" if isinstance(value, (int, float)) and value else "—"


def _resources(resources: dict) -> list[str]:
    """Wall time and peak RSS of each stage when it last ran (child processes included), beside the estimate."""
    if not resources:
        return []
    lines = ["", "## Resources per stage (when each last ran)", "",
             "Peak RSS: this process (kernel high-water mark, reset per stage) and the whole process tree with the "
             "engines' child processes (sampled every 0.1 s); the estimate is the preflight's.", "",
             "| stage | wall time (s) | peak RSS, tree (GiB) | this process (GiB) | children (GiB) | estimate (GiB) |",
             "|---|---|---|---|---|---|"]
    for name, r in resources.items():
        seconds = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "—"
        lines.append(f"| {name} | {seconds} | {_gib(r.get('peak_rss_bytes'))} | {_gib(r.get('peak_rss_self_bytes'))} "
                     f"| {_gib(r.get('peak_rss_children_bytes'))} | {_gib(r.get('estimated_ram_bytes'))} |")
    return lines
