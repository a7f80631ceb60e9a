"""One calibration for every graph of an artifact.

The DeepSparse and ONNX Runtime graphs compute the same activations, but in a different order of float operations,
so ranges calibrated on each graph differ in their last bits. Smoothing (export/smooth.py) folds those ranges into
the norm vectors and up_proj's weights, and the activation scales into each MatMul's rescale: calibrated per graph,
the two INT8 graphs end up with different bytes and cannot share one weights file (measured on Qwen2.5-Coder-1.5B:
an 8.7 GB INT8 artifact instead of one copy). So the first graph is calibrated, and each activation of the next
graph reads the ranges of the activation of the first graph that the same weights read.

An activation is known by what reads it: the sha256 of the bytes and shape of each weight of the MatMuls it feeds
(the exporter names the tensors differently per graph, but the float weights are the same bytes in both; sharing
the float artifact's weights file depends on that too).
"""

from __future__ import annotations

import hashlib

import numpy as np

Ranges = tuple[np.ndarray, np.ndarray]


def activation_keys(store, linears: list[str]) -> dict[str, str]:
    """{activation: key} for the first input of each MatMul in ``linears`` (node names of ``store``'s graph, weights
    as second inputs); the key hashes the weights of every listed MatMul that reads the activation."""
    nodes = {n.name: n for n in store.model.graph.node}
    readers: dict[str, list[str]] = {}
    for name in linears:
        x, w = nodes[name].input
        readers.setdefault(x, []).append(w)
    digests: dict[str, str] = {}

    def digest(weight: str) -> str:
        if weight not in digests:
            array = np.ascontiguousarray(store.array(weight))
            digests[weight] = hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()
        return digests[weight]

    return {x: hashlib.sha256("".join(sorted(map(digest, ws))).encode()).hexdigest() for x, ws in readers.items()}


class SharedCalibration:
    """Ranges by activation key: ``recorded`` by the graph that was calibrated, ``lookup`` for the next graphs."""

    def __init__(self) -> None:
        self.ranges: dict[str, Ranges] = {}

    def lookup(self, keys: dict[str, str]) -> dict[str, Ranges] | None:
        """The ranges of every activation in ``keys``, or None when one of them was not calibrated (then the graph
        calibrates itself)."""
        if not self.ranges or not set(keys.values()) <= self.ranges.keys():
            return None
        return {x: self.ranges[key] for x, key in keys.items()}

    def record(self, keys: dict[str, str], stats: dict[str, Ranges]) -> None:
        for x, key in keys.items():
            self.ranges.setdefault(key, stats[x])
