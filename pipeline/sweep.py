"""`pipeline sweep RECIPE --grid prune.method=dass,wanda --grid prune.sparsity=0.5,2:4`: one run per grid point.

Each point is the recipe with the point's values as overrides (pipeline/overrides.py) in its own resumable run
folder, ``SWEEP/method=dass,sparsity=0.5`` under ``SWEEP = RUN/sweep`` (RUN: the recipe's run folder, after
``--set`` / ``--output-dir``). Every point is validated before the first one runs. A point runs like
``pipeline run`` on its folder: a finished point is skipped stage by stage, and a stage that is complete in an
earlier point for the same recipe sections — the dense baseline when only ``prune.*`` varies — is copied from
there instead of recomputed (pipeline/resume.py:adopt_complete). The sweep holds SWEEP's lock while it runs;
when every point is done it writes the table (pipeline/sweep_table.py). With ``--ray ADDRESS`` the points run as
tasks of a Ray cluster instead of one after another here (pipeline/sweep_ray.py); the table is the same.
"""

from __future__ import annotations

import itertools
import logging
import shlex
from pathlib import Path
from typing import NamedTuple

from pipeline.common.errors import PipelineError
from pipeline.common.lock import RunLock
from pipeline.overrides import load_recipe_with_overrides, parse_override
from pipeline.recipe import Recipe
from pipeline.sweep_table import write_table

log = logging.getLogger(__name__)

SWEEP_FOLDER = "sweep"
GRID_HELP = "write --grid section.key=V1,V2,..., e.g. --grid prune.method=dass,wanda --grid prune.sparsity=0.5,2:4"


def parse_grid(items: list[str], overrides: list[str]) -> list[tuple[str, list[str]]]:
    """``["prune.method=dass,wanda"]`` -> ``[("prune.method", ["dass", "wanda"])]`` (values kept as text)."""
    if not items:
        raise PipelineError("a sweep needs at least one --grid", GRID_HELP)
    grid, keys = [], set()
    set_keys = {parse_override(text)[0] for text in overrides}
    for item in items:
        path, _ = parse_override(item)  # the form key=value, with a clear error otherwise
        key, values = item.partition("=")[0].strip(), [v.strip() for v in item.partition("=")[2].split(",")]
        if not all(values):
            raise PipelineError(f"--grid {item}: an empty value", GRID_HELP)
        if key in keys or path in set_keys:
            raise PipelineError(f"--grid {item}: {key} is given twice (in two --grid or in --set too)",
                                "give each key once")
        if len(set(values)) != len(values):
            raise PipelineError(f"--grid {item}: a value is repeated", "list each value once")
        keys.add(key)
        grid.append((key, values))
    return grid


def point_name(point: list[tuple[str, str]], keys: list[str]) -> str:
    """``method=dass,sparsity=0.5``: each key by its last part, or in full where two keys share it."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    short = {key: (part if last.count(part) == 1 else key) for key, part in zip(keys, last)}
    return ",".join(f"{short[key]}={value.replace('/', '_')}" for key, value in point)


class SweepPoint(NamedTuple):
    name: str  # method=dass,sparsity=0.5
    values: dict  # {grid key: value}
    recipe: Recipe
    command: str  # the `pipeline run` that makes this point alone, in its folder (first in its report.md)


def point_command(path: str | Path, changes: list[str], folder: Path) -> str:
    return shlex.join(["pipeline", "run", str(path), *(x for change in changes for x in ("--set", change)),
                       "--output-dir", str(folder)])


def sweep_points(path: str | Path, grid: list[tuple[str, list[str]]], overrides: list[str],
                 output_dir: str | None) -> tuple[Path, list[SweepPoint]]:
    """The sweep folder and every point, all validated before anything runs."""
    base = load_recipe_with_overrides(path, overrides, output_dir)
    sweep_dir = base.run_dir() / SWEEP_FOLDER
    keys = [key for key, _ in grid]
    points = []
    for values in itertools.product(*[values for _, values in grid]):
        point = list(zip(keys, values))
        name = point_name(point, keys)
        changes = [*overrides, *(f"{k}={v}" for k, v in point)]
        labels = [*(f"--set {o}" for o in overrides), *(f"--grid {k} value {v}" for k, v in point)]
        recipe = load_recipe_with_overrides(path, changes, str(sweep_dir / name), labels)
        points.append(SweepPoint(name, dict(point), recipe, point_command(path, changes, sweep_dir / name)))
    return sweep_dir, points


def run_points_here(points: list[SweepPoint], progress: bool = True, skip_preflight: bool = False,
                    wait: bool = False) -> list[dict]:
    """The points one after another in this process, each sharing the complete stages of those before it; the first
    point that fails stops the sweep (its PipelineError propagates). Returns each point's summary."""
    from pipeline.runner import run_recipe

    done, summaries = [], []
    for number, point in enumerate(points, 1):
        log.info("sweep point %d of %d: %s", number, len(points), point.name)
        summaries.append(run_recipe(point.recipe, progress=progress, skip_preflight=skip_preflight, wait=wait,
                                    share_from=done, command=point.command))
        done.append(point.recipe.run_dir())
    return summaries


def run_sweep(path: str | Path, grid_items: list[str], overrides: list[str] | None = None,
              output_dir: str | None = None, progress: bool = True, skip_preflight: bool = False,
              wait: bool = False, run_points=run_points_here) -> dict:
    """Every point of the grid, then the table. ``run_points(points, progress, skip_preflight, wait)`` runs them and
    returns, in the points' order, each one's summary or the PipelineError it failed with (here in this process by
    default; on a Ray cluster: pipeline/sweep_ray.py). Failed points are left out of the table and listed under
    ``failures`` in the result."""
    overrides = list(overrides or [])
    grid = parse_grid(grid_items, overrides)
    sweep_dir, points = sweep_points(path, grid, overrides, output_dir)
    with RunLock(sweep_dir, wait=wait):
        outcomes = run_points(points, progress=progress, skip_preflight=skip_preflight, wait=wait)
        rows = [row(point.name, point.values, outcome) for point, outcome in zip(points, outcomes)
                if not isinstance(outcome, PipelineError)]
        failures = [{"point": point.name, "error": str(outcome)} for point, outcome in zip(points, outcomes)
                    if isinstance(outcome, PipelineError)]
        table = {"recipe": str(path), "overrides": overrides, "grid": {key: values for key, values in grid},
                 "points": rows}
        if failures:
            table["failures"] = failures
        written = write_table(table, sweep_dir)
    return {"sweep_dir": str(sweep_dir), "table": table, "written": [str(p) for p in written], "failures": failures}


def row(name: str, values: dict, summary: dict) -> dict:
    """One line of the table: the point, its perplexities and achieved sparsity, and what each stage did."""
    ppl = summary.get("perplexity") or {}
    achieved = summary.get("sparsity_achieved") or {}
    return {"point": name, "values": values, "method": summary["method"], "sparsity": summary["sparsity"],
            "scope": summary["scope"], "dataset": ppl.get("dataset"),
            "perplexity_dense": (ppl.get("dense") or {}).get("perplexity"),
            "perplexity": (ppl.get("pruned") or {}).get("perplexity"),
            "perplexity_also": {text: {"dense": (ppl.get("dense_also") or {}).get(text, {}).get("perplexity"),
                                       "pruned": (ppl.get("pruned_also") or {}).get(text, {}).get("perplexity")}
                                for text in {**(ppl.get("dense_also") or {}), **(ppl.get("pruned_also") or {})}},
            "noise": (ppl.get("pruned") or {}).get("nll_standard_error"),
            "prune_seconds": summary.get("prune_seconds"),
            "sparsity_achieved": achieved.get("overall"), "stages": summary["stages"], "run_dir": summary["run_dir"]}
