"""Renders summary.json as Markdown: the run's identity, each stage's own section (pipeline/stages/, in run
order), the stages' status. It only formats numbers a run wrote; it computes nothing."""

from __future__ import annotations

from benchmarks.verdict import MIN_ROUNDS, verdict
from pipeline.stages import STAGES


def render_report(summary: dict) -> str:
    # the method's parameters (prune.<method>); summaries written before had only DaSS's alpha, flat
    options = summary.get("method_options") or ({"alpha": summary["alpha"]} if summary.get("alpha") is not None else {})
    lines = [f"# Run `{summary['recipe']}`", ""]
    if summary.get("command"):  # what made it (its last invocation), before anything it measured
        lines += ["```", summary["command"], "```", ""]
    lines += [f"- model: `{summary['model']}`",
             f"- method: **{summary['method']}**, sparsity **{summary['sparsity']}**, scope {summary['scope']}"
             + "".join(f", {key} {value}" for key, value in options.items())]
    if summary.get("seconds") is not None:
        lines.append(f"- whole run: {summary['seconds']:.1f} s")
    lines += summary_block(summary)
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


VARIANTS = {"dense": "dense", "pruned": "pruned", "int8": "pruned INT8"}


def _mib(summary: dict, key: str) -> str | None:
    """An artifact's size on disk (a hard-linked weights file once), from its stage's summary."""
    entry = summary.get(key) or {}
    size = entry.get("disk_bytes") or entry.get("bytes")
    return f"{size / 2**20:.1f} MiB" if size else None


def summary_block(summary: dict) -> list[str]:
    """The run at a glance: sparsity, perplexity dense -> pruned (-> INT8), tokens/s dense -> pruned -> INT8 per
    engine with the speedups the benchmark stage computed, artifact sizes. Formats what the stages wrote."""
    lines = []
    achieved = summary.get("sparsity_achieved")
    if achieved:
        onnx = (summary.get("export") or {}).get("sparsity_in_onnx")
        lines.append(f"- sparsity achieved: **{achieved['overall']:.4f}** of the pruned projections"
                     + (f" ({onnx:.4f} of all decoder linears, read back from the ONNX file)" if onnx is not None else ""))
    ppl = summary.get("perplexity") or {}
    steps = [f"{name} {ppl[k]['perplexity']:.3f}" for k, name in (("dense", "dense"), ("pruned", "pruned")) if k in ppl]
    qp = (summary.get("quantize") or {}).get("perplexity")
    if qp:
        steps.append(f"INT8 {qp['int8']['perplexity']:.3f} (its float graph: {qp['float']['perplexity']:.3f}; "
                     f"{qp['graph']} graph, {qp['int8']['windows']} windows)")
    if steps:
        lines.append(f"- perplexity ({ppl.get('dataset') or qp['dataset']}): " + " → ".join(steps))
    acc = summary.get("accuracy") or {}
    measured = [(key, name) for key, name in (("dense", "dense"), ("pruned", "pruned"), ("artifact", "artifact"))
                if key in acc]
    if measured:
        tasks = acc["settings"]["tasks"]
        means = []
        for key, name in measured:
            values = [acc[key]["tasks"][t]["acc"] for t in tasks if "acc" in acc[key]["tasks"].get(t, {})]
            if len(values) == len(tasks):
                means.append(f"{name} {sum(values) / len(values):.4f}")
        what = f"acc on {tasks[0]}" if len(tasks) == 1 else f"mean acc of {len(tasks)} tasks"
        if means:
            lines.append(f"- task accuracy ({what}, {acc['settings']['num_fewshot']}-shot): " + " → ".join(means))
    sizes = [f"{name} {_mib(summary, key)}" for key, name in (("export_dense", "dense"), ("export", "pruned"),
                                                               ("quantize", "INT8")) if _mib(summary, key)]
    if sizes:
        lines.append("- artifact size on disk: " + " → ".join(sizes))
    bench = summary.get("benchmark") or {}
    rows = bench.get("by_variant") or []
    if rows:
        roles = [r for r in VARIANTS if r in bench["variants"]]
        st = bench["settings"]
        lines += ["", f"Tokens/s on {bench['machine']} ({bench['cores']} cores), batch 1, context {st['sequence_length']}, "
                  + (f"prefill {st['prefill_length']} tokens, " if "prefill" in st["modes"] else "")
                  + f"{st['repeats']} interleaved round(s) of {st['seconds']} s; "
                  "median (min–max), speedup over dense in the same engine from the same rounds (ratio of medians; "
                  f"faster / slower only where every one of at least {MIN_ROUNDS} rounds is above / below 1, else "
                  "within noise):", "",
                  "| engine | mode | " + " | ".join(VARIANTS[r] for r in roles) + " |", "|---|---|" + "---|" * len(roles)]
        for row in rows:
            cells = []
            for role in roles:
                v = row.get(role)
                if not v:
                    cells.append("–")
                    continue
                t = v["tokens_per_s"]
                text = f"{t['median']:.2f} ({t['min']:.2f}–{t['max']:.2f})"
                if v.get("speedup_vs_dense"):
                    text += f" **{v['speedup_vs_dense']:.2f}x** {verdict(v.get('speedup_per_round'))}"
                cells.append(text)
            lines.append(f"| {row['engine']} | {row['mode']} | " + " | ".join(cells) + " |")
        if bench.get("partial"):
            lines.append(f"\nPartial benchmark: {bench['partial']}.")
    return (["", "## Summary", ""] + lines) if lines else []


def _gib(value) -> str:
    return f"{value / 2**30:.2f}" if isinstance(value, (int, float)) and value else "—"


def _resources(resources: dict) -> list[str]:
    """Wall time and peak RSS of each stage when it last ran (child processes included), beside the estimate."""
    if not resources:
        return []
    lines = ["", "## Resources per stage (when each last ran)", "",
             "Peak RSS: this process (kernel high-water mark, reset per stage) and the whole process tree with the "
             "engines' child processes (sampled every 0.1 s); the estimate is the preflight's, for this process (an "
             "engine runs in a child process, and only where the machine can hold what it loads). RSS includes the "
             "pages of a mapped weights file (page cache, given back under memory pressure); anonymous memory "
             "(sampled) is what the machine must hold.", "",
             "| stage | wall time (s) | peak RSS, tree (GiB) | this process (GiB) | children (GiB) "
             "| peak anonymous, this process / tree (GiB) | estimate (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in resources.items():
        seconds = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "—"
        lines.append(f"| {name} | {seconds} | {_gib(r.get('peak_rss_bytes'))} | {_gib(r.get('peak_rss_self_bytes'))} "
                     f"| {_gib(r.get('peak_rss_children_bytes'))} | {_gib(r.get('peak_anon_self_bytes'))} / "
                     f"{_gib(r.get('peak_anon_bytes'))} "
                     f"| {_gib(r.get('estimated_ram_bytes'))} |")
    return lines
