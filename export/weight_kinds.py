"""What an artifact's weights are made of: bytes of float and int8 weights, zero and non-zero.

A dense engine (ONNX Runtime) holds every byte of a graph's weights; a sparse engine (DeepSparse) can keep only the
non-zero ones (plus its index of where they are), so the zero bytes are what pruning can save in memory. The graph is
read one tensor at a time (export/graph_tensors.py): memory is that of its largest tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: tensors below this many elements (norms, biases, scales, zero points) are counted as "other", not as weights
MATRIX_ELEMENTS = 4096
KINDS = ("float_nonzero", "float_zero", "int8_nonzero", "int8_zero", "other")


def weight_bytes_by_kind(graph: Path) -> dict[str, int]:
    """{kind: bytes} over the initializers of ``graph`` (a model.onnx with its weights file beside it): float and
    int8 matrices split into zero and non-zero elements; everything else (small tensors, other dtypes) is "other"."""
    from export.graph_tensors import GraphTensors

    store = GraphTensors.open(Path(graph))
    kinds = dict.fromkeys(KINDS, 0)
    for name in store.tensors:
        value = store.array(name)
        kind = {np.dtype(np.float32): "float", np.dtype(np.float16): "float", np.dtype(np.int8): "int8"}.get(value.dtype)
        if kind is None or value.size < MATRIX_ELEMENTS:
            kinds["other"] += value.nbytes
            continue
        zeros = int(value.size - np.count_nonzero(value))
        kinds[f"{kind}_zero"] += zeros * value.itemsize
        kinds[f"{kind}_nonzero"] += (value.size - zeros) * value.itemsize
        del value
    return kinds
