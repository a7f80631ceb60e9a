"""Child entry point: ``python -m benchmarks.engines '<MeasureSpec as JSON>'``."""

import importlib

from benchmarks.engines import ENGINES, MeasureSpec
from pipeline.common.child import child_main


def _measure(payload: dict) -> dict:
    spec = MeasureSpec(**payload)
    return importlib.import_module(ENGINES[spec.engine].runner).measure(spec)


child_main(_measure)
