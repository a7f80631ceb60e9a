"""The INT8 MatMul form DeepSparse runs as INT8 kernels, written into a graph: each chosen linear becomes

    QuantizeLinear(x) -> MatMulInteger(x_q uint8, W_q int8 constant) -> Cast(float) -> Mul(x_scale * w_scale)

with uint8 asymmetric per-tensor activations (``activation_params``) and int8 symmetric weights in
[-WEIGHT_MAX, WEIGHT_MAX] (``weight_params``). Which linears, their calibrated ranges and the smoothing before are
export/quantize.py's.
"""

from __future__ import annotations

import numpy as np

from pipeline.common.errors import PipelineError


def activation_params(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """uint8 asymmetric (scale, zero point) of a calibrated range; the range always holds 0 (exactly representable)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255.0 or 1.0
    return np.float32(scale), np.uint8(np.clip(np.round(-low / scale), 0, 255))


#: the int8 weights' largest magnitude: 63, not 127. ONNX Runtime's uint8 x int8 MatMulInteger kernels on x86 CPUs
#: without VNNI (AVX2, AVX-512 without VNNI) multiply with vpmaddubsw, which adds each pair of adjacent products in
#: a saturating int16: 2 x 255 x 127 = 64770 overflows it, and the product comes out wrong (measured on an AVX2-only
#: EPYC: 3 of 40 outputs of one MatMul off by up to 0.78, top-1 of the INT8 graph 81% of the float graph's). With
#: weights in [-63, 63] no pair exceeds 2 x 255 x 63 = 32130, so the artifact computes the same on every x86 CPU,
#: in every engine (ONNX Runtime's own quantizer calls this reduce_range). Both graphs use it, so that they
#: share one weights file.
WEIGHT_MAX = 63


def weight_params(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric weights of ``w`` [in, out] in [-WEIGHT_MAX, WEIGHT_MAX] and their scales ([out] per channel,
    else one).

    Zero maps to 0 (no zero point), so a pruned weight stays exactly 0; all-zero columns get scale 1.
    """
    from export.graph_tensors import BLOCK_ROWS, by_rows

    if per_channel:  # column maxima a block of rows at a time (no whole-tensor |w|)
        peak = np.zeros(w.shape[1:], w.dtype)
        for start in range(0, w.shape[0], BLOCK_ROWS):
            np.maximum(peak, np.abs(w[start:start + BLOCK_ROWS]).max(0), out=peak)
    else:
        peak = np.abs(w).max(keepdims=True)
    scale = np.where(peak > 0, peak / WEIGHT_MAX, 1.0).astype(np.float32)
    return by_rows(w, lambda part, _: np.clip(np.round(part / scale), -WEIGHT_MAX, WEIGHT_MAX), np.int8), scale


def integer_matmuls(store, linears: list[str], ranges: dict[str, tuple[float, float]], per_channel: bool) -> int:
    """Rewrite each MatMul of ``linears`` (x [.., in] times a weight initializer [in, out]) in place into

        QuantizeLinear(x) -> MatMulInteger(x_q uint8, W_q int8) -> Cast(float) -> Mul(x_scale * w_scale)

    the form SparseML's exporter writes for DeepSparse (its MatMul-to-MatMulInteger transforms): the
    weight is an int8 constant that DeepSparse's INT8 kernels read (dense or sparse), the int32
    accumulator is rescaled once per output channel. One QuantizeLinear per activation (q/k/v share
    one). ``ranges`` is the calibrated (min, max) of each activation. ``store`` (export/graph_tensors.py)
    holds the graph: each weight is read here for its scales, and its int8 form is made when the graph is
    written. Returns the weight bytes saved.
    """
    from onnx import TensorProto, helper

    graph = store.model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for x in node.input:
            readers[x] = readers.get(x, 0) + 1
    wanted, nodes, quantized, dropped, saved = set(linears), [], {}, set(), 0
    zero = "int8_matmul.weight_zero_point"
    store.add_array(np.array(0, np.int8), zero)
    for node in graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        x, w_name = node.input
        if w_name not in inits or x in inits or len(inits[w_name].dims) != 2:
            raise PipelineError(f"MatMul {node.name!r} ({x} x {w_name}) is not activation x weight [in, out]: DeepSparse's "
                                "INT8 form (MatMulInteger with a constant int8 weight) cannot be written for it",
                                "leave it float (it is not a decoder linear) or export the model with weights as the "
                                "second MatMul input")
        if x not in quantized:
            scale, point = activation_params(*ranges[x])
            base = f"{x}.uint8"
            store.add_array(np.array(scale), f"{base}.scale")
            store.add_array(np.array(point), f"{base}.zero_point")
            nodes.append(helper.make_node("QuantizeLinear", [x, f"{base}.scale", f"{base}.zero_point"], [base],
                                          f"{base}.quantize"))
            quantized[x] = (base, scale)
        x_q, x_scale = quantized[x]
        _, w_scale = weight_params(store.array(w_name), per_channel)
        name = node.name
        store.add(f"{w_name}.int8", np.int8, store.shape(w_name),
                  lambda w_name=w_name: weight_params(store.array(w_name), per_channel)[0])
        store.add_array((x_scale * w_scale).astype(np.float32), f"{name}.rescale")
        nodes += [helper.make_node("MatMulInteger", [x_q, f"{w_name}.int8", f"{x_q}.zero_point", zero],
                                   [f"{name}.int32"], f"{name}.integer"),
                  helper.make_node("Cast", [f"{name}.int32"], [f"{name}.float"], f"{name}.cast", to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{name}.float", f"{name}.rescale"], [node.output[0]], f"{name}.rescale_mul")]
        if readers[w_name] == 1:
            dropped.add(w_name)
            saved += 3 * int(np.prod(store.shape(w_name)))  # float32 -> int8
    del graph.node[:]
    graph.node.extend(nodes)
    store.remove(dropped)
    return saved
