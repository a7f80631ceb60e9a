"""export_dense: the unpruned source model as an artifact in RUN/artifact-dense/ (export/artifact.py, the same
export and checks as the export stage's), so that the benchmark stage measures dense and pruned interleaved.

It runs when the benchmark compares against ``dense`` (``benchmark.compare``, the default) and something is
pruned. Its output depends on the model and export settings only: changing the pruning reruns the export
stage, not this one, and a sweep copies it from an earlier point instead of exporting it again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.common.outputs import read_json
from pipeline.resources import Shapes
from pipeline.stages.stage import Context, Stage

log = logging.getLogger(__name__)
OUTPUT = "artifact-dense"
SECTIONS = ("model", "export")


def applies(recipe) -> bool:
    return (recipe.export.enabled and recipe.benchmark.enabled and recipe.benchmark.compares_dense()
            and recipe.prune.method != "none")


def check(ctx: Context) -> None:
    from pipeline.stages.export import check_export

    check_export(ctx, "dense", ctx.run_dir / OUTPUT)


def estimate(shapes: Shapes, recipe) -> tuple[int, int]:
    from pipeline.stages.export import estimate as export_estimate

    return export_estimate(shapes, recipe)


def run(ctx: Context) -> None:
    """Export the recipe's source model, unpruned, with the export section's settings."""
    from pipeline.stages.export import export_model

    recipe = ctx.recipe
    metadata = {"recipe": {k: v for k, v in recipe.model_dump(mode="json").items() if k in ("name", *SECTIONS)},
                "method": "none", "requested_sparsity": None, "scope": None, "dense_of": recipe.name}
    manifest = export_model(ctx, "dense", ctx.run_dir / OUTPUT, metadata)
    log.info("dense artifact: %s, %.1f MiB on disk", ctx.run_dir / OUTPUT,  # a hard-linked weights file once
             (manifest.get("disk_bytes") or sum(f["bytes"] for f in manifest["files"].values())) / 2**20)


def summary(recipe, run_dir: Path) -> dict:
    """``disk_bytes``: the artifact's files measured on disk now, a hard-linked file once (export/artifact.py:
    disk_bytes), not the figure its manifest recorded at export: a sweep point copies the folder from an earlier
    point (pipeline/resume.py:adopt_complete), which gives the two graphs a weights file each."""
    from export.artifact import MANIFEST, disk_bytes
    from pipeline.stages.export import logits_checks

    manifest = read_json(run_dir / OUTPUT / MANIFEST, "re-run the recipe with --from export_dense")
    return {"export_dense": {"path": str(run_dir / OUTPUT), "export_seconds": manifest["export_seconds"],
                             "bytes": sum(f["bytes"] for f in manifest["files"].values()),
                             "disk_bytes": disk_bytes(run_dir / OUTPUT),
                             "sparsity_in_onnx": manifest["sparsity"]["overall_decoder_linears"],
                             "logits_max_abs_diff": logits_checks(manifest)}}


def report(summary: dict) -> list[str]:
    d = summary["export_dense"]
    from pipeline.stages.export import diff_text

    diffs = ", ".join(f"{e} {diff_text(v)}" for e, v in d["logits_max_abs_diff"].items())
    return ["## Dense artifact", "", f"`{d['path']}`: the unpruned model, {(d.get('disk_bytes') or d['bytes']) / 2**20:.1f} MiB on disk, exported in "
            f"{d['export_seconds']:.1f} s for the dense-vs-pruned benchmark; max abs logit difference vs PyTorch: {diffs}."]


STAGE = Stage(name="export_dense", about="ONNX artifact of the unpruned model, for the dense-vs-pruned benchmark",
              sections=SECTIONS, outputs=(OUTPUT,), reads=(), applies=applies, model="dense",
              check=check, estimate=estimate, run=run, summary=summary, report=report)
