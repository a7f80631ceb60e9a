"""quantize: RUN/artifact -> RUN/artifact-int8 (export/quantize.py), perplexity of both artifacts in each engine that
runs one of their graphs (export/engine_perplexity.py), the INT8 graph's greedy decode compared with the float one's
in each engine; RUN/quantize.json."""

from __future__ import annotations

import logging
from pathlib import Path

from export.graph_formats import GRAPHS
from export.perplexity_agreement import TOLERANCE, beyond, gap
from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.resources import BASE, Shapes, engine_unheld
from pipeline.stages.stage import Context, Stage

log = logging.getLogger(__name__)


def greedy_agreement(a: list[int], b: list[int]) -> dict:
    """How far two greedy decodes of one prompt agree: tokens equal position by position, and the common prefix."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {"tokens": max(len(a), len(b)), "equal": same, "fraction": same / max(len(a), len(b), 1),
            "common_prefix": prefix}


def unheld_engines(source: Path, engines) -> dict[str, dict]:
    """{engine: why its greedy check is not run} for the engines this machine cannot hold the float artifact in
    (the INT8 artifact is smaller)."""
    from export.artifact import open_artifact

    manifest, skipped = open_artifact(source), {}
    for engine in engines:
        why = engine_unheld(source, engine, manifest)
        if why:
            skipped[engine] = why
            log.warning("quantize: greedy check and engine perplexity in %s %s", engine, why["skipped"])
    return skipped


def perplexities(result: dict, recipe, source: Path, target: Path, tokens, bos: int | None, skipped: dict,
                 progress: bool) -> None:
    """``result["perplexity_by_engine"]``: both artifacts' perplexity in each exported graph's own engine
    (export/engine_perplexity.py); ``result["perplexity"]``: the reference, the ONNX Runtime graph (else DeepSparse's
    graph run in ONNX Runtime); ``result["perplexity_openvino"]``: OpenVINO's figures, as earlier runs wrote them.
    An engine that cannot hold the float artifact here is skipped, and one that fails is recorded as failed: the
    figure is missing, the INT8 artifact stays."""
    from export.engine_perplexity import engine_perplexity
    from export.onnx_perplexity import artifact_perplexity
    from pipeline.common.errors import PipelineError

    ev = recipe.evaluation
    pairs = (("float", source), ("int8", target))
    by_engine: dict[str, dict] = {}
    for graph in recipe.export.engines:
        entry = by_engine[graph] = {"dataset": ev.dataset, "graph": graph, "engine": GRAPHS[graph].engine}
        if graph in skipped and GRAPHS[graph].deployed_engine:  # its engine would hold its own copy of the weights
            entry["skipped"] = skipped[graph]["skipped"]
            continue
        try:
            for name, folder in pairs:
                entry[name] = engine_perplexity(folder, graph, tokens, ev.context_length, ev.max_windows, progress,
                                                bos, stage="quantize (perplexity)")
        except PipelineError as exc:
            entry["failed"] = str(exc)
            log.warning("quantize: perplexity in %s of the %s graph failed: %s", entry["engine"], graph, exc)
            continue
        log.info("perplexity of the %s graph in %s: float %.3f, INT8 %.3f", graph, entry["engine"],
                 entry["float"]["perplexity"], entry["int8"]["perplexity"])
    reference = "onnxruntime" if "onnxruntime" in recipe.export.engines else recipe.export.engines[0]
    own = by_engine[reference]
    if GRAPHS[reference].deployed_engine or "float" not in own:  # computed apart from the runtime: run it there
        own = {name: artifact_perplexity(folder, tokens, ev.context_length, ev.max_windows, reference, progress, bos)
               for name, folder in pairs}
    result["perplexity"] = {"dataset": ev.dataset, "graph": reference, "run_in": GRAPHS[reference].runtime,
                            "float": own["float"], "int8": own["int8"]}
    result["perplexity_by_engine"] = by_engine
    if "float" in by_engine.get("openvino", {}):
        result["perplexity_openvino"] = by_engine["openvino"]
    for graph, entry in by_engine.items():
        for name in ("float", "int8"):
            if beyond(entry.get(name), result["perplexity"][name]):
                log.warning("perplexity of the %s %s graph in %s is %+.1f%% off its %s figure (tolerance %.0f%%)",
                            name, graph, entry["engine"], 100 * gap(entry[name], result["perplexity"][name]),
                            result["perplexity"]["run_in"], 100 * TOLERANCE)


def engine_perplexities(artifact: Path) -> dict[str, dict]:
    """{engine: perplexity} the quantize stage recorded for RUN/artifact or RUN/artifact-int8, each computed by
    that engine (export/engine_perplexity.py); empty when it recorded none."""
    artifact = Path(artifact)
    which = {"artifact": "float", "artifact-int8": "int8"}.get(artifact.name)
    path = artifact.parent / "quantize.json"
    if which is None or not path.is_file():
        return {}
    recorded = read_json(path, "").get("perplexity_by_engine") or {}
    return {entry["engine"]: {"dataset": entry["dataset"], "measured_in": entry["engine"], **entry[which]}
            for entry in recorded.values() if which in entry}


def run(ctx: Context) -> None:
    """RUN/artifact -> RUN/artifact-int8 (export/quantize.py), then greedy decodes of both compared per engine."""
    import numpy as np
    from transformers import AutoTokenizer

    from export.engines import generation_spec, run_engine
    from export.artifact import disk_bytes
    from export.quantize import quantize_artifact
    from pipeline.core.data import evaluation_tokens, mixed_calibration_windows

    recipe, run_dir, q, cal = ctx.recipe, ctx.run_dir, ctx.recipe.quantize, ctx.recipe.calibration
    ctx.models.release()
    source, target = run_dir / "artifact", run_dir / "artifact-int8"
    tokenizer = AutoTokenizer.from_pretrained(source / recipe.export.engines[0])
    windows = mixed_calibration_windows(tokenizer, cal.texts(), q.num_samples, q.seq_len, cal.seed, cal.path,
                                        ctx.bos_token_id("calibration", tokenizer)).numpy()
    prompt = tokenizer(recipe.export.smoke_prompt, return_tensors="np").input_ids
    skipped = unheld_engines(source, recipe.export.engines) if q.check_tokens or q.perplexity else {}
    specs = {engine: generation_spec(engine, recipe.export.smoke_prompt, q.check_tokens,
                                     min(recipe.export.max_sequence_length, 256))
             for engine in recipe.export.engines if engine not in skipped} if q.check_tokens else {}
    # the float artifact's greedy decode, before quantizing (the INT8 one is compared with it)
    greedy = {engine: {"float": run_engine(engine, source, "quantize (greedy check)", **spec)["ids"]}
              for engine, spec in specs.items()}
    # teacher-forced check: both graphs read prompt + float greedy continuation; from the prompt's last
    # position on, each position's next token is one step of the float decode (len(first) steps)
    first = next(iter(greedy.values()))["float"] if greedy else []
    check = np.concatenate([prompt, np.asarray([first[:-1]], dtype=prompt.dtype)], 1) if first else prompt
    manifest = quantize_artifact(source, target, q.scheme, windows, check,
                                 metadata={"recipe_hash": recipe.content_hash()},
                                 smoothing_strength=q.smoothing_strength,
                                 check_from=prompt.shape[1] - 1 if first else 0, lm_head=q.lm_head,
                                 share=recipe.export.share_weights, outlier_fraction=q.outlier_fraction,
                                 smooth_split=q.outlier_smoothing, embedding_int8=q.embedding_int8)
    result = {"path": str(target), "scheme": q.scheme, "lm_head": q.lm_head, "smoothing_strength": q.smoothing_strength,
              "outlier_fraction": manifest["quantization"]["outlier_fraction"], "outlier_smoothing": q.outlier_smoothing,
              "quantize_seconds": manifest["quantize_seconds"],
              "bytes": sum(f["bytes"] for f in manifest["files"].values()), "disk_bytes": disk_bytes(target),
              "engines": {e: {k: i[k] for k in ("logits_max_abs_diff_vs_float", "shared_weights", "top1_agreement_vs_float",
                                                 "int8_zeros", "pruned_zeros_kept", "quantized_matmuls", "smoothing",
                                                 "weights", "logits_max_abs_diff_vs_onnxruntime",
                                                 "top1_agreement_vs_onnxruntime")
                              if k in i}  # smoothing: only with smoothing_strength; the last three: openvino
                          for e, i in manifest["engines"].items()}}
    for engine, why in skipped.items() if q.check_tokens else ():
        result["engines"][engine]["greedy_vs_float"] = why
    if first:
        result["top1_agreement_meaning"] = (f"fraction of the {len(first)} steps of the float artifact's greedy decode "
                                            "at which the INT8 graph picks the same token (same prefix)")
    ev = recipe.evaluation
    if (q.perplexity or q.agreement_windows) and ev.enabled:
        bos = ctx.bos_token_id("evaluation", tokenizer)
        tokens = evaluation_tokens(tokenizer, ev.dataset, ev.path, bos_per_window=bos is not None)
    if q.agreement_windows and ev.enabled:
        from export.onnx_perplexity import top1_agreement

        for engine in recipe.export.engines:
            text = top1_agreement(source, target, tokens, ev.context_length, q.agreement_windows, engine, bos)
            result["engines"][engine]["top1_agreement_on_text"] = text
            log.info("%s graph: INT8 predicts the float graph's next token at %.1f%% of %d positions of %s text "
                     "(teacher-forced)", engine, 100 * text["fraction"], text["positions"], ev.dataset)
    if q.perplexity and ev.enabled:
        perplexities(result, recipe, source, target, tokens, bos, skipped, ctx.progress)
    for engine, ids in greedy.items():
        ids["int8"] = run_engine(engine, target, "quantize (greedy check)", **specs[engine])["ids"]
        result["engines"][engine]["greedy_vs_float"] = greedy_agreement(ids["float"], ids["int8"])
        top1 = result["engines"][engine].get("top1_agreement_vs_float")  # none for openvino (made from onnxruntime's)
        log.info("%s: %sfree-running, the two decodes are equal at %d of %d positions", engine,
                 f"INT8 picks the float greedy token at {100 * top1:.0f}% of {len(first)} steps (same prefix); "
                 if top1 is not None else "", result["engines"][engine]["greedy_vs_float"]["equal"], len(ids["float"]))
    write_json_atomic(run_dir / "quantize.json", result)


def summary(recipe, run_dir: Path) -> dict:
    return {"quantize": read_json(run_dir / "quantize.json", "re-run the recipe with --from quantize")}


def report(summary: dict) -> list[str]:
    from export.schemes import SCHEMES

    quant = summary["quantize"]
    scheme = SCHEMES.get(quant["scheme"])
    which = scheme.about if scheme else f"scheme {quant['scheme']}"
    which += "; LM head INT8 (quantize.lm_head)" if quant.get("lm_head") else "; LM head float32"
    shared = (quant["engines"].get("onnxruntime") or {}).get("shared_weights") or {}
    size = (f"{quant['disk_bytes'] / 2**20:.1f} MiB on disk (the two graphs share one weights file: "
            f"{shared['shared_bytes'] / 2**20:.1f} MiB, hard-linked; {quant['bytes'] / 2**20:.1f} MiB counted per name)"
            if shared.get("hard_link") and "disk_bytes" in quant else f"{quant['bytes'] / 2**20:.1f} MiB")
    lines = [f"## INT8 artifact ({quant['scheme']})", "",
             f"`{quant['path']}`: {size}, quantized in {quant['quantize_seconds']:.1f} s. "
             f"INT8: {which}; weights {scheme.weights if scheme else 'int8'}, activations "
             f"{scheme.activations if scheme else 'uint8'}. Every pruned zero is still exactly 0.", "",
             "| engine | quantized MatMuls | INT8 zeros | top-1 on text vs float (teacher-forced) "
             "| top-1 along the float greedy decode (teacher-forced) | max abs logit diff "
             "| free-running greedy tokens equal to float |", "|---|---|---|---|---|---|---|"]
    for engine, info in quant["engines"].items():
        greedy = info.get("greedy_vs_float")
        text = ("–" if not greedy else greedy["skipped"] if "skipped" in greedy
                else f"{greedy['equal']}/{greedy['tokens']} (common prefix {greedy['common_prefix']})")
        on_text = info.get("top1_agreement_on_text")
        on_text = f"{on_text['fraction']:.3f} of {on_text['positions']} positions" if on_text else "–"
        made_from = GRAPHS[engine].made_from
        if made_from:  # OpenVINO's IR was made from the INT8 onnxruntime graph and checked against it
            w = info["weights"]
            lines.append(f"| {engine} (the {made_from} graph) | {w['int8_weights']} | {w['zeros_in_checked_weights']:.4f} | "
                         f"{on_text} | – | {info.get('logits_max_abs_diff_vs_onnxruntime', float('nan')):.3f} vs "
                         f"ONNX Runtime's INT8 graph | {text} |")
            continue
        lines.append(f"| {engine} | {info['quantized_matmuls']} | {info['int8_zeros']:.4f} | {on_text} | "
                     f"{info['top1_agreement_vs_float']:.3f} | {info['logits_max_abs_diff_vs_float']:.3f} | {text} |")
    lines += ["", "Top-1 on text: both graphs read the same evaluation windows (run in ONNX Runtime); at each "
              "position, does INT8 predict the float graph's next token? Along the greedy decode: the same on the "
              "smoke prompt followed by the float graph's own greedy continuation."]
    qp = quant.get("perplexity")
    if qp:
        lines += ["", f"Perplexity of the {qp['graph']} graphs ({qp['dataset']}, {qp['int8']['windows']} windows of "
                  f"{qp['int8']['context_length']} tokens, ONNX Runtime): float {qp['float']['perplexity']:.3f}, "
                  f"INT8 {qp['int8']['perplexity']:.3f}."]
    ov = quant.get("perplexity_openvino")
    if ov:
        lines += ["", f"The same in OpenVINO (CPU plugin; the INT8 graph as OpenVINO runs it, INT8 kernels): float "
                  f"{ov['float']['perplexity']:.3f}, INT8 {ov['int8']['perplexity']:.3f}."]
    return lines + engine_table(quant)


def engine_table(quant: dict) -> list[str]:
    """Each graph's perplexity computed by its own engine, a line above the table for each figure that leaves the
    reference by more than the tolerance."""
    by_engine, ref = quant.get("perplexity_by_engine"), quant.get("perplexity")
    if not by_engine or not ref:
        return []
    off = [f"the {name} {graph} graph in {e['engine']} {e[name]['perplexity']:.3f} ({100 * gap(e[name], ref[name]):+.1f}%)"
           for graph, e in by_engine.items() for name in ("float", "int8") if beyond(e.get(name), ref[name])]
    lines = ["", "### Perplexity in each engine", ""]
    if off:
        lines += [f"**Engines disagree** by more than {100 * TOLERANCE:.0f}% with the reference (the {ref['graph']} "
                  f"graph in {ref.get('run_in', ref['graph'])}: float {ref['float']['perplexity']:.3f}, INT8 "
                  f"{ref['int8']['perplexity']:.3f}): {'; '.join(off)}.", ""]
    lines += ["Each graph's perplexity computed by the engine that runs it (same windows and loss as every "
              "perplexity; DeepSparse: its engine, one static window at a time, no KV cache).", "",
              "| graph | engine | float | INT8 | note |", "|---|---|---|---|---|"]
    for graph, e in by_engine.items():
        cells = [f"{e[name]['perplexity']:.3f}" if name in e else "–" for name in ("float", "int8")]
        compiled = (e.get("float") or {}).get("fraction_of_supported_ops")
        note = e.get("skipped") or e.get("failed") or (f"{compiled:.0%} of the graph compiled by the engine"
                                                        if compiled is not None else "")
        lines.append(f"| {graph} | {e['engine']} | {cells[0]} | {cells[1]} | {note} |")
    return lines


def estimate(shapes: Shapes, recipe) -> tuple[int, int]:
    """RAM: the float graph is never held whole. Weights are read, smoothed, quantized and written one tensor at a
    time, a block of rows at a time (export/graph_tensors.py), and ONNX Runtime runs on its mapping of the weights
    file (page cache, given back under pressure), so the peak is the largest tensor read and its changed copy,
    plus one evaluation window's logits when perplexity runs, not the depth (32-layer LLaMA-2-7B shapes, LM head
    INT8: 2.20 GiB anonymous measured, 2.22 estimated). Disk: the INT8 weights written (a quarter of the float
    ones; down_proj and the embedding stay float)."""
    largest = max(shapes.vocab, shapes.intermediate) * shapes.hidden * 4
    perplexity = recipe.quantize.perplexity and recipe.evaluation.enabled
    window = recipe.evaluation.context_length * shapes.vocab * 4 * 3 if perplexity else 0
    return BASE + int(2.5 * largest) + window, int(shapes.params * 4 * 0.6)


STAGE = Stage(name="quantize", about="INT8 artifact from the float artifact",
              sections=("model", "calibration", "prune", "export", "quantize", "evaluation"),
              outputs=("artifact-int8", "quantize.json"), reads=("export",), applies=lambda r: r.quantize.enabled,
              estimate=estimate, run=run, summary=summary, report=report)
