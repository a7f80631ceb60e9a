"""Runs a recipe's stages in order, resuming where an earlier run of the same recipe stopped.

    baseline   RUN/perplexity_dense.json   perplexity of the unpruned model
    prune      RUN/pruned/                 save_pretrained (safetensors) + tokenizer + sparsity.json
    evaluate   RUN/perplexity.json         perplexity of the pruned model
    export     RUN/artifact/, export.json  the deployable ONNX artifact (export/artifact.py), smoke generation
    quantize   RUN/artifact-int8/, quantize.json  INT8 copy of the artifact (export/quantize.py), greedy check
    benchmark  RUN/benchmark/, benchmark.json  tokens/s in DeepSparse, ONNX Runtime, PyTorch (benchmarks/stage.py)
    (always)   RUN/summary.json, RUN/report.md, RUN/recipe.yaml, RUN/pipeline.log

A stage whose outputs are complete and whose recipe sections have not changed is skipped
(pipeline/stages.py); ``force`` redoes everything, ``start_from`` redoes one stage and those after it.
Everything that can be checked is checked before the first file is written: the recipe, RAM and
disk for the stages that will run (pipeline/preflight.py), the model (it loads, it has a GLU MLP
when DaSS asks for one, N:M fits every projection), and the calibration / evaluation text.
Each stage that runs reads the previous stage's output from disk where that matters for the
artifact (export always starts from RUN/pruned), so a resumed run ends in the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.data import calibration_windows, evaluation_tokens
from pipeline.evaluate import perplexity
from pipeline.errors import PipelineError
from pipeline.models import load_config, load_model, require_glu
from pipeline.outputs import StagingDir, read_json, write_json_atomic, write_text_atomic
from pipeline.prune import make_method
from pipeline.prune.sequential import plan_projections, prune_model
from pipeline.recipe import Recipe
from pipeline.report import render_report
from pipeline.artifact_stages import preflight_benchmark, stage_benchmark, stage_export, stage_quantize
from pipeline.stages import BY_NAME, invalidate, mark_complete, plan, remove_leftovers

log = logging.getLogger(__name__)

LOG_FILE = "pipeline.log"


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


class Models:
    """The one model in memory: the recipe's source (dense) or the run's pruned/ folder, loaded on demand."""

    def __init__(self, recipe: Recipe, run_dir: Path):
        self.recipe, self.run_dir = recipe, run_dir
        self.model = self.tokenizer = None
        self.state: str | None = None  # "dense" | "pruned" | None
        self.source_config = None  # the source's config once preflight has read it

    def _load(self, state: str, source: str, **kwargs):
        if self.state != state:
            self.release()
            m = self.recipe.model
            self.model, self.tokenizer = load_model(source, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                                                    **kwargs)
            self.state = state
        return self.model, self.tokenizer

    def dense(self):
        m = self.recipe.model
        return self._load("dense", m.source, gguf_file=m.gguf_file, revision=m.revision, allow_pickle=m.allow_pickle,
                          config=copy.deepcopy(self.source_config))  # later stages mutate a model's config

    def saved(self):
        """The model as the last model-changing stage saved it (RUN/pruned, or the source when nothing is pruned)."""
        if self.recipe.prune.method == "none":
            return self.dense()
        return self._load("pruned", str((self.run_dir / "pruned").resolve()))

    def release(self) -> None:
        self.model, self.state = None, None
        gc.collect()


@dataclass
class Context:
    recipe: Recipe
    run_dir: Path
    models: Models
    progress: bool
    calib: object = None
    eval_ids: object = None
    others: list = field(default_factory=list)

    def eval_args(self, desc: str) -> dict:
        ev = self.recipe.evaluation
        return dict(context_length=ev.context_length, max_windows=ev.max_windows, device=ev.device,
                    progress=self.progress, desc=desc)


# --- the stages: each reads what it needs, writes its outputs atomically, returns nothing ---

def stage_baseline(ctx: Context) -> None:
    model, _ = ctx.models.dense()
    ppl = perplexity(model, ctx.eval_ids, **ctx.eval_args("perplexity (dense)"))
    log.info("dense perplexity on %s: %.3f", ctx.recipe.evaluation.dataset, ppl["perplexity"])
    write_json_atomic(ctx.run_dir / "perplexity_dense.json", {"dataset": ctx.recipe.evaluation.dataset, "dense": ppl})


def stage_prune(ctx: Context) -> None:
    p = ctx.recipe.prune
    model, tokenizer = ctx.models.dense()
    t0 = time.time()
    result = prune_model(model, make_method(p.method, p.alpha), p.spec, ctx.calib, scope=p.scope, ignore=p.ignore,
                         device=p.device, sequential=p.sequential, progress=ctx.progress)
    seconds = time.time() - t0
    with StagingDir(ctx.run_dir / "pruned") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "sparsity.json", {"summary": sparsity_summary(result.layers), "prune_seconds": seconds,
                                                  "layers": result.layers})
    ctx.models.state = "pruned"


def stage_evaluate(ctx: Context) -> None:
    model, _ = ctx.models.saved()  # in memory right after pruning, else from RUN/pruned
    which = "dense" if ctx.recipe.prune.method == "none" else "pruned"
    ppl = perplexity(model, ctx.eval_ids, **ctx.eval_args(f"perplexity ({ctx.recipe.prune.method})"))
    log.info("%s perplexity on %s: %.3f", which, ctx.recipe.evaluation.dataset, ppl["perplexity"])
    write_json_atomic(ctx.run_dir / "perplexity.json", {"dataset": ctx.recipe.evaluation.dataset, which: ppl})


STAGE_FUNCTIONS = {"baseline": stage_baseline, "prune": stage_prune, "evaluate": stage_evaluate,
                   "export": stage_export, "quantize": stage_quantize, "benchmark": stage_benchmark}


# --- before anything is written ---

def preflight(ctx: Context, todo: list[str], skip_resources: bool) -> None:
    """Every check that can refuse the run, for the stages that will run; loads the model only if one of them needs it."""
    recipe, p = ctx.recipe, ctx.recipe.prune
    m, ev, cal = recipe.model, recipe.evaluation, recipe.calibration
    if "benchmark" in todo:
        ctx.others = preflight_benchmark(recipe)
    if not todo:
        return
    if not skip_resources:
        from pipeline.preflight import check_resources

        config = load_config(m.source, m.gguf_file, m.trust_remote_code, m.revision, m.allow_pickle)
        check_resources(config, recipe, todo, ctx.run_dir)
        ctx.models.source_config = config
    if not set(todo) & {"baseline", "prune", "evaluate", "export"}:
        return  # the benchmark reads the artifact only
    model, tokenizer = ctx.models.dense() if {"baseline", "prune"} & set(todo) else ctx.models.saved()
    if "prune" in todo:
        method = make_method(p.method, p.alpha)
        if p.method == "dass":
            require_glu(model, "DaSS")
        plan_projections(model, method, p.spec, p.scope, p.ignore)
        if method.needs_calibration:
            ctx.calib = calibration_windows(tokenizer, cal.dataset, cal.num_samples, cal.seq_len, cal.seed, cal.path)
            log.info("calibration: %d windows of %d tokens from %s", *ctx.calib.shape, cal.dataset)
    if "export" in todo:
        from export.artifact import preflight_export

        preflight_export(model, ctx.run_dir / "artifact", tuple(recipe.export.engines))
    if {"baseline", "evaluate"} & set(todo):
        ctx.eval_ids = evaluation_tokens(tokenizer, ev.dataset, ev.path)
        if ctx.eval_ids.numel() < ev.context_length:
            raise PipelineError(
                f"the evaluation text ({ev.dataset}) has {ctx.eval_ids.numel()} tokens, fewer than "
                f"context_length={ev.context_length}",
                "use a longer evaluation text or a smaller evaluation.context_length",
            )


# --- the summary: always rebuilt from what the stages wrote ---

def _optional_json(path: Path):
    return read_json(path, "re-run the recipe with --force") if path.is_file() else None


def collect_perplexity(run_dir: Path) -> dict:
    ppl: dict = {}
    for name in ("perplexity_dense.json", "perplexity.json"):
        ppl.update(_optional_json(run_dir / name) or {})
    return ppl


def collect_summary(recipe: Recipe, run_dir: Path, stages: dict) -> dict:
    p, cal = recipe.prune, recipe.calibration
    summary: dict = {"recipe": recipe.name, "recipe_hash": recipe.content_hash(), "model": recipe.model.source,
                     "method": p.method, "sparsity": str(p.sparsity), "scope": p.scope,
                     "alpha": p.alpha if p.method == "dass" else None, "stages": stages}
    sparsity = _optional_json(run_dir / "pruned" / "sparsity.json")
    if sparsity is not None:
        summary["calibration"] = {"dataset": cal.dataset, "num_samples": cal.num_samples, "seq_len": cal.seq_len,
                                  "seed": cal.seed} if p.method not in ("magnitude", "none") else None
        summary["prune_seconds"] = sparsity.get("prune_seconds")
        summary["sparsity_achieved"] = sparsity["summary"]
    summary["perplexity"] = collect_perplexity(run_dir)
    for name in ("export", "quantize", "benchmark"):
        found = _optional_json(run_dir / f"{name}.json")
        if found is not None and name in stages:
            summary[name] = found
    return summary


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _run_stage(name: str, ctx: Context) -> float:
    t0 = time.time()
    log.info("stage %s: started", name)
    try:
        STAGE_FUNCTIONS[name](ctx)
    except PipelineError:
        raise
    except MemoryError as exc:
        raise PipelineError(f"stage {name} ran out of memory",
                            "use a machine with more RAM or smaller settings; completed stages are kept, "
                            "rerun the same command to resume") from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PipelineError(f"stage {name} failed: {type(exc).__name__}: {first}",
                            "the full traceback is in the log file; completed stages are kept, so rerun the same "
                            "command once the cause is fixed") from exc
    seconds = time.time() - t0
    mark_complete(ctx.run_dir, ctx.recipe, BY_NAME[name], seconds)
    log.info("stage %s: finished in %.1f s", name, seconds)
    return seconds


def run_recipe(recipe: Recipe, progress: bool = True, force: bool = False, start_from: str | None = None,
               skip_preflight: bool = False) -> dict:
    run_dir = recipe.run_dir()
    started = time.time()
    steps = plan(recipe, run_dir, force, start_from)
    todo = [stage.name for stage, run, _ in steps if run]
    ctx = Context(recipe, run_dir, Models(recipe, run_dir), progress)
    preflight(ctx, todo, skip_preflight)

    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log_file(run_dir)
    try:
        for stage, run, why in steps:
            log.info("stage %s: %s (%s)", stage.name, "to run" if run else "complete, skipped", why)
        remove_leftovers(run_dir)
        write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        invalidate(run_dir, [stage for stage, run, _ in steps if run])
        stages = {stage.name: "skipped (complete)" for stage, run, _ in steps if not run}
        for name in todo:
            stages[name] = f"ran in {_run_stage(name, ctx):.1f} s"
        ctx.models.release()
        summary = collect_summary(recipe, run_dir, {s.name: stages[s.name] for s, _, _ in steps})
        summary["seconds"] = time.time() - started
        write_json_atomic(run_dir / "summary.json", summary)
        write_text_atomic(run_dir / "report.md", render_report(summary))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    summary["run_dir"] = str(run_dir)
    return summary
