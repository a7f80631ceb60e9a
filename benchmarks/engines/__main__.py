"""Child entry point: ``python -m benchmarks.engines '<MeasureSpec as JSON>'``."""

import importlib

from benchmarks.engines import ENGINES, MeasureSpec
from pipeline.common.child import child_main


def _measure(payload: dict) -> dict:
    """One measurement, and the child's peak resident memory: the engine's RAM with the model loaded and run. Read
    from /proc/self/status (VmHWM, this process image's own high-water mark): ru_maxrss would carry the parent's
    peak across fork + exec, and the parent may hold a whole model."""
    spec = MeasureSpec(**payload)
    result = importlib.import_module(ENGINES[spec.engine].runner).measure(spec)
    return {**result, "peak_rss_bytes": _peak_rss()}


def _peak_rss() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


child_main(_measure)
