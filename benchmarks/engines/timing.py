"""The timing loop the ONNX Runtime and PyTorch runners share (DeepSparse times itself, the same way)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


#: every timed cell rests on at least this many steps, whatever its seconds (a step slower than seconds / 3 on a
#: loaded or slow machine still gets a median of three)
MIN_STEPS = 3


def time_steps(step: Callable[[], object], warmup_seconds: float, seconds: float, min_steps: int = MIN_STEPS) -> dict:
    """Warm up, then time single calls of ``step`` for ``seconds`` (at least ``min_steps`` calls)."""
    end = time.perf_counter() + warmup_seconds
    step()
    while time.perf_counter() < end:
        step()
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(latencies) < min_steps:
        t0 = time.perf_counter()
        step()
        latencies.append((time.perf_counter() - t0) * 1000.0)
    return {"ms_median": statistics.median(latencies), "ms_mean": statistics.fmean(latencies),
            "ms_min": min(latencies), "iterations": len(latencies)}
