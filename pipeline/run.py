"""Runs a recipe's stages in order: load → data → (dense perplexity) → prune → perplexity → save → export → benchmark.

Everything that can be checked is checked before the first file is written: the recipe, the
model (it loads, it has a GLU MLP when DaSS asks for one, N:M fits every projection), and the
calibration / evaluation text (long enough). Outputs are written atomically, stage by stage:

    RUN/recipe.yaml        the validated recipe
    RUN/pruned/            save_pretrained (safetensors) + tokenizer + sparsity.json
    RUN/perplexity.json    dense and pruned perplexity
    RUN/summary.json       everything the report shows
    RUN/artifact/          the deployable ONNX artifact (export stage; see export/artifact.py)
    RUN/benchmark/         tokens/s in DeepSparse, ONNX Runtime, PyTorch (benchmark stage; benchmarks/stage.py)
    RUN/report.md          a readable summary
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import yaml

from pipeline.data import calibration_windows, evaluation_tokens
from pipeline.evaluate import perplexity
from pipeline.errors import PipelineError
from pipeline.models import load_model, require_glu
from pipeline.outputs import StagingDir, write_json_atomic, write_text_atomic
from pipeline.prune import make_method
from pipeline.prune.sequential import plan_projections, prune_model
from pipeline.recipe import Recipe
from pipeline.report import render_report

log = logging.getLogger(__name__)


def sparsity_summary(layers: dict[str, dict]) -> dict:
    """Per-role mean sparsity and the overall fraction of zeros in the pruned projections."""
    by_role: dict[str, list[float]] = defaultdict(list)
    zeros = total = 0
    for info in layers.values():
        by_role[info["role"]].append(info["sparsity"])
        count = info["shape"][0] * info["shape"][1]
        zeros += info["sparsity"] * count
        total += count
    return {
        "overall": zeros / total if total else 0.0,
        "pruned_parameters": total,
        "by_role": {role: sum(v) / len(v) for role, v in by_role.items()},
    }


def export_stage(model, tokenizer, recipe: Recipe, run_dir: Path, summary: dict) -> dict:
    """Export the (pruned) model as an artifact, then let each engine generate from it (child processes)."""
    from export.artifact import export_artifact
    from export.engines import generation_spec, run_engine

    ex = recipe.export
    metadata = {"recipe": recipe.model_dump(mode="json"), "recipe_hash": recipe.content_hash(),
                "method": recipe.prune.method, "requested_sparsity": str(recipe.prune.sparsity),
                "scope": recipe.prune.scope, "perplexity": summary.get("perplexity")}
    manifest = export_artifact(model, tokenizer, run_dir / "artifact", tuple(ex.engines), ex.max_sequence_length,
                               metadata=metadata, external_data=ex.external_data)
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
    return result


def benchmark_settings(recipe: Recipe):
    from benchmarks.stage import BenchmarkSettings

    return BenchmarkSettings(**recipe.benchmark.model_dump(exclude={"enabled", "compare"}))


def preflight_benchmark(recipe: Recipe) -> list[dict]:
    from benchmarks.stage import find_artifact, validate

    validate(benchmark_settings(recipe))
    others = [find_artifact(entry, "benchmark.compare:") for entry in recipe.benchmark.compare]
    names = [a["key"] for a in others] + [recipe.name]
    if len(set(names)) != len(names):
        raise PipelineError(f"benchmark.compare: two benchmarked artifacts would share a name in {names}",
                            "compare runs whose folder names differ from each other and from this recipe's name")
    return others


def benchmark_stage(recipe: Recipe, run_dir: Path, others: list[dict], progress: bool) -> dict:
    """Benchmark this run's artifact interleaved with ``others``; RUN/benchmark/{results.json, report.md, *.png}."""
    from benchmarks.report import write_report
    from benchmarks.stage import describe_artifact, run_benchmark

    mine = describe_artifact(run_dir / "artifact", key=recipe.name, name=recipe.name)
    out = run_dir / "benchmark"
    results = run_benchmark([*others, mine], benchmark_settings(recipe), out, progress=progress,
                            command=f"pipeline run {recipe.name} (benchmark stage)")
    files = write_report(results, out)
    cells = [c for c in results["summary"]["cells"] if c["artifact"] == recipe.name]
    return {"path": str(out), "files": files, "partial": results["partial"], "failures": len(results["failures"]),
            "tokens_per_s": {f"{c['engine']} {c['mode']}": c["tokens_per_s"]["median"] for c in cells},
            "speedups": [x for x in results["summary"]["speedups"] if x["artifact"] == recipe.name]}


def run_recipe(recipe: Recipe, progress: bool = True) -> dict:
    run_dir = recipe.run_dir()
    started = time.time()
    p, ev, cal = recipe.prune, recipe.evaluation, recipe.calibration

    # --- everything that can fail on bad input, before anything is written ---
    model, tokenizer = load_model(recipe.model.source, recipe.model.gguf_file, recipe.model.dtype,
                                  recipe.model.trust_remote_code, recipe.model.revision)
    method = None
    if p.method != "none":
        method = make_method(p.method, p.alpha)
        if p.method == "dass":
            require_glu(model, "DaSS")
        plan_projections(model, method, p.spec, p.scope, p.ignore)
    calib = None
    if method is not None and method.needs_calibration:
        calib = calibration_windows(tokenizer, cal.dataset, cal.num_samples, cal.seq_len, cal.seed, cal.path)
        log.info("calibration: %d windows of %d tokens from %s", *calib.shape, cal.dataset)
    if recipe.export.enabled:
        from export.artifact import preflight_export

        preflight_export(model, run_dir / "artifact", tuple(recipe.export.engines))
    others = preflight_benchmark(recipe) if recipe.benchmark.enabled else []
    eval_ids = None
    if ev.enabled:
        eval_ids = evaluation_tokens(tokenizer, ev.dataset, ev.path)
        if eval_ids.numel() < ev.context_length:
            raise PipelineError(
                f"the evaluation text ({ev.dataset}) has {eval_ids.numel()} tokens, fewer than context_length={ev.context_length}",
                "use a longer evaluation text or a smaller evaluation.context_length",
            )

    # --- the work ---
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    summary: dict = {"recipe": recipe.name, "recipe_hash": recipe.content_hash(), "model": recipe.model.source,
                     "method": p.method, "sparsity": str(p.sparsity), "scope": p.scope,
                     "alpha": p.alpha if p.method == "dass" else None,
                     "calibration": {"dataset": cal.dataset, "num_samples": cal.num_samples, "seq_len": cal.seq_len,
                                     "seed": cal.seed} if calib is not None else None}
    ppl: dict = {}
    eval_args = dict(context_length=ev.context_length, max_windows=ev.max_windows, device=ev.device, progress=progress)
    if eval_ids is not None and (ev.dense_baseline or method is None):
        ppl["dense"] = perplexity(model, eval_ids, desc="perplexity (dense)", **eval_args)
        log.info("dense perplexity on %s: %.3f", ev.dataset, ppl["dense"]["perplexity"])

    if method is not None:
        t0 = time.time()
        result = prune_model(model, method, p.spec, calib, scope=p.scope, ignore=p.ignore, device=p.device,
                             sequential=p.sequential, progress=progress)
        summary["prune_seconds"] = time.time() - t0
        summary["sparsity_achieved"] = sparsity_summary(result.layers)
        with StagingDir(run_dir / "pruned") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_json_atomic(tmp / "sparsity.json", {"summary": summary["sparsity_achieved"], "layers": result.layers})
        if eval_ids is not None:
            ppl["pruned"] = perplexity(model, eval_ids, desc=f"perplexity ({p.method})", **eval_args)
            log.info("pruned perplexity on %s: %.3f", ev.dataset, ppl["pruned"]["perplexity"])
    if ppl:
        ppl["dataset"] = ev.dataset
        write_json_atomic(run_dir / "perplexity.json", ppl)
    summary["perplexity"] = ppl
    if recipe.export.enabled:
        summary["export"] = export_stage(model, tokenizer, recipe, run_dir, summary)
    if recipe.benchmark.enabled:
        del model  # the engines run in child processes; free the parent's copy for them
        summary["benchmark"] = benchmark_stage(recipe, run_dir, others, progress)
    summary["seconds"] = time.time() - started
    write_json_atomic(run_dir / "summary.json", summary)
    write_text_atomic(run_dir / "report.md", render_report(summary))
    summary["run_dir"] = str(run_dir)
    return summary
