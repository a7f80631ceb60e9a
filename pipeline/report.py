"""Renders summary.json as Markdown. It only formats numbers a run wrote; it computes nothing."""

from __future__ import annotations

ROLE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")


def _ppl(entry: dict | None) -> str:
    return f"{entry['perplexity']:.3f}" if entry else "–"


def render_report(summary: dict) -> str:
    lines = [f"# Run `{summary['recipe']}`", "",
             f"- model: `{summary['model']}`",
             f"- method: **{summary['method']}**, sparsity **{summary['sparsity']}**, scope {summary['scope']}"
             + (f", alpha {summary['alpha']}" if summary.get("alpha") is not None else "")]
    cal = summary.get("calibration")
    if cal:
        lines.append(f"- calibration: {cal['dataset']}, {cal['num_samples']} x {cal['seq_len']} tokens, seed {cal['seed']}")
    if summary.get("prune_seconds") is not None:
        lines.append(f"- pruning time: {summary['prune_seconds']:.1f} s; whole run {summary['seconds']:.1f} s")
    ppl = summary.get("perplexity") or {}
    if ppl:
        first = ppl.get("pruned") or ppl.get("dense")
        lines += ["", f"## Perplexity ({ppl['dataset']}, {first['windows']} windows of {first['context_length']} tokens)", "",
                  "| model | perplexity |", "|---|---|"]
        if "dense" in ppl:
            lines.append(f"| dense | {_ppl(ppl['dense'])} |")
        if "pruned" in ppl:
            lines.append(f"| {summary['method']} {summary['sparsity']} | {_ppl(ppl['pruned'])} |")
    achieved = summary.get("sparsity_achieved")
    if achieved:
        lines += ["", "## Sparsity achieved", "", f"Overall over the pruned projections: **{achieved['overall']:.4f}** "
                  f"of {achieved['pruned_parameters']:,} weights.", "", "| projection | mean sparsity |", "|---|---|"]
        roles = sorted(achieved["by_role"], key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else 99)
        lines += [f"| {r} | {achieved['by_role'][r]:.4f} |" for r in roles]
        lines += ["", "Per-layer figures: `pruned/sparsity.json`."]
    ex = summary.get("export")
    if ex:
        lines += ["", "## Artifact", "", f"`{ex['path']}`: {ex['bytes'] / 2**20:.1f} MiB, exported in {ex['export_seconds']:.1f} s; "
                  f"sparsity of the decoder linears read back from the ONNX file: {ex['sparsity_in_onnx']:.4f}.", "",
                  "| engine | max abs logit difference vs PyTorch | smoke-test generation |", "|---|---|---|"]
        for engine, diff in ex["logits_max_abs_diff"].items():
            text = (ex.get("smoke") or {}).get(engine, {}).get("text", "–").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {engine} | {diff:.2e} | {text} |")
        lines += ["", "Load it with `deepsparse.TextGeneration(model_path=\"<artifact>/deepsparse\")` or "
                  "`ORTModelForCausalLM.from_pretrained(\"<artifact>/onnxruntime\")`, or `pipeline generate <artifact> \"prompt\"`."]
    quant = summary.get("quantize")
    if quant:
        lines += ["", f"## INT8 artifact ({quant['scheme']})", "",
                  f"`{quant['path']}`: {quant['bytes'] / 2**20:.1f} MiB, quantized in {quant['quantize_seconds']:.1f} s. "
                  "Decoder linears INT8 (weights symmetric per tensor, activations static); every pruned zero "
                  "is still exactly 0.", "",
                  "| engine | quantized MatMuls | INT8 zeros | top-1 on the check prompt vs float | max abs logit diff "
                  "| greedy tokens equal to float |", "|---|---|---|---|---|---|"]
        for engine, info in quant["engines"].items():
            greedy = info.get("greedy_vs_float")
            text = f"{greedy['equal']}/{greedy['tokens']} (common prefix {greedy['common_prefix']})" if greedy else "–"
            lines.append(f"| {engine} | {info['quantized_matmuls']} | {info['int8_zeros']:.4f} | "
                         f"{info['top1_agreement_vs_float']:.3f} | {info['logits_max_abs_diff_vs_float']:.3f} | {text} |")
        qp = quant.get("perplexity")
        if qp:
            lines += ["", f"Perplexity of the {qp['graph']} graphs ({qp['dataset']}, {qp['int8']['windows']} windows of "
                      f"{qp['int8']['context_length']} tokens, ONNX Runtime): float {qp['float']['perplexity']:.3f}, "
                      f"INT8 {qp['int8']['perplexity']:.3f}."]
    bench = summary.get("benchmark")
    if bench:
        lines += ["", "## Throughput", "", "Median tokens/s of this artifact (batch 1, float32; details, every "
                  "measurement and plots in `benchmark/report.md`):", "", "| engine, mode | tokens/s |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in bench["tokens_per_s"].items()]
        for x in bench["speedups"]:
            lines.append(f"- {x['engine']} {x['mode']} vs {x['vs']} on `{x['dense']}` (dense): **{x['ratio']:.2f}x**")
        if bench.get("partial"):
            lines.append(f"- partial: {bench['partial']}")
        if bench.get("failures"):
            lines.append(f"- {bench['failures']} measurement(s) failed; see `benchmark/report.md`")
    stages = summary.get("stages")
    if stages:
        lines += ["", "## Stages (this invocation)", "", "| stage | status |", "|---|---|"]
        lines += [f"| {name} | {status} |" for name, status in stages.items()]
    return "\n".join(lines) + "\n"
