"""A tied embedding stored once in each exported graph.

With ``tie_word_embeddings`` the embedding table E [vocab, hidden] is also the LM head (logits = x E^T), but the
exporters write it twice: the DeepSparse graph holds E for the lookup and its own transposed copy E^T
[hidden, vocab] as the head's MatMul weight (890 MiB more on Qwen2.5-Coder-1.5B: 151936 x 1536 float32), and the
ONNX Runtime graph holds E and reads ``Transpose(E)`` for the head. Both graphs are rewritten to hold E^T alone, as
the head's constant MatMul weight (the form DeepSparse's kernels and the INT8 head read, export/quantize.py), and
the lookup reads its columns:

    Gather(E, ids)     becomes     Transpose(Gather(E^T, ids, axis=1), perm=[1, .., rank(ids), 0])

A lookup copies values, so the logits are the same numbers (checked against PyTorch by the export); both graphs
hold the same E^T bytes, so the ONNX Runtime graph still reads the DeepSparse graph's weights file
(export/shared_weights.py). The weights file is rewritten one tensor at a time (export/graph_tensors.py).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from export.shared_weights import DATA

log = logging.getLogger(__name__)


def _attribute(node, name, default):
    return next((a.i if a.type == a.INT else list(a.ints) for a in node.attribute if a.name == name), default)


def _rank(graph, name: str) -> int | None:
    for value in [*graph.input, *graph.value_info]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def plan(store, vocab_size: int) -> dict | None:
    """What :func:`store_tied_once` would rewrite in ``store``'s graph: {table, lookup, head, transposed, form}, or
    None when the graph holds no tied table twice (an untied head, or a shape this does not know)."""
    from export.smooth import producers_and_consumers

    graph = store.model.graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    producers, consumers = producers_and_consumers(graph)
    lookups = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
               and len(inits[n.input[0]]) == 2 and inits[n.input[0]][0] == vocab_size and _attribute(n, "axis", 0) == 0]
    if len(lookups) != 1 or _rank(graph, lookups[0].input[1]) is None:
        return None
    lookup = lookups[0]
    table = lookup.input[0]
    for head in (n for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2):
        weight = head.input[1]
        before = producers.get(weight)
        if before is not None and before.op_type == "Transpose" and before.input[0] == table \
                and _attribute(before, "perm", [1, 0]) == [1, 0] \
                and {n.name for n in consumers[table]} == {lookup.name, before.name}:
            return {"table": table, "lookup": lookup, "head": head, "transpose": before, "form": "Transpose(table)"}
        if weight in inits and inits[weight] == inits[table][::-1] \
                and [n.name for n in consumers[table]] == [lookup.name] \
                and np.array_equal(store.array(weight), store.array(table).T):
            return {"table": table, "lookup": lookup, "head": head, "transpose": None, "form": "transposed copy"}
    return None


def store_tied_once(graph_path: Path, vocab_size: int) -> dict | None:
    """Rewrite the graph at ``graph_path`` (model.onnx with model.onnx_data beside it, or inline weights) so that
    its tied embedding table is stored once, as E^T; returns what was done, or None when there was nothing to do."""
    from onnx import helper

    from export.graph_tensors import GraphTensors

    graph_path = Path(graph_path)
    store = GraphTensors.open(graph_path)
    found = plan(store, vocab_size)
    if found is None:
        return None
    graph = store.model.graph
    table, lookup, head, transpose = found["table"], found["lookup"], found["head"], found["transpose"]
    if transpose is None:
        columns = head.input[1]  # the exporter's own E^T
    else:
        columns = f"{table}.transposed"
        store.add(columns, np.float32, store.shape(table)[::-1],
                  lambda: np.ascontiguousarray(store.array(table).T))
        head.input[1] = columns
        graph.node.remove(transpose)
    saved = int(np.prod(store.shape(table))) * 4
    store.remove({table})
    rank = _rank(graph, lookup.input[1])
    out = lookup.output[0]
    lookup.input[0], lookup.output[0] = columns, f"{out}.columns"
    del lookup.attribute[:]
    lookup.attribute.append(helper.make_attribute("axis", 1))
    nodes = list(graph.node)
    where = nodes.index(lookup) + 1
    nodes.insert(where, helper.make_node("Transpose", [f"{out}.columns"], [out], f"{lookup.name}.rows",
                                         perm=[*range(1, rank + 1), 0]))
    del graph.node[:]
    graph.node.extend(nodes)
    scratch = graph_path.parent / ".tied-once"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        store.save(scratch / graph_path.name)
        for name in (DATA, graph_path.name):
            if (scratch / name).exists():
                os.replace(scratch / name, graph_path.parent / name)
            else:  # every weight inline now
                (graph_path.parent / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s: the tied embedding is stored once (as the LM head's [hidden, vocab] weight; it held a %s), "
             "%.1f MiB less", graph_path.parent.name, found["form"], saved / 2**20)
    return {"table_bytes_saved": saved, "head_weight": columns, "was": found["form"]}
