"""Child entry point: ``python -m benchmarks.engines '<MeasureSpec as JSON>'``."""

import importlib

from benchmarks.engines import ENGINES, MeasureSpec
from pipeline.common.child import child_main


def _measure(payload: dict) -> dict:
    """One measurement, and the child's peak resident memory: the engine's RAM with the model loaded and run
    (Linux reports ru_maxrss in KiB)."""
    import resource

    spec = MeasureSpec(**payload)
    result = importlib.import_module(ENGINES[spec.engine].runner).measure(spec)
    return {**result, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


child_main(_measure)
