"""DeepSparse: the engine's own benchmark (``deepsparse.benchmark``) with its internal KV cache.

It runs on a scratch copy of the artifact's graph, because it rewrites ``model.onnx`` in place with
static shapes. ``num_kv_cache_tokens`` fills the internal cache to the stated context; a batch mode sets the graph's
batch dimension (its internal cache then holds one cache per row).
"""

from __future__ import annotations

import math
import time

from benchmarks.engines import MeasureSpec, graph_folder
from benchmarks.engines.timing import MIN_STEPS
from export.engines import deepsparse_scratch


def machine() -> dict:
    """The instruction set and cores DeepSparse detects on this CPU."""
    from deepsparse.cpu import cpu_architecture

    arch = cpu_architecture()
    return {"isa": arch.isa, "vnni": bool(arch.vnni), "bf16": bool(getattr(arch, "bf16", False)),
            "physical_cores": arch.num_available_physical_cores, "vendor_model": arch.vendor_model}


def measure(spec: MeasureSpec) -> dict:
    from deepsparse import __version__
    from deepsparse.benchmark.benchmark_model import benchmark_model

    rows, length, cached = spec.step_shape
    t0 = time.perf_counter()
    seconds = max(1, round(spec.seconds))
    with deepsparse_scratch(graph_folder(spec)) as scratch:
        while True:  # DeepSparse times for whole seconds; at least MIN_STEPS steps, as the other runners time
            out = benchmark_model(str(scratch / "model.onnx"), batch_size=rows, sequence_length=spec.sequence_length,
                                  input_ids_length=length, num_cores=spec.threads, time=seconds,
                                  warmup_time=max(1, round(spec.warmup_seconds)), internal_kv_cache=True, quiet=True,
                                  num_kv_cache_tokens=cached)
            r = out["benchmark_result"]
            if int(r["iterations"]) >= MIN_STEPS:
                break
            seconds = max(seconds + 1, math.ceil(1.5 * MIN_STEPS * float(r["median"]) / 1000))  # r["median"]: ms
    return {"ms_median": float(r["median"]), "ms_mean": float(r["mean"]), "iterations": int(r["iterations"]),
            "wall_seconds": time.perf_counter() - t0, "threads": out["num_cores"], "engine_version": __version__,
            "fraction_of_supported_ops": out.get("fraction_of_supported_ops"), "kv_cache": "internal",
            "machine": machine()}
