"""ONNX Runtime: the artifact's standard with-past graph, the cache fed as inputs (Optimum's layout)."""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.engines import MeasureSpec, graph_folder
from benchmarks.engines.counted import decoded
from benchmarks.engines.timing import time_steps


def measure(spec: MeasureSpec) -> dict:
    import onnxruntime
    from transformers import AutoConfig

    from export.checks import onnxruntime_graph_feed, ort_session

    folder = graph_folder(spec)
    t0 = time.perf_counter()
    session = ort_session(folder / "model.onnx", spec.threads)
    config = AutoConfig.from_pretrained(folder)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rows, q, past = spec.step_shape
    ids = rng.integers(0, config.vocab_size, (rows, q))
    feed = onnxruntime_graph_feed({i.name for i in session.get_inputs()}, config, ids, past, rng)
    last = []  # the latest step's logits, to count what it decoded

    def step():
        last[:] = session.run(["logits"], feed)

    result = time_steps(step, spec.warmup_seconds, spec.seconds)
    return {**result, "decoded": decoded(last[0]), "load_seconds": load_s, "threads": spec.threads or os.cpu_count(),
            "engine_version": onnxruntime.__version__, "kv_cache": "external (inputs)"}
