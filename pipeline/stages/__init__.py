"""The stages of a run, in run order: one module each, one line each in ``STAGES``.

Adding a stage: write ``pipeline/stages/NAME.py`` defining ``STAGE = Stage(...)`` (pipeline/stages/stage.py
says what each field means) and add it to ``STAGES`` below, after the stages it reads from. The
runner, resuming, the resource preflight, ``--from``, summary.json and report.md pick it up from here.
"""

from __future__ import annotations

from pipeline.stages import (accuracy, accuracy_artifact, accuracy_dense, baseline, benchmark, evaluate, export,
                             export_dense, prune, quantize)
from pipeline.stages.stage import Stage

STAGES: tuple[Stage, ...] = (
    baseline.STAGE,
    accuracy_dense.STAGE,
    prune.STAGE,
    evaluate.STAGE,
    accuracy.STAGE,
    export.STAGE,
    accuracy_artifact.STAGE,
    export_dense.STAGE,
    quantize.STAGE,
    benchmark.STAGE,
)
NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}
