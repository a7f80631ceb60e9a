"""Resuming: whether a stage's output on disk is complete for the recipe as it is now, and which stages run.

A stage that finishes writes ``RUN/.stages/NAME.json``: the hash of the recipe sections its output
depends on, and the size of every file it wrote. On the next ``pipeline run`` a stage is skipped
when its marker is there, its hash matches the recipe as it is now, and every recorded file is
still there with its recorded size; otherwise it runs again, and every later stage with it.

Outputs are written atomically (pipeline/common/outputs.py) and the marker last, so a process killed at
any point leaves either a complete stage with its marker, or no marker and at most hidden
``.NAME.*.partial`` / ``.NAME.*.tmp`` leftovers, which :func:`remove_leftovers` clears.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.common.errors import PipelineError
from pipeline.common.outputs import write_json_atomic
from pipeline.stages import STAGES
from pipeline.stages.stage import Stage

log = logging.getLogger(__name__)

MARKERS = ".stages"


def applicable(recipe) -> list[Stage]:
    """The stages this recipe asks for, in run order."""
    return [s for s in STAGES if s.applies(recipe)]


def stage_hash(recipe, stage: Stage) -> str:
    data = recipe.model_dump(mode="json")
    picked = {key: data.get(key) for key in stage.sections}
    return hashlib.sha256(json.dumps([stage.name, picked], sort_keys=True).encode()).hexdigest()[:16]


def _marker(run_dir: Path, stage: Stage) -> Path:
    return Path(run_dir) / MARKERS / f"{stage.name}.json"


def _files(run_dir: Path, stage: Stage) -> dict[str, int]:
    found = {}
    for rel in stage.outputs:
        path = Path(run_dir) / rel
        items = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for item in items:
            found[item.relative_to(run_dir).as_posix()] = item.stat().st_size
    return found


def is_complete(run_dir: Path, recipe, stage: Stage) -> tuple[bool, str]:
    """(complete?, why not) for ``stage`` of ``recipe`` in ``run_dir``."""
    marker = _marker(run_dir, stage)
    if not marker.is_file():
        return False, "not run yet"
    try:
        data = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, "its marker is unreadable"
    if data.get("hash") != stage_hash(recipe, stage):
        return False, f"the recipe's {'/'.join(stage.sections)} changed since it ran"
    for rel, size in data.get("files", {}).items():
        path = Path(run_dir) / rel
        if not path.is_file():
            return False, f"{rel} is missing"
        if path.stat().st_size != size:
            return False, f"{rel} has {path.stat().st_size} bytes, {size} when the stage finished"
    if not data.get("files"):
        return False, "its marker lists no output"
    return True, "outputs complete, recipe unchanged"


def mark_complete(run_dir: Path, recipe, stage: Stage, seconds: float, resources: dict | None = None) -> None:
    """Record that ``stage`` finished: its recipe hash, its files' sizes, and what it cost (wall time, peak RSS)."""
    files = _files(run_dir, stage)
    if not files:
        raise PipelineError(f"stage {stage.name} finished but wrote none of {', '.join(stage.outputs)}",
                            "this is a bug; please report it with the recipe")
    write_json_atomic(_marker(run_dir, stage), {"stage": stage.name, "hash": stage_hash(recipe, stage),
                                                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                "seconds": round(seconds, 3), "resources": resources or {},
                                                "files": files})


def recorded_resources(run_dir: Path, stages: list[Stage]) -> dict[str, dict]:
    """What each finished stage cost when it last ran (from its marker): seconds, peak RSS, the estimate."""
    found = {}
    for stage in stages:
        marker = _marker(run_dir, stage)
        try:
            data = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        found[stage.name] = {"seconds": data.get("seconds"), "finished": data.get("finished"),
                             **data.get("resources", {})}
    return found


def adopt_complete(run_dir: Path, recipe, donors: list[Path]) -> dict[str, Path]:
    """Copy, instead of rerunning, each stage that is complete in a donor run folder for this recipe's sections.

    In run order: a stage is adopted when it is not complete here, a donor holds it complete with the same
    stage hash, and every stage it reads is complete here (or was just adopted). Files are copied under a
    temporary name and renamed, the marker last, as a stage writes them. Returns {stage: donor}. (A sweep's
    points share the dense baseline this way: pipeline/sweep.py.)"""
    adopted: dict[str, Path] = {}
    complete: set[str] = set()
    for stage in applicable(recipe):
        if is_complete(run_dir, recipe, stage)[0]:
            complete.add(stage.name)
            continue
        if not set(stage.reads) <= complete:
            continue
        donor = next((Path(d) for d in donors if Path(d) != Path(run_dir) and is_complete(d, recipe, stage)[0]), None)
        if donor is None:
            continue
        files = json.loads(_marker(donor, stage).read_text())["files"]
        for rel in files:
            target = Path(run_dir) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            shutil.copy2(Path(donor) / rel, tmp)
            os.replace(tmp, target)
        mark_complete(run_dir, recipe, stage, 0.0)
        log.info("stage %s: copied from %s (same %s)", stage.name, donor, "/".join(stage.sections))
        adopted[stage.name] = donor
        complete.add(stage.name)
    return adopted


def invalidate(run_dir: Path, stages: list[Stage]) -> None:
    """Forget that ``stages`` finished (before they run again, or when an upstream stage reruns)."""
    for stage in stages:
        _marker(run_dir, stage).unlink(missing_ok=True)


def plan(recipe, run_dir: Path, force: bool = False, start_from: str | None = None) -> list[tuple[Stage, bool, str]]:
    """[(stage, run it?, why)] in run order.

    A stage runs when its output is not complete for the recipe as it is now, or when a stage it
    reads from runs. ``force`` runs all; ``start_from`` runs that stage and every later one.
    """
    stages = applicable(recipe)
    if start_from is not None and start_from not in [s.name for s in stages]:
        known = ", ".join(s.name for s in stages) or "none"
        raise PipelineError(f"--from {start_from}: this recipe has no such stage (its stages: {known})",
                            "name one of the recipe's stages, or enable that stage in the recipe")
    result, running, from_here = [], set(), False
    for stage in stages:
        from_here = from_here or stage.name == start_from
        upstream = sorted(set(stage.reads) & running)
        if force or from_here:
            why = "--force" if force else f"--from {start_from}"
        elif upstream:
            why = f"{', '.join(upstream)} runs again"
        else:
            done, why = is_complete(run_dir, recipe, stage)
            if done:
                result.append((stage, False, why))
                continue
        running.add(stage.name)
        result.append((stage, True, why))
    return result


def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete the hidden temporaries a killed process may have left (``.X.*.partial``, ``.X.*.tmp``, ``.X.old``)."""
    removed = []
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return removed
    for path in sorted(run_dir.rglob(".*"), key=lambda p: len(p.parts), reverse=True):
        name = path.name
        if name.endswith((".partial", ".tmp")) or (name.endswith(".old") and name.startswith(".")):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.relative_to(run_dir).as_posix())
    if removed:
        log.info("removed %d leftover(s) of an interrupted run: %s", len(removed), ", ".join(removed))
    return removed
