"""Checks on an exported graph: the zeros survived, and the graph computes what PyTorch computes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from export.deepsparse_graph import head_dim
from pipeline.common.errors import PipelineError
from pipeline.common.outputs import sha256_file


def digest(array: np.ndarray) -> str:
    """sha1 of the array's float32 bytes: finds a weight among a graph's initializers."""
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def onnx_weight_sparsity(onnx_path: Path, weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of zeros of each given PyTorch weight as stored in the ONNX file.

    Every weight must be found in the file, as is or transposed (the exporter may fold the
    transpose of a Linear into a constant); initializers are read with their external data.
    """
    model = onnx.load(str(onnx_path), load_external_data=True)
    stored: dict[tuple, np.ndarray] = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            array = numpy_helper.to_array(init)
            stored[(array.shape, digest(array))] = array
    result = {}
    for name, weight in weights.items():
        w = weight.detach().float().cpu().numpy()
        found = stored.get((w.shape, digest(w)))
        if found is None:
            found = stored.get((w.T.shape, digest(w.T)))
        if found is None:
            raise PipelineError(f"weight {name} is not in {onnx_path} unchanged", "re-export; the graph lost or altered the pruned weights")
        result[name] = float((found == 0).mean())
    return result


def save_graph(model, onnx_path: Path) -> None:
    """Write ``model`` as an artifact graph is stored: ``model.onnx`` + all weights in ``model.onnx_data`` beside it."""
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data")


def ort_session(onnx_path: Path, threads: int | None = None, mapped: bool = False):
    """An ONNX Runtime CPU session. ``mapped``: weights are not pre-packed, so ONNX Runtime reads them from its
    mapping of ``model.onnx_data`` (page cache, given back under memory pressure) instead of holding a packed
    copy: a 27 GB graph runs in a few hundred MiB of its own memory, at some cost in speed (for checks and
    calibration, not for timing)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if mapped:
        options.add_session_config_entry("session.disable_prepacking", "1")
        # with memory patterns, ONNX Runtime 1.26 first reserves one anonymous block the size of every initializer
        # (left untouched when the weights are mapped), which a kernel with heuristic overcommit refuses when the
        # weights file is larger than the RAM: std::bad_alloc for a 27 GB graph on a 24 GiB machine. Without the
        # arena, activation buffers are given back after each run instead of kept at their peak.
        options.enable_cpu_mem_arena = options.enable_mem_pattern = False
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def deepsparse_graph_logits(onnx_path: Path, config, input_ids: np.ndarray) -> np.ndarray:
    """Run the DeepSparse-shaped graph (in ONNX Runtime) on a prompt with an empty cache."""
    return ort_session(onnx_path, mapped=True).run(["logits"], deepsparse_graph_feed(config, input_ids))[0]


def deepsparse_graph_feed(config, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of the DeepSparse-shaped graph for a prompt with an empty cache."""
    q = input_ids.shape[1]
    heads, dim = config.num_attention_heads, head_dim(config)
    feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": np.ones((1, q), np.int64),
            "positions": np.arange(q, dtype=np.int64)[None],
            "causal_mask": np.tril(np.ones((q, q), np.int64))[None, None]}
    for i in range(config.num_hidden_layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, heads, 0, dim), np.float32)
    return feed


def onnxruntime_graph_feed(input_names: set[str], config, input_ids: np.ndarray, past: int = 0,
                           rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Inputs of Optimum's standard with-past graph: ``input_ids`` [batch, q] after ``past`` cached tokens (each
    row its own cache).

    The cache is zeros, or random values from ``rng`` (for timing; values do not change the cost).
    """
    rows, q = input_ids.shape
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    shape = (rows, kv_heads, past, head_dim(config))
    feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": np.ones((rows, past + q), np.int64)}
    if "position_ids" in input_names:
        feed["position_ids"] = np.repeat(np.arange(past, past + q, dtype=np.int64)[None], rows, 0)
    for i in range(config.num_hidden_layers):
        for kind in ("key", "value"):
            name = f"past_key_values.{i}.{kind}"
            if name in input_names:
                feed[name] = (rng.standard_normal(shape, dtype=np.float32) if rng is not None
                              else np.zeros(shape, np.float32))
    return feed


def onnxruntime_graph_logits(onnx_path: Path, config, input_ids: np.ndarray) -> np.ndarray:
    """Run Optimum's standard with-past graph on a prompt with an empty cache."""
    session = ort_session(onnx_path, mapped=True)
    feed = onnxruntime_graph_feed({i.name for i in session.get_inputs()}, config, input_ids)
    return session.run(["logits"], feed)[0]


def file_table(folder: Path) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} of every file under ``folder``: a manifest's ``files``. A file with two
    names (the hard-linked weights file of an artifact's two graphs) is read once."""
    folder = Path(folder)
    digests: dict[tuple[int, int], str] = {}
    table = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            key = (st.st_dev, st.st_ino)
            if key not in digests:
                digests[key] = sha256_file(p)
            table[p.relative_to(folder).as_posix()] = {"bytes": st.st_size, "sha256": digests[key]}
    return table
