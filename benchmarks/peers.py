"""The report's sections on the engines users pick instead: each artifact against the dense model's GGUFs in
llama.cpp, the crossover (from which prompt length on an artifact overtakes a GGUF), and OpenVINO with its sparse
weights decompression asked against without."""

from __future__ import annotations

from benchmarks.engines import ENGINE_NAMES, GGUF_ENGINE
from benchmarks.report_format import batch_size, measured_modes, prompt_length, ratio, sparsity_label, tps
from benchmarks.verdict import entry_verdict, first_win


def llamacpp_table(results: dict) -> list[str]:
    """Each ONNX artifact against the dense model's GGUFs in llama.cpp: tokens/s ratio (same rounds), and the
    GGUF's perplexity where it was measured (the artifacts' own perplexities are in the run's report.md)."""
    rows = results["summary"].get("vs_llamacpp") or []
    if not rows:
        return []
    arts = {a["key"]: a for a in results["artifacts"]}
    cells = {(c["artifact"], c["engine"], c["mode"]): c for c in results["summary"]["cells"]}
    lines = ["## Against llama.cpp (the dense model as GGUF)", "",
             "Ratio: the artifact in that engine over the GGUF in llama.cpp (ratio of medians, same interleaved "
             "rounds, with the range of the per-round paired ratios); verdict: by the rule above.", "",
             "| mode | artifact | method | engine | tokens/s | GGUF | llama.cpp tokens/s | GGUF perplexity | ratio | "
             "verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mine, peer = cells[(r["artifact"], r["engine"], r["mode"])], cells[(r["gguf"], GGUF_ENGINE, r["mode"])]
        ppl = (arts[r["gguf"]].get("perplexity") or {}).get("perplexity")
        lines.append(f"| {r['mode']} | {r['artifact']} | {sparsity_label(arts[r['artifact']])} | "
                     f"{ENGINE_NAMES[r['engine']]} | {tps(mine['tokens_per_s'])} | {r['gguf_type']} | "
                     f"{tps(peer['tokens_per_s'])} | {f'{ppl:.3f}' if ppl else '–'} | {ratio(r)} | "
                     f"{entry_verdict(r)} |")
    return lines


def openvino_table(results: dict) -> list[str]:
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
                     f"{r.get('sparse_matmuls')} | {ratio(r)} |")
    return lines


def crossover(entries: dict[str, dict], settings: dict) -> str:
    """From which measured prompt length, and from which batch size, on the artifact is faster by the rule of
    benchmarks/verdict.py (every round's paired ratio above 1), from ``entries`` (rows with ``ratio`` and
    ``per_round``) by mode label; decode (batch 1) is where both start and does not count."""
    verdicts = {m: entry_verdict(e) for m, e in entries.items()}
    prompts = sorted((prompt_length(m, settings), v) for m, v in verdicts.items() if prompt_length(m, settings))
    batches = sorted((batch_size(m), v) for m, v in verdicts.items() if batch_size(m))
    parts = ([first_win(prompts, "tokens", "at every measured length")] if prompts else []) + \
        ([f"batch: {first_win(batches, 'sequences', 'at every measured size')}"] if batches else [])
    return "; ".join(parts) or "–"


def crossover_table(results: dict) -> list[str]:
    """Per ONNX artifact and engine against each GGUF: the tokens/s ratio in every mode (same interleaved rounds),
    and the prompt length from which the artifact is faster. Only with two or more prefill lengths."""
    modes = measured_modes(results)
    if sum(m != "decode" for m in modes) < 2:
        return []
    rows: dict[tuple, dict[str, dict]] = {}
    for r in results["summary"].get("vs_llamacpp") or []:
        rows.setdefault((r["artifact"], r["engine"], r["gguf_type"]), {})[r["mode"]] = r
    if not rows:
        return []
    arts = {a["key"]: a for a in results["artifacts"]}
    lines = ["## Crossover: from which prompt length or batch size the artifact overtakes llama.cpp", "",
             "Ratio of tokens/s, the artifact in its engine over the GGUF in llama.cpp (same interleaved rounds; above "
             "1x the artifact is faster). Decode at batch 1 is the memory-bound regime; prefill (a prompt of L tokens "
             "is L rows through every linear) and batch-N decode (N sequences, one new token each: N rows) are the "
             "compute-bound ones, where the zeros a sparse kernel skips are work saved. Each cell: the ratio of "
             "medians and its verdict by the rule above; \"faster from\" is the smallest size from which every "
             "measured size is a verdict of faster.", "",
             "| artifact | engine | GGUF | " + " | ".join(modes) + " | faster from |",
             "|---|---|---|" + "---|" * len(modes) + "---|"]
    for (key, engine, gguf_type), entries in sorted(rows.items()):
        cells = " | ".join(f"{entries[m]['ratio']:.2f}x {entry_verdict(entries[m])}" if m in entries else "–"
                           for m in modes)
        lines.append(f"| {sparsity_label(arts[key])} | {ENGINE_NAMES[engine]} | {gguf_type} | {cells} | "
                     f"{crossover(entries, results['settings'])} |")
    return lines
