"""Runs a recipe's stages (pipeline/stages/) in order, resuming where an earlier run of the same recipe stopped.

A stage whose outputs are complete and whose recipe sections have not changed is skipped
(pipeline/resume.py); ``force`` redoes everything, ``start_from`` redoes one stage and those after it.
Everything that can be checked is checked before the first file is written, for the stages that
will run: first the checks that need no model, then RAM and disk (pipeline/resources.py, from the
model's config), then the checks that look at the model (it loads, it has a GLU MLP when DaSS asks
for one, N:M fits every projection, the calibration / evaluation text is usable). Each stage that
runs reads the previous stage's output from disk where that matters for the artifact (export always
starts from RUN/pruned), so a resumed run ends in the same bytes as an uninterrupted one.
The run holds RUN/.lock from before it plans until it ends (pipeline/common/lock.py): one run per folder.
Always written: RUN/summary.json (every applicable stage's part), RUN/report.md, RUN/recipe.yaml, RUN/pipeline.log.
"""

from __future__ import annotations

import logging
import time
from logging.handlers import MemoryHandler
from pathlib import Path

import yaml

from pipeline.common.errors import PipelineError
from pipeline.common.lock import RunLock
from pipeline.common.logsetup import file_handler
from pipeline.common.outputs import write_json_atomic, write_text_atomic
from pipeline.recipe import Recipe
from pipeline.report import render_report
from pipeline.resume import adopt_complete, invalidate, mark_complete, plan, recorded_resources, remove_leftovers
from pipeline.stages.stage import Context, Models, Stage

log = logging.getLogger(__name__)

LOG_FILE = "pipeline.log"


def preflight(ctx: Context, todo: list[Stage], skip_resources: bool) -> None:
    """Every check that can refuse the run, for the stages that will run: those that need no model, then those that
    need the source's config alone (no weights), RAM and disk, and last those that look at the loaded model."""
    for stage in todo:
        if stage.model is None:
            ctx.prepared[stage.name] = stage.check(ctx)
    if not todo or (skip_resources and not any(stage.reads_config for stage in todo)):
        return  # nothing below would look at the source: a run of model-free stages needs none
    config = ctx.models.config()  # config.json only: the checks below need no weights
    for stage in todo:
        stage.check_config(ctx, config)
    if not skip_resources:
        from pipeline.resources import check_resources

        ctx.estimates = check_resources(config, ctx.recipe, todo, ctx.run_dir)
    ctx.check_model = next((s.model for s in todo if s.model), None)
    for stage in todo:
        if stage.model is not None:
            ctx.prepared[stage.name] = stage.check(ctx)


def collect_summary(recipe: Recipe, run_dir: Path, stages: list[Stage], status: dict[str, str]) -> dict:
    """summary.json: the run's identity, then each applicable stage's part (nested dicts merged one level)."""
    p = recipe.prune
    summary: dict = {"recipe": recipe.name, "recipe_hash": recipe.content_hash(), "model": recipe.model.source,
                     "method": p.method, "sparsity": str(p.sparsity), "scope": p.scope,
                     "method_options": p.method_options(), "stages": status}
    for stage in stages:
        for key, value in (stage.summary(recipe, run_dir) or {}).items():
            if isinstance(value, dict) and isinstance(summary.get(key), dict):
                summary[key] = {**summary[key], **value}
            else:
                summary[key] = value
    return summary


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = file_handler(run_dir / LOG_FILE)
    logging.getLogger().addHandler(handler)
    return handler


def _run_stage(stage: Stage, ctx: Context) -> float:
    from pipeline.common.peak_memory import PeakMemory

    t0 = time.time()
    log.info("stage %s: started", stage.name)
    try:
        with PeakMemory() as peak:
            stage.run(ctx)
    except PipelineError:
        raise
    except MemoryError as exc:
        raise PipelineError(f"stage {stage.name} ran out of memory",
                            "use a machine with more RAM or smaller settings; completed stages are kept, "
                            "rerun the same command to resume") from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PipelineError(f"stage {stage.name} failed: {type(exc).__name__}: {first}",
                            "the full traceback is in the log file; completed stages are kept, so rerun the same "
                            "command once the cause is fixed") from exc
    seconds = time.time() - t0
    resources = peak.result()
    if stage.name in ctx.estimates:
        resources["estimated_ram_bytes"] = int(ctx.estimates[stage.name]["ram_gib"] * 2**30)
    mark_complete(ctx.run_dir, ctx.recipe, stage, seconds, resources)
    log.info("stage %s: finished in %.1f s, peak RSS %.2f GiB", stage.name, seconds, resources["peak_rss_bytes"] / 2**30)
    return seconds


def run_recipe(recipe: Recipe, progress: bool = True, force: bool = False, start_from: str | None = None,
               skip_preflight: bool = False, wait: bool = False, share_from: list[Path] | None = None,
               command: str | None = None) -> dict:
    """Run the recipe's stages in its run folder, holding the folder's lock (pipeline/common/lock.py) throughout:
    another run on the same folder refuses (or, with ``wait``, waits) until this one is done. Stages complete
    for the same recipe sections in a ``share_from`` folder are copied from there, not rerun. ``command``: the
    command line that asked for it, recorded in summary.json and shown first in report.md."""
    run_dir = recipe.run_dir()
    started = time.time()
    root = logging.getLogger()
    # what is logged before the run folder's log file may be written (lock, plan, preflight: a refused run
    # writes nothing) is kept and copied into it once the run goes ahead
    early = MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    early.setLevel(logging.DEBUG)
    root.addHandler(early)
    handler = None
    try:
        with RunLock(run_dir, wait=wait):
            adopted = {} if force or start_from or not share_from else adopt_complete(run_dir, recipe, share_from)
            steps = plan(recipe, run_dir, force, start_from)
            todo = [stage for stage, run, _ in steps if run]
            ctx = Context(recipe, run_dir, Models(recipe, run_dir), progress)
            preflight(ctx, todo, skip_preflight)

            handler = _attach_log_file(run_dir)
            early.setTarget(handler)
            early.flush()
            root.removeHandler(early)
            for note in recipe.advisories():
                log.warning("recipe: %s", note)
            for stage, run, why in steps:
                log.info("stage %s: %s (%s)", stage.name, "to run" if run else "complete, skipped", why)
            remove_leftovers(run_dir)
            write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
            invalidate(run_dir, todo)
            status = {stage.name: f"copied from {adopted[stage.name]}" if stage.name in adopted else "skipped (complete)"
                      for stage, run, _ in steps if not run}
            for stage in todo:
                status[stage.name] = f"ran in {_run_stage(stage, ctx):.1f} s"
            ctx.models.release()
            stages = [stage for stage, _, _ in steps]
            summary = collect_summary(recipe, run_dir, stages, {s.name: status[s.name] for s in stages})
            if command:
                summary["command"] = command
            summary["resources"] = recorded_resources(run_dir, stages)
            summary["seconds"] = time.time() - started
            write_json_atomic(run_dir / "summary.json", summary)
            write_text_atomic(run_dir / "report.md", render_report(summary))
    finally:
        root.removeHandler(early)
        early.close()
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
    summary["run_dir"] = str(run_dir)
    return summary
