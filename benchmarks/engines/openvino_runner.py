"""OpenVINO's CPU plugin: the artifact's IR, or its ONNX Runtime graph read by OpenVINO's ONNX front end (an INT8
graph in the form OpenVINO runs as INT8; export/openvino_graph.py), the KV cache fed as inputs as in ONNX Runtime.

Two engines share this runner: ``openvino`` (OpenVINO's defaults: dense kernels) and ``openvino-sparse`` (sparse
weights decompression asked; on only where the CPU has AMX and the artifact's MatMuls are INT8 and pruned, else
the run goes on dense and the result says why). Each result names the kernels the CPU plugin ran for the MatMuls.
Inputs and outputs are shared with OpenVINO's tensors (no copy of the cache per step).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.engines import MeasureSpec
from benchmarks.engines.counted import decoded
from benchmarks.engines.timing import time_steps

SPARSE_ENGINE = "openvino-sparse"


def measure(spec: MeasureSpec) -> dict:
    from transformers import AutoConfig

    from export import openvino_graph as ovg
    from export.checks import onnxruntime_graph_feed

    ov = ovg.openvino()
    root = Path(spec.artifact)
    sparse = ovg.artifact_sparse_path(root, asked=spec.engine == SPARSE_ENGINE)
    core = ov.Core()
    t0 = time.perf_counter()
    compiled = ovg.compile_model(ovg.openvino_model(root), spec.threads, sparse, core)
    request = compiled.create_infer_request()
    load_s = time.perf_counter() - t0
    graph = ovg.graph_file(root)
    config = AutoConfig.from_pretrained(graph.parent)
    rng = np.random.default_rng(0)
    rows, q, past = spec.step_shape
    ids = rng.integers(0, config.vocab_size, (rows, q))
    feed = onnxruntime_graph_feed({i.any_name for i in compiled.inputs}, config, ids, past, rng)
    result = time_steps(lambda: request.infer(feed, share_inputs=True, share_outputs=True), spec.warmup_seconds,
                        spec.seconds)
    found = ovg.kernels(compiled)
    return {**result, "decoded": decoded(request.get_tensor("logits").data), "load_seconds": load_s, "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "engine_version": ov.__version__, "kv_cache": "external (inputs)", "graph": graph.relative_to(root).as_posix(),
            "kernels": found, "int8_matmuls": ovg.int8_kernels(found), "sparse_matmuls": ovg.sparse_kernels(found),
            "sparse_weights": sparse.as_dict(), "machine": ovg.machine(core)}
