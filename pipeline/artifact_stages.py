"""The stages that work on the exported artifact: export, quantize, benchmark.

Each takes the run's Context (pipeline/run.py), reads what it needs from the run folder, writes
its outputs atomically and returns nothing; pipeline/run.py orders them and records them complete.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipeline.data import calibration_windows, evaluation_tokens
from pipeline.errors import PipelineError
from pipeline.outputs import write_json_atomic
from pipeline.recipe import Recipe
from pipeline.stages import BY_NAME

if TYPE_CHECKING:
    from pipeline.run import Context

log = logging.getLogger(__name__)


def stage_export(ctx: Context) -> None:
    """Export the saved model as an artifact, then let each engine generate from it (child processes)."""
    from export.artifact import export_artifact
    from export.engines import generation_spec, run_engine

    recipe, run_dir, ex = ctx.recipe, ctx.run_dir, ctx.recipe.export
    # From disk, not from memory: a resumed run must export exactly what an uninterrupted one does.
    ctx.models.release()
    model, tokenizer = ctx.models.saved()
    sections = BY_NAME["export"].sections
    metadata = {"recipe": {k: v for k, v in recipe.model_dump(mode="json").items() if k in ("name", *sections)},
                "recipe_hash": recipe.content_hash(), "method": recipe.prune.method,
                "requested_sparsity": str(recipe.prune.sparsity), "scope": recipe.prune.scope}
    manifest = export_artifact(model, tokenizer, run_dir / "artifact", tuple(ex.engines), ex.max_sequence_length,
                               metadata=metadata, external_data=ex.external_data)
    ctx.models.release()  # the export cast it to float32 and switched its cache on
    result = {"path": str(run_dir / "artifact"), "export_seconds": manifest["export_seconds"],
              "bytes": sum(f["bytes"] for f in manifest["files"].values()),
              "sparsity_in_onnx": manifest["sparsity"]["overall_decoder_linears"],
              "logits_max_abs_diff": {e: i["logits_max_abs_diff_vs_pytorch"] for e, i in manifest["engines"].items()}}
    if ex.smoke_test:
        result["smoke"] = {}
        for engine in ex.engines:
            spec = generation_spec(engine, ex.smoke_prompt, ex.smoke_tokens, min(ex.max_sequence_length, 256))
            out = run_engine(engine, run_dir / "artifact", "export (smoke test)", **spec)
            result["smoke"][engine] = {"text": out["text"], "ids": out["ids"]}
            log.info("%s generated: %r", engine, out["text"])
    write_json_atomic(run_dir / "export.json", result)


def greedy_agreement(a: list[int], b: list[int]) -> dict:
    """How far two greedy decodes of one prompt agree: tokens equal position by position, and the common prefix."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {"tokens": max(len(a), len(b)), "equal": same, "fraction": same / max(len(a), len(b), 1),
            "common_prefix": prefix}


def stage_quantize(ctx: Context) -> None:
    """RUN/artifact -> RUN/artifact-int8 (export/quantize.py), then greedy decodes of both compared per engine."""
    import numpy as np
    from transformers import AutoTokenizer

    from export.engines import generation_spec, run_engine
    from export.quantize import quantize_artifact

    recipe, run_dir, q, cal = ctx.recipe, ctx.run_dir, ctx.recipe.quantize, ctx.recipe.calibration
    ctx.models.release()
    source, target = run_dir / "artifact", run_dir / "artifact-int8"
    tokenizer = AutoTokenizer.from_pretrained(source / recipe.export.engines[0])
    windows = calibration_windows(tokenizer, cal.dataset, q.num_samples, q.seq_len, cal.seed, cal.path).numpy()
    prompt = tokenizer(recipe.export.smoke_prompt, return_tensors="np").input_ids
    specs = {engine: generation_spec(engine, recipe.export.smoke_prompt, q.check_tokens,
                                     min(recipe.export.max_sequence_length, 256))
             for engine in recipe.export.engines} if q.check_tokens else {}
    # the float artifact's greedy decode, before quantizing (the INT8 one is compared with it)
    greedy = {engine: {"float": run_engine(engine, source, "quantize (greedy check)", **spec)["ids"]}
              for engine, spec in specs.items()}
    # teacher-forced check: both graphs read prompt + float greedy continuation; from the prompt's last
    # position on, each position's next token is one step of the float decode (len(first) steps)
    first = greedy[recipe.export.engines[0]]["float"] if greedy else []
    check = np.concatenate([prompt, np.asarray([first[:-1]], dtype=prompt.dtype)], 1) if first else prompt
    manifest = quantize_artifact(source, target, q.scheme, windows, check,
                                 metadata={"recipe_hash": recipe.content_hash()},
                                 smoothing_strength=q.smoothing_strength,
                                 check_from=prompt.shape[1] - 1 if first else 0)
    result = {"path": str(target), "scheme": q.scheme, "smoothing_strength": q.smoothing_strength,
              "quantize_seconds": manifest["quantize_seconds"],
              "bytes": sum(f["bytes"] for f in manifest["files"].values()),
              "engines": {e: {k: i[k] for k in ("logits_max_abs_diff_vs_float", "top1_agreement_vs_float",
                                                 "int8_zeros", "pruned_zeros_kept", "quantized_matmuls", "smoothing")
                              if k in i}  # smoothing: only with smoothing_strength
                          for e, i in manifest["engines"].items()}}
    if first:
        result["top1_agreement_meaning"] = (f"fraction of the {len(first)} steps of the float artifact's greedy decode "
                                            "at which the INT8 graph picks the same token (same prefix)")
    ev = recipe.evaluation
    if q.perplexity and ev.enabled:
        from export.onnx_perplexity import artifact_perplexity

        graph = "onnxruntime" if "onnxruntime" in recipe.export.engines else "deepsparse"
        tokens = evaluation_tokens(tokenizer, ev.dataset, ev.path)
        result["perplexity"] = {"dataset": ev.dataset, "graph": graph, **{
            name: artifact_perplexity(folder, tokens, ev.context_length, ev.max_windows, graph, ctx.progress)
            for name, folder in (("float", source), ("int8", target))}}
        log.info("perplexity of the %s graph: float %.3f, INT8 %.3f", graph,
                 result["perplexity"]["float"]["perplexity"], result["perplexity"]["int8"]["perplexity"])
    for engine, ids in greedy.items():
        ids["int8"] = run_engine(engine, target, "quantize (greedy check)", **specs[engine])["ids"]
        result["engines"][engine]["greedy_vs_float"] = greedy_agreement(ids["float"], ids["int8"])
        log.info("%s: INT8 picks the float greedy token at %.0f%% of %d steps (same prefix); free-running, the two "
                 "decodes are equal at %d of %d positions", engine,
                 100 * result["engines"][engine]["top1_agreement_vs_float"], len(first),
                 result["engines"][engine]["greedy_vs_float"]["equal"], len(ids["float"]))
    write_json_atomic(run_dir / "quantize.json", result)


def benchmark_settings(recipe: Recipe):
    from benchmarks.stage import BenchmarkSettings

    return BenchmarkSettings(**recipe.benchmark.model_dump(exclude={"enabled", "compare"}))


def preflight_benchmark(recipe: Recipe) -> list[dict]:
    from benchmarks.stage import find_artifact, validate

    validate(benchmark_settings(recipe))
    others = [find_artifact(entry, "benchmark.compare:") for entry in recipe.benchmark.compare]
    names = [a["key"] for a in others] + [recipe.name] + ([f"{recipe.name}-int8"] if recipe.quantize.enabled else [])
    if len(set(names)) != len(names):
        raise PipelineError(f"benchmark.compare: two benchmarked artifacts would share a name in {names}",
                            "compare runs whose folder names differ from each other and from this recipe's name")
    return others


def stage_benchmark(ctx: Context) -> None:
    """Benchmark this run's artifact interleaved with ``others``; RUN/benchmark/{results.json, report.md, *.png}."""
    from benchmarks.report import write_report
    from benchmarks.stage import describe_artifact, run_benchmark

    recipe, run_dir = ctx.recipe, ctx.run_dir
    ctx.models.release()  # the engines run in child processes; free the parent's copy for them
    mine = [describe_artifact(run_dir / "artifact", key=recipe.name, name=recipe.name)]
    if recipe.quantize.enabled:
        name = f"{recipe.name}-int8"
        mine.append(describe_artifact(run_dir / "artifact-int8", key=name, name=name))
    out = run_dir / "benchmark"
    results = run_benchmark([*ctx.others, *mine], benchmark_settings(recipe), out, progress=ctx.progress,
                            command=f"pipeline run {recipe.name} (benchmark stage)")
    files = write_report(results, out)
    keys = {a["key"] for a in mine}
    cells = [c for c in results["summary"]["cells"] if c["artifact"] in keys]
    write_json_atomic(run_dir / "benchmark.json", {
        "path": str(out), "files": files, "partial": results["partial"], "failures": len(results["failures"]),
        "tokens_per_s": {f"{c['engine']} {c['mode']}" + (" int8" if c["artifact"] != recipe.name else ""):
                         c["tokens_per_s"]["median"] for c in cells},
        "speedups": [x for x in results["summary"]["speedups"] if x["artifact"] in keys]})
