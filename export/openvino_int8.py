"""The INT8 graph in the form OpenVINO runs as INT8 (export/openvino_graph.py reads it through this rewrite)."""

from __future__ import annotations

from pathlib import Path

from pipeline.common.errors import PipelineError


def dequantized_matmuls(model, base: Path) -> int:
    """Rewrite, in place on the graph's structure, each INT8 MatMul of export/quantize.py's form

        QuantizeLinear(x) -> MatMulInteger(x_q, W_q int8, x_zp, 0) -> Cast(float) -> Mul(x_scale * w_scale)

    into the form OpenVINO's low-precision transformations run as INT8 MatMuls (its ONNX front end turns
    MatMulInteger into a float MatMul of converted integers, which the CPU plugin computes in float32):

        QuantizeLinear(x) -> DequantizeLinear(x_q) -> MatMul(., DequantizeLinear(W_q, w_scale, axis=1))

    The int8 weight initializers are untouched (their bytes stay in the artifact's weights file); w_scale is
    recovered as rescale / x_scale and stored inline (one float per output channel). Returns the MatMuls
    rewritten. ``base``: the folder of the graph's external data (for the small scale tensors)."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)

    def array(name):
        return numpy_helper.to_array(inits[name], base_dir=str(base))

    replaced, nodes_out, dequantized, added, count = {}, [], {}, [], 0
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        x_q, w_q, x_zp, w_zp = node.input
        quantize = producer.get(x_q)
        cast = readers.get(node.output[0], [None])[0]
        mul = readers.get(cast.output[0], [None])[0] if cast is not None else None
        if quantize is None or quantize.op_type != "QuantizeLinear" or cast is None or cast.op_type != "Cast" \
                or mul is None or mul.op_type != "Mul" or w_q not in inits:
            raise PipelineError(f"the INT8 MatMul {node.name!r} is not in export/quantize.py's form",
                                "re-run the quantize stage with this version of the tool")
        x_scale = float(array(quantize.input[1]))
        rescale = array(mul.input[1]).astype(np.float32)
        w_scale = (rescale / np.float32(x_scale)).astype(np.float32).reshape(-1)
        name = node.name.removesuffix(".integer")
        if x_q not in dequantized:
            dequantized[x_q] = f"{x_q}.dequantized"
            nodes_out.append(helper.make_node("DequantizeLinear", [x_q, quantize.input[1], quantize.input[2]],
                                              [dequantized[x_q]], f"{x_q}.dequantize"))
        added.append(numpy_helper.from_array(w_scale, f"{name}.weight_scale"))
        zero = f"{name}.weight_zero_point"
        added.append(numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), zero))
        nodes_out += [helper.make_node("DequantizeLinear", [w_q, f"{name}.weight_scale", zero], [f"{name}.weight"],
                                       f"{name}.weight_dequantize", axis=1),
                      helper.make_node("MatMul", [dequantized[x_q], f"{name}.weight"], [mul.output[0]], name)]
        replaced.update({id(node): None, id(cast): None, id(mul): None})
        count += 1
    kept = [n for n in graph.node if id(n) not in replaced]
    del graph.node[:]
    graph.node.extend(kept + nodes_out)
    graph.initializer.extend(added)
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]  # the rescales (their bytes stay in the file)
    for t in unused:
        graph.initializer.remove(t)
    _sort_topologically(graph)
    return count


def _sort_topologically(graph) -> None:
    """Order ``graph``'s nodes so that each comes after the producers of its inputs (ONNX requires it)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(x in known for x in n.input)]
        if not ready:
            raise PipelineError("the rewritten INT8 graph has a cycle or a missing input",
                                "report this with the artifact's manifest.json")
        ids = {id(n) for n in ready}
        ordered += ready
        known.update(o for n in ready for o in n.output)
        pending = [n for n in pending if id(n) not in ids]
    del graph.node[:]
    graph.node.extend(ordered)
