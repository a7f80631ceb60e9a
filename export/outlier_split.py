"""down_proj INT8 with its outlier input channels split off into a float MatMul (LLM.int8()'s decomposition,
Dettmers et al., 2022), written so that the large part stays DeepSparse's INT8 form.

down_proj reads act(gate) * up, whose few largest channels are hundreds to thousands of times the median channel:
one per-tensor uint8 range set by them leaves the other channels a few levels, smoothed or not (+20.7% perplexity
on the embedded SmolLM2 with every linear INT8, docs/int8.md). Split the product by input channels, O (the
outliers: the ``fraction`` of channels of largest calibrated magnitude) and R (the rest):

    X W = X W_R + X[:, O] W[O, :]          W_R: W with the rows O set to 0

    X --> MatMul(X, W_R)                           (rewritten by export/int8_matmul_form.py:integer_matmuls into
      |                                              QuantizeLinear -> MatMulInteger -> Cast -> Mul) --> Add --> Y
      '-> Gather(X, O, last axis) -> MatMul(., W[O, :] float32) ------------------------------------------'

The first term keeps the whole X and the whole weight shape, so it is the same MatMulInteger with a constant int8
weight as every other linear (DeepSparse's dense or sparse INT8 kernel); X's uint8 range is calibrated over the
channels R only. The channels O saturate in its QuantizeLinear, but they multiply int8 rows that are all 0, so they
add nothing there: they reach Y through the small float MatMul ([.., |O|] x [|O|, out]) alone. Pruned zeros stay
zeros in both parts (the rows O of the int8 weight are zero bytes; the float rows are copies). The split runs after
smoothing (export/smooth.py), on the smoothed activation and weights; the float function is unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def outlier_channels(low: np.ndarray, high: np.ndarray, fraction: float) -> np.ndarray:
    """Indices (sorted) of the ``fraction`` of channels (at least one) whose calibrated max |X_j| is largest."""
    peak = np.maximum(-np.asarray(low, np.float64), np.asarray(high, np.float64))
    count = min(peak.size, max(1, int(round(fraction * peak.size))))
    return np.sort(np.argsort(peak, kind="stable")[peak.size - count:]).astype(np.int64)


def split_outliers(store, matmuls: list[str], stats: dict[str, tuple[np.ndarray, np.ndarray]],
                   fraction: float) -> tuple[dict[str, tuple[float, float]], dict]:
    """Rewrite each MatMul of ``matmuls`` (x [.., in] times a weight initializer [in, out] of ``store``,
    export/graph_tensors.py) into MatMul(x, W_R) + Gather(x, O) @ W[O, :], in place. ``stats``: the per-channel
    calibrated (min, max) of each x. Returns ({x: its (min, max) over the channels R}, a summary): the range the
    INT8 part's QuantizeLinear is to use. The MatMul nodes keep their names (the INT8 rewrite finds them)."""
    from onnx import helper

    graph = store.model.graph
    wanted = set(matmuls)
    ranks = _ranks(store.model, {n.input[0] for n in graph.node if n.name in wanted})
    ranges, chosen, nodes, ratios, float_bytes = {}, {}, [], [], 0
    for node in graph.node:
        nodes.append(node)
        if node.name not in wanted:
            continue
        x, w = node.input
        if x not in chosen:
            low, high = stats[x]
            chosen[x] = outlier_channels(low, high, fraction)
            rest = np.ones(low.shape, bool)
            rest[chosen[x]] = False
            ranges[x] = (float(low[rest].min()), float(high[rest].max()))
            peak = np.maximum(-low, high)
            ratios.append(float(peak.max() / max(peak[rest].max(), 1e-12)))
            store.add_array(chosen[x], f"{x}.outlier_channels")
        index = chosen[x]
        rows = np.ascontiguousarray(store.array(w)[index], np.float32)  # W[O, :], as smoothed so far
        float_bytes += rows.nbytes
        store.add(f"{w}.outlier_rows", np.float32, rows.shape, lambda rows=rows: rows)
        store.update(w, lambda value, index=index: _zero_rows(value, index))
        y = node.output[0]
        node.output[0] = f"{y}.int8_part"
        nodes += [helper.make_node("Gather", [x, f"{x}.outlier_channels"], [f"{x}.outliers"],
                                   f"{node.name}.outlier_gather", axis=ranks[x] - 1),
                  helper.make_node("MatMul", [f"{x}.outliers", f"{w}.outlier_rows"], [f"{y}.float_part"],
                                   f"{node.name}.outlier_matmul"),
                  helper.make_node("Add", [f"{y}.int8_part", f"{y}.float_part"], [y], f"{node.name}.outlier_add")]
    del graph.node[:]
    graph.node.extend(nodes)
    counts = sorted({len(i) for i in chosen.values()})
    log.info("split %d outlier channels of each of %d MatMul inputs into float MatMuls (their max |X| was up to "
             "%.0fx that of the other channels)", counts[-1] if counts else 0, len(chosen), max(ratios, default=0))
    return ranges, {"fraction": fraction, "matmuls": len(matmuls), "channels": counts,
                    "float_weight_bytes": float_bytes, "max_range_ratio": max(ratios, default=0.0)}


def _ranks(model, names: set[str]) -> dict[str, int]:
    """The rank of each tensor ``names`` by ONNX shape inference on the graph's structure (the weights' dims suffice);
    3 ([batch, sequence, channels], what both exported graphs feed their linears) where inference leaves it open.
    The Gather's axis is written as rank - 1: DeepSparse 1.8 refuses the graph with axis=-1 (an assertion in its
    execution provider, measured on the tiny artifact), and runs it with the positive axis."""
    import onnx

    structure = onnx.ModelProto()
    structure.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(structure).graph
    except Exception as exc:  # a graph the checker cannot type: every linear input is [batch, sequence, channels]
        log.info("shape inference failed (%s); the outlier channels are gathered on axis 2", exc)
        return dict.fromkeys(names, 3)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.value_info, *inferred.input]
             if v.name in names and v.type.tensor_type.HasField("shape")}
    return {name: ranks.get(name, 3) for name in names}


def _zero_rows(value: np.ndarray, index: np.ndarray) -> np.ndarray:
    out = np.array(value, np.float32, copy=True)
    out[index] = 0
    return out
