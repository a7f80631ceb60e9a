"""down_proj INT8 with its outlier input channels split off into a float MatMul (LLM.int8()'s decomposition,
Dettmers et al., 2022), written so that the large part stays DeepSparse's INT8 form.

down_proj reads act(gate) * up, whose few largest channels are hundreds to thousands of times the median channel:
one per-tensor uint8 range set by them leaves the other channels a few levels, smoothed or not (+20.7% perplexity
on the embedded SmolLM2 with every linear INT8, docs/int8.md). Split the product by input channels, O (the
outliers: the ``fraction`` of channels of largest calibrated magnitude) and R (the rest):

    X W = X W_R + X[:, O] W[O, :]          W_R: W with the rows O set to 0

    X --> MatMul(X, W_R)                           (rewritten by export/int8_matmul_form.py:integer_matmuls into
      |                                              QuantizeLinear -> MatMulInteger -> Cast -> Mul) --> Add --> Y
      '-> MatMul(X, S) -> MatMul(., W[O, :] float32) -----------------------------------------------------'

S [in, |O|] is the one-hot selection of the channels O (S[O_k, k] = 1): X S is X[:, O] exactly (each output one
product by 1.0). Not a Gather on X's last axis: DeepSparse 1.8.0 on AVX-512 VNNI CPUs crashes on a graph where X
feeds both a Gather and the INT8 MatMul's QuantizeLinear (a segmentation fault, or an assertion in its graph
optimizer, whatever the number of channels; measured on an Intel Xeon with AVX-512 VNNI and AMX, docs/int8.md),
and runs the same graph with the selection as a MatMul. S costs in x |O| float32 (90 KiB per 1% at in = 2,400;
3.2 MiB a layer on Qwen2.5-1.5B's 8,960), all but |O| of its entries zeros.

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
    ranges, chosen, nodes, ratios, float_bytes, select_bytes = {}, {}, [], [], 0, 0
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
            shape = (low.size, chosen[x].size)
            select_bytes += 4 * shape[0] * shape[1]
            store.add(f"{x}.outlier_select", np.float32, shape,
                      lambda shape=shape, index=chosen[x]: _one_hot(shape, index))  # made when written
        index = chosen[x]
        rows = np.ascontiguousarray(store.array(w)[index], np.float32)  # W[O, :], as smoothed so far
        float_bytes += rows.nbytes
        store.add(f"{w}.outlier_rows", np.float32, rows.shape, lambda rows=rows: rows)
        store.update(w, lambda value, index=index: _zero_rows(value, index))
        y = node.output[0]
        node.output[0] = f"{y}.int8_part"
        nodes += [helper.make_node("MatMul", [x, f"{x}.outlier_select"], [f"{x}.outliers"],
                                   f"{node.name}.outlier_select"),
                  helper.make_node("MatMul", [f"{x}.outliers", f"{w}.outlier_rows"], [f"{y}.float_part"],
                                   f"{node.name}.outlier_matmul"),
                  helper.make_node("Add", [f"{y}.int8_part", f"{y}.float_part"], [y], f"{node.name}.outlier_add")]
    del graph.node[:]
    graph.node.extend(nodes)
    counts = sorted({len(i) for i in chosen.values()})
    log.info("split %d outlier channels of each of %d MatMul inputs into float MatMuls (their max |X| was up to "
             "%.0fx that of the other channels)", counts[-1] if counts else 0, len(chosen), max(ratios, default=0))
    return ranges, {"fraction": fraction, "matmuls": len(matmuls), "channels": counts,
                    "float_weight_bytes": float_bytes, "select_bytes": select_bytes,
                    "max_range_ratio": max(ratios, default=0.0)}


def _one_hot(shape: tuple[int, int], index: np.ndarray) -> np.ndarray:
    """S [in, |O|] with S[O_k, k] = 1: X S is X[:, O]."""
    select = np.zeros(shape, np.float32)
    select[index, np.arange(index.size)] = 1.0
    return select


def _zero_rows(value: np.ndarray, index: np.ndarray) -> np.ndarray:
    out = np.array(value, np.float32, copy=True)
    out[index] = 0
    return out
