"""The embedding table of an INT8 artifact stored int8: with the LM head INT8 (``quantize.lm_head``) the head has its
own int8 copy of a tied table (export/quantize.py:untie_lm_head), and the float32 table stays only for the lookup
(890 MiB on Qwen2.5-Coder-1.5B: 151936 x 1536). It is stored int8, symmetric, one scale per token (per vocabulary
entry, WEIGHT_MAX_LOOKUP levels), always as [hidden, vocab], and a DequantizeLinear in front of the lookup gives
the lookup its float table:

    Gather(E^T, ids, axis=1)   becomes   Gather(DequantizeLinear(Q, scales, axis=1), ids, axis=1)
    Gather(E, ids)             becomes   Transpose(Gather(DequantizeLinear(Q, scales, axis=1), ids, axis=1))

(Q = E^T in int8 levels; a tied table is already E^T, export/tied_embedding.py, whose Transpose the second form
borrows.) The first form of an untied table, Gather(DequantizeLinear(E_q, scales, axis=0), ids), is what ONNX
Runtime runs too, but DeepSparse 1.8.0 dies on it with a segmentation fault (on a tiny untied model and on
Qwen2.5-Coder-1.5B's deploy artifact, Intel Xeon with AVX-512 VNNI, 2026-12-07), and runs the transposed one. A quarter
of the bytes on disk; each embedding value moves by at most half a level of its token's scale. An engine may fold
the DequantizeLinear of a constant into a float table when it loads the graph, so the saving is the file's, not
necessarily the engine's RAM. Not the cheaper-looking Gather of the int8 rows, then Cast and a Mul by their
gathered scales: DeepSparse 1.8.0 stops on that graph with an assertion in its planner (`planner.hpp:70`, on an
Intel Xeon with AVX-512 VNNI, 2026-12-07), and runs this one. A lookup multiplies nothing, so the levels need not
stay below the MatMulInteger overflow limit (export/int8_matmul_form.py: WEIGHT_MAX): 127 of them. The decode
step's MatMuls are unchanged, and so are its tokens/s.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

WEIGHT_MAX_LOOKUP = 127


def token_scales(table: np.ndarray, axis: int) -> np.ndarray:
    """One symmetric scale per vocabulary entry (the entries lie along ``axis``); an all-zero entry gets scale 1."""
    peak = np.abs(table).max(axis=1 - axis)
    return np.where(peak > 0, peak / WEIGHT_MAX_LOOKUP, 1.0).astype(np.float32)


def int8_levels(table: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """``table`` as int8 by the scales of :func:`token_scales`."""
    shaped = scale[:, None] if axis == 0 else scale[None, :]
    return np.clip(np.round(table / shaped), -WEIGHT_MAX_LOOKUP, WEIGHT_MAX_LOOKUP).astype(np.int8)


def int8_lookups(store, vocab_size: int) -> dict | None:
    """Store, in ``store``'s graph (export/graph_tensors.py), each embedding table that nothing but lookups reads as
    int8 [hidden, vocab] with a DequantizeLinear in front of its lookups (the form above; a table read on axis 0
    is stored transposed and its lookups read columns). Returns {tables, float_bytes_saved}, or None when no table
    qualifies (a head still reading the float table, as with a float LM head)."""
    from onnx import TensorProto, helper

    from export.smooth import producers_and_consumers
    from export.tied_embedding import input_rank

    graph = store.model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = producers_and_consumers(graph)[1]
    lookups: dict[str, list] = {}
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table not in inits or inits[table].data_type != TensorProto.FLOAT or len(inits[table].dims) != 2 \
                or inits[table].dims[axis] != vocab_size or {r.op_type for r in readers[table]} != {"Gather"}:
            continue
        lookups.setdefault(table, []).append((node, axis))
    tables = {}
    for table, nodes in lookups.items():
        axes = {axis for _, axis in nodes}
        if len(axes) == 1 and (axes == {1} or all(input_rank(graph, n.input[1]) is not None for n, _ in nodes)):
            tables[table] = axes.pop()
        else:
            log.info("embedding table %s stays float: its lookups' axes or index ranks are not known", table)
    if not tables:
        return None
    saved = 0
    for table, axis in tables.items():
        scale = token_scales(store.array(table), axis)  # the int8 table itself is made when written
        store.add(f"{table}.int8", np.int8, store.shape(table)[::-1] if axis == 0 else store.shape(table),
                  lambda table=table, scale=scale, axis=axis: int8_levels(
                      np.ascontiguousarray(store.array(table).T) if axis == 0 else store.array(table), scale, 1))
        store.add_array(scale, f"{table}.int8_scale")
        graph.node.insert(0, helper.make_node("DequantizeLinear", [f"{table}.int8", f"{table}.int8_scale"],
                                              [f"{table}.dequantized"], f"{table}.dequantize", axis=1))
        saved += 3 * int(np.prod(store.shape(table)))
    nodes = list(graph.node)
    for table in tables:
        for node, axis in lookups[table]:
            node.input[0] = f"{table}.dequantized"
            if axis == 0:  # rows of E are columns of E^T: Transpose(Gather(E^T, ids, axis=1))
                out, rank = node.output[0], input_rank(graph, node.input[1])
                node.output[0] = f"{out}.columns"
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("axis", 1))
                nodes.insert(nodes.index(node) + 1, helper.make_node(
                    "Transpose", [f"{out}.columns"], [out], f"{node.name}.rows", perm=[*range(1, rank + 1), 0]))
    del graph.node[:]
    graph.node.extend(nodes)
    store.remove(set(tables))
    log.info("the embedding table is stored int8 (one scale per token): %.1f MiB of float32 less", saved / 2**20)
    return {"tables": sorted(tables), "float_bytes_saved": saved}
