"""The embedding table of an INT8 artifact stored int8: with the LM head INT8 (``quantize.lm_head``) the head has its
own int8 copy of a tied table (export/quantize.py:untie_lm_head), and the float32 table stays only for the lookup
(890 MiB on Qwen2.5-Coder-1.5B: 151936 x 1536). It is stored as int8 rows Q [vocab, hidden], symmetric, one scale
per token (WEIGHT_MAX_LOOKUP levels) in S [vocab, 1], and the lookup gathers a token's int8 row and its scale:

    Gather(E, ids)                        becomes
    Transpose(Gather(E^T, ids, axis=1))   becomes   Mul(DequantizeLinear(Gather(Q, ids), 1, 0), Gather(S, ids))

(the second form is a tied table, stored once as E^T, export/tied_embedding.py). A quarter of the bytes on disk and
in the engine; each embedding value moves by at most half a level of its token's scale; a step dequantizes the
rows it reads, nothing more. Forms measured and dropped, DeepSparse 1.8.0 on an Intel Xeon with AVX-512 VNNI
(2026-12-07): the table dequantized in front of the lookup, Gather(DequantizeLinear(Q, S, axis), ids), runs outside
DeepSparse's engine and dequantizes all 233M values every step (Qwen2.5-Coder-1.5B's deploy artifact: decode 2.0
tokens/s against 11.8 with the float table, and no RAM saved), and on an untied table (axis 0) it was a
segmentation fault; a Cast of the gathered rows instead of the DequantizeLinear stops DeepSparse with an assertion
in its planner (`planner.hpp:70`). A lookup multiplies nothing, so the levels need not stay below the MatMulInteger
overflow limit (export/int8_matmul_form.py: WEIGHT_MAX): 127 of them.
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


def _lookup_output(node, axis: int, readers) -> tuple[str, list] | None:
    """The tensor a lookup's rows come out as and the nodes that make it: the Gather's own output (axis 0, E), or
    the output of the Transpose that turns the columns of E^T back into rows (axis 1, export/tied_embedding.py)."""
    if axis == 0:
        return node.output[0], [node]
    after = readers.get(node.output[0], [])
    if len(after) == 1 and after[0].op_type == "Transpose":
        perm = next((list(a.ints) for a in after[0].attribute if a.name == "perm"), None)
        if perm and perm[-1] == 0 and perm[:-1] == list(range(1, len(perm))):
            return after[0].output[0], [node, after[0]]
    return None


def int8_lookups(store, vocab_size: int) -> dict | None:
    """Store, in ``store``'s graph (export/graph_tensors.py), each embedding table that nothing but lookups reads as
    int8 rows [vocab, hidden] with one scale per row, and make each lookup gather int8 rows and scale them (the form
    above). Returns {tables, float_bytes_saved}, or None when no table qualifies (a head still reading the float
    table, as with a float LM head)."""
    from onnx import TensorProto, helper

    from export.smooth import producers_and_consumers

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
        lookups.setdefault(table, []).append((node, axis, _lookup_output(node, axis, readers)))
    tables = {}
    for table, found in lookups.items():
        axes = {axis for _, axis, _ in found}
        if len(axes) == 1 and all(made is not None for _, _, made in found):
            tables[table] = axes.pop()
        else:
            log.info("embedding table %s stays float: a lookup of a form this does not know reads it", table)
    if not tables:
        return None
    saved, replaced, groups = 0, set(), {}
    for table, axis in tables.items():
        rows = (lambda table=table, axis=axis: store.array(table) if axis == 0
                else np.ascontiguousarray(store.array(table).T))
        scale = token_scales(store.array(table), axis)  # the int8 rows themselves are made when written
        shape = store.shape(table) if axis == 0 else store.shape(table)[::-1]
        store.add(f"{table}.int8", np.int8, shape, lambda rows=rows, scale=scale: int8_levels(rows(), scale, 0))
        store.add_array(scale.reshape(-1, 1), f"{table}.int8_scale")
        store.add_array(np.array(1.0, np.float32), f"{table}.int8_unit")
        store.add_array(np.array(0, np.int8), f"{table}.int8_zero")
        saved += 3 * int(np.prod(shape))
        for i, (node, _, (out, made)) in enumerate(lookups[table]):
            ids, name = node.input[1], f"{table}.lookup{i}"
            replaced.update(n.output[0] for n in made)
            groups[node.output[0]] = [
                helper.make_node("Gather", [f"{table}.int8", ids], [f"{name}.int8"], f"{name}.gather", axis=0),
                helper.make_node("DequantizeLinear", [f"{name}.int8", f"{table}.int8_unit", f"{table}.int8_zero"],
                                 [f"{name}.levels"], f"{name}.levels"),
                helper.make_node("Gather", [f"{table}.int8_scale", ids], [f"{name}.scale"], f"{name}.scale", axis=0),
                helper.make_node("Mul", [f"{name}.levels", f"{name}.scale"], [out], f"{name}.rows")]
    nodes = []  # each lookup's new nodes where the lookup was, the nodes it replaces gone
    for n in graph.node:
        nodes += groups.get(n.output[0], []) + ([] if n.output[0] in replaced else [n])
    del graph.node[:]
    graph.node.extend(nodes)
    store.remove(set(tables))
    log.info("the embedding table is stored int8 (one scale per token): %.1f MiB of float32 less", saved / 2**20)
    return {"tables": sorted(tables), "float_bytes_saved": saved}
