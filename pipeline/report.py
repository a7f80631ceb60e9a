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
    return "\n".join(lines) + "\n"
