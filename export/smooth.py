"""SmoothQuant-style smoothing of an ONNX graph before INT8 quantization (Xiao et al., 2023).

Per-tensor INT8 activations cannot hold the few input channels of a linear layer that carry
outliers. Smoothing divides such a channel j of the activation X by s_j and multiplies row j of
every weight that reads X by s_j: X W = (X diag(1/s)) (diag(s) W), the same function in float.
The division is folded into the operation that produced X, so the graph gains no node:

- ``norm``: X is the output of the RMSNorm's ``Mul`` by its weight vector (input of q/k/v, and of
  gate/up): that vector is divided by s.
- ``up``: X = act(gate) * up is the input of down_proj: up_proj's weight columns are divided by s.

s_j = max|X_j|^a / max|W_j|^(1-a) (a = the smoothing strength), from the maxima of X over
calibration windows. Zeros of pruned weights stay zeros (rows are only scaled).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class SmoothGroup:
    """One activation X, who produces it, and the MatMul weights that read it."""

    kind: str                      # "norm" or "up"
    activation: str                # the tensor X
    divisor: str                   # initializer divided by s: the norm's weight vector, or up_proj's weight
    weights: list[str] = field(default_factory=list)  # MatMul weights [in, out] whose rows are multiplied by s
    producer: str = ""             # the node that reads ``divisor`` (the norm's Mul, or up_proj's MatMul)
    shared: bool = False           # ``divisor`` is read elsewhere too: smooth() gives the producer its own copy
    port: int = 0                  # which input of ``producer`` leads to ``divisor``
    scale: np.ndarray | None = None  # s, set by smooth(): the activation is now X / s (per channel)


def producers_and_consumers(graph):
    """{tensor: the node that writes it}, {tensor: the nodes that read it}."""
    producers, consumers = {}, {}
    for node in graph.node:
        for out in node.output:
            producers[out] = node
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    return producers, consumers


def smoothing_groups(graph, matmuls: set[str]) -> list[SmoothGroup]:
    """The activations of ``matmuls`` (node names) that can be smoothed with the scale folded away.

    A group needs: every consumer of X is a MatMul in ``matmuls`` with a 2-D weight initializer (read
    by it alone) as its second input, and X comes from a foldable producer: a ``Mul`` by a vector
    initializer (given a private copy if the exporter shared it), or act(gate) * up.
    """
    inits = {i.name: i for i in graph.initializer}
    producers, consumers = producers_and_consumers(graph)

    def weight_of(node):
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits \
                and len(inits[node.input[1]].dims) == 2:
            return node.input[1]
        return None

    def only_reader(name, node):
        return [n.name for n in consumers.get(name, [])] == [node.name]

    def initializer_behind(name):  # through Identity nodes (how the exporter shares one initializer)
        while name not in inits and name in producers and producers[name].op_type == "Identity":
            name = producers[name].input[0]
        return name

    groups, seen = [], set()
    for node in graph.node:
        if node.name not in matmuls or weight_of(node) is None or node.input[0] in seen:
            continue
        x = node.input[0]
        seen.add(x)
        readers = [r for r in consumers.get(x, []) if r.op_type != "Shape"]  # Shape reads no values
        if not all(r.name in matmuls and weight_of(r) and only_reader(weight_of(r), r) for r in readers):
            continue
        weights = [weight_of(r) for r in readers]
        rows = inits[weights[0]].dims[0]
        producer = producers.get(x)
        if producer is None or producer.op_type != "Mul":
            continue
        vector = [(port, v) for port, v in enumerate(map(initializer_behind, producer.input))
                  if v in inits and list(inits[v].dims) == [rows]]
        if vector:  # exporters merge equal initializers (norm weights that are all ones): then it is shared
            port, name = vector[0]
            groups.append(SmoothGroup("norm", x, name, weights, producer.name,
                                      shared=name != producer.input[port] or not only_reader(name, producer),
                                      port=port))
            continue
        # X = act(gate) * up: fold into the columns of up_proj (the MatMul that produces one factor)
        for factor in producer.input:
            up = producers.get(factor)
            if up is not None and weight_of(up) and only_reader(factor, producer) \
                    and only_reader(weight_of(up), up) and inits[weight_of(up)].dims[1] == rows:
                groups.append(SmoothGroup("up", x, weight_of(up), weights, up.name))
                break
    return groups


def channel_ranges(model, names: list[str], feeds: list[dict], scratch: Path,
                   weights: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (min, max) of the tensors ``names`` over ``feeds``, read by ONNX Runtime from ``model``.

    ``model`` holds its weights, or, with ``weights`` (the folder of its ``model.onnx_data``), only its
    structure: ONNX Runtime then maps that file (a hard link beside the calibration graph, no copy) instead
    of a second copy of the weights in memory.
    """
    import os

    import onnx

    from export.checks import ort_session, save_graph
    from export.shared_weights import DATA

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    known = {o.name for o in augmented.graph.output}
    for name in names:
        if name not in known:
            augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    folder = Path(tempfile.mkdtemp(prefix="ranges-", dir=scratch))
    if weights is None:
        save_graph(augmented, folder / "model.onnx")
    else:
        if (Path(weights) / DATA).is_file():
            try:
                os.link(Path(weights) / DATA, folder / DATA)
            except OSError as exc:  # another file system: ONNX Runtime refuses data outside the graph's folder
                from pipeline.common.errors import PipelineError

                raise PipelineError(f"cannot hard-link {Path(weights) / DATA} into {folder} for calibration ({exc})",
                                    "put the run's output folder on the same file system as its artifact") from exc
        onnx.save_model(augmented, str(folder / "model.onnx"))
    del augmented
    session = ort_session(folder / "model.onnx", mapped=True)
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            flat = value.reshape(-1, value.shape[-1])
            low, high = flat.min(0), flat.max(0)
            if name in ranges:
                low, high = np.minimum(ranges[name][0], low), np.maximum(ranges[name][1], high)
            ranges[name] = (low, high)
    return ranges


def activation_maxima(model, names: list[str], feeds: list[dict], scratch: Path) -> dict[str, np.ndarray]:
    """Per-channel max |X| of the tensors ``names`` over ``feeds``, read by ONNX Runtime from ``model``."""
    return {name: np.maximum(-low, high) for name, (low, high) in channel_ranges(model, names, feeds, scratch).items()}


def smooth(store, groups: list[SmoothGroup], maxima: dict[str, np.ndarray], strength: float) -> dict:
    """Rescale the initializers of ``store`` (export/graph_tensors.py; the float function is unchanged);
    returns a summary. Each weight is read once here for its row maxima; the rescaling is registered on the
    store and computed when the graph is written."""
    from export.graph_tensors import by_rows

    nodes = {n.name: n for n in store.model.graph.node}
    ratios = []
    for g in groups:
        x_max = maxima[g.activation].astype(np.float64)
        w_max = np.max([np.abs(store.array(w)).max(1) for w in g.weights], axis=0).astype(np.float64)
        s = np.where((x_max > 0) & (w_max > 0),
                     np.power(np.maximum(x_max, 1e-5), strength) / np.power(np.maximum(w_max, 1e-5), 1 - strength), 1.0)
        s = np.clip(s, 1e-5, 1e5)
        g.scale = s
        for w in g.weights:
            store.update(w, lambda value, s=s: by_rows(value, lambda part, rows: part * s[rows, None], np.float32))
        divide = (lambda value, s=s: (value / s).astype(np.float32)) if g.kind == "norm" else \
            (lambda value, s=s: by_rows(value, lambda part, rows: part / s[None, :], np.float32))
        if g.shared:  # a private copy for this norm; the other readers keep the original
            copy = f"{g.producer}.smoothed_weight"
            store.add(copy, np.float32, store.shape(g.divisor),
                      lambda divisor=g.divisor, divide=divide: divide(store.array(divisor)))
            nodes[g.producer].input[g.port] = copy
        else:
            store.update(g.divisor, divide)
        ratios.append(float(x_max.max() / max(np.median(x_max), 1e-12)))
    log.info("smoothed %d activations (strength %.2f); their outlier ratio max/median was up to %.0f",
             len(groups), strength, max(ratios, default=0))
    return {"strength": strength, "groups": len(groups), "norm": sum(g.kind == "norm" for g in groups),
            "up": sum(g.kind == "up" for g in groups), "max_outlier_ratio": max(ratios, default=0.0)}
