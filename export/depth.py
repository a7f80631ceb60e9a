"""An N-layer graph from a 2-layer one: layer 1's nodes copied for layers 2 .. N-1, renamed and rewired.

The exporter traces each decoder layer under its module scope (``/model/layers.i/...`` in Optimum's graph,
``/layers.i/...`` in the DeepSparse graph, see export/deepsparse_graph.py), so a layer's nodes are found by
name. A copy of layer 1 for layer k reads what layer k-1 wrote where layer 1 read what layer 0 wrote (the
residual stream), reads the tensors every layer shares (rotary rows, the attention mask) as they are, and
gets its own cache input and output (``past_key_values.k.*`` -> ``present.k.*``) and its own copies of
layer 1's initializers. What ran after layer 1 (the final norm and the LM head) then reads layer N-1.

Every step is checked: a layer-1 node reading anything else, or a tensor of layer 0 that has no layer-1
counterpart, stops with an error rather than writing a graph that computes something else.
tests/test_depth.py compares a graph deepened from 2 to 4 layers with the 4-layer graph exported directly.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import onnx

from pipeline.common.errors import PipelineError

SCOPE = re.compile(r"^/(?:model/)?layers\.(\d+)/")
CACHE = re.compile(r"^(past_key_values|present)\.(\d+)\.(key|value)$")


def layers_alike(config) -> bool:
    """Whether every decoder layer traces to the same graph, so one can be copied for all: not where layers
    alternate between sliding-window and full attention (Gemma 2/3), whose graphs differ by layer type."""
    types = getattr(config, "layer_types", None)
    return not types or len(set(types)) == 1


def _layer_of_name(name: str) -> int | None:
    found = SCOPE.match(name)
    return int(found.group(1)) if found else None


def renamed(name: str, source: int, target: int) -> str:
    """A tensor or node name of layer ``source`` as layer ``target`` names it."""
    cache = CACHE.match(name)
    if cache and int(cache.group(2)) == source:
        return f"{cache.group(1)}.{target}.{cache.group(3)}"
    found = SCOPE.match(name)
    if found and int(found.group(1)) == source:
        return name[:found.start(1)] + str(target) + name[found.end(1):]
    return f"{name}::layers.{target}"  # a name without a scope (an initializer, a folded constant)


@dataclass
class Layers:
    """The nodes of each layer (by position in the graph), found by scope and by what a Constant feeds."""

    of_node: list[int | None]

    @classmethod
    def find(cls, graph: onnx.GraphProto) -> "Layers":
        of_node = [_layer_of_name(node.name) for node in graph.node]
        consumers: dict[str, set[int | None]] = {}
        for node, layer in zip(graph.node, of_node):
            for name in node.input:
                consumers.setdefault(name, set()).add(layer)
        for i, node in enumerate(graph.node):  # an unscoped Constant that only one layer reads belongs to it
            if of_node[i] is None and node.op_type == "Constant" and not node.input:
                readers = set().union(*(consumers.get(out, set()) for out in node.output))
                if len(readers) == 1 and None not in readers:
                    of_node[i] = next(iter(readers))
        return cls(of_node)


def deepen(model: onnx.ModelProto, depth: int) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]]:
    """``model`` (a 2-layer decoder graph, weights not loaded) made ``depth`` layers deep.

    Returns the new model and, for every initializer the copies add, ``{new name: (layer-1 name, layer)}``
    so the weights writer knows which tensor of which layer it stands for.
    """
    graph = model.graph
    layers = Layers.find(graph)
    found = sorted({layer for layer in layers.of_node if layer is not None})
    if found != [0, 1]:
        raise PipelineError(f"the template graph has decoder layers {found}, not [0, 1]",
                            "export the template with num_hidden_layers = 2 (this is a bug if you did)")
    if depth < 2:
        raise PipelineError(f"cannot deepen a 2-layer graph to {depth} layers", "export models that shallow whole")
    produced_by: dict[str, int | None] = {}
    for node, layer in zip(graph.node, layers.of_node):
        for out in node.output:
            produced_by[out] = layer
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, set[int | None]] = {}
    for node, layer in zip(graph.node, layers.of_node):
        for name in node.input:
            readers.setdefault(name, set()).add(layer)
    own_initializers = {name for name in initializers if readers.get(name) == {1}}
    for name, init in initializers.items():
        if {0, 1} <= readers.get(name, set()) and np.prod(init.dims, dtype=np.int64) > 1:
            raise PipelineError(f"layers 0 and 1 share the initializer {name}",
                                "export the template with distinct weights in every layer")
    cache_inputs = {i.name for i in graph.input if CACHE.match(i.name)}
    # Layer-0 tensors that hold layer 0's own state: computed from its weights or its cache. Layer 1 reading one
    # reads the residual stream; reading any other layer-0 tensor (the exporter merges equal subexpressions, e.g.
    # the rotary rows' reshape) reads a value every layer shares.
    stateful = set(name for name, readers_ in readers.items() if readers_ == {0} and name in initializers)
    stateful |= {i.name for i in graph.input if (m := CACHE.match(i.name)) and m.group(2) == "0"}
    for node, layer in zip(graph.node, layers.of_node):
        if layer == 0 and any(name in stateful for name in node.input):
            stateful.update(node.output)
    downstream_of_layer0 = set()  # unscoped tensors computed from layer 0: layer 1 may not read them as shared
    for node, layer in zip(graph.node, layers.of_node):
        if layer is None and any(produced_by.get(n) == 0 or n in downstream_of_layer0 for n in node.input):
            downstream_of_layer0.update(node.output)

    def input_for(name: str, k: int) -> str:
        """What layer k's copy of a layer-1 node reads where layer 1 reads ``name``."""
        if not name:
            return name
        if produced_by.get(name) == 1 or name in own_initializers:
            return renamed(name, 1, k)
        if name in cache_inputs:
            cache = CACHE.match(name)
            if int(cache.group(2)) != 1:
                raise PipelineError(f"layer 1 reads the cache of layer {cache.group(2)} ({name})",
                                    "the template graph is not a decoder this tool can deepen")
            return renamed(name, 1, k)
        if produced_by.get(name) == 0 and name not in stateful:
            return name  # a value every layer shares, computed once in layer 0
        if produced_by.get(name) == 0:  # the residual stream: layer k reads what layer k-1 hands on
            return stream_out if k == 2 else renamed(stream_out, 1, k - 1)
        if name in downstream_of_layer0:
            raise PipelineError(f"layer 1 reads {name}, computed outside the layers from layer 0's output",
                                "the template graph is not a decoder this tool can deepen")
        return name  # shared by every layer: graph inputs, rotary rows, the mask, shared constants

    # What runs after layer 1 and depends on it: moves behind the copies and reads layer depth-1 instead.
    tail, after_layer1 = [], {name for name, layer in produced_by.items() if layer == 1}
    for i, node in enumerate(graph.node):
        if layers.of_node[i] is None and any(name in after_layer1 for name in node.input):
            tail.append(i)
            after_layer1.update(node.output)
    tail_set = set(tail)
    # The residual stream: the one layer-0 state layer 1 reads, and the one layer-1 tensor read after layer 1.
    stream_in = {name for node, layer in zip(graph.node, layers.of_node) if layer == 1
                 for name in node.input if produced_by.get(name) == 0 and name in stateful}
    graph_outputs = {out.name for out in graph.output}
    stream_outs = {name for i in tail for name in graph.node[i].input
                   if produced_by.get(name) == 1 and name not in graph_outputs}
    if len(stream_in) != 1 or len(stream_outs) != 1:
        raise PipelineError(f"cannot find the residual stream between layers (layer 1 reads {sorted(stream_in)} "
                            f"of layer 0; {sorted(stream_outs)} of layer 1 is read after it)",
                            "the template graph is not a decoder this tool can deepen")
    stream_out = next(iter(stream_outs))

    new_nodes, added_initializers = [], []
    weights_of: dict[str, tuple[str, int]] = {}
    for i, node in enumerate(graph.node):
        if i not in tail_set:
            new_nodes.append(node)
    layer1 = [node for node, layer in zip(graph.node, layers.of_node) if layer == 1]
    for k in range(2, depth):
        for node in layer1:
            clone = copy.deepcopy(node)
            clone.name = renamed(node.name, 1, k) if node.name else node.name
            clone.input[:] = [input_for(name, k) for name in node.input]
            clone.output[:] = [renamed(name, 1, k) for name in node.output]
            new_nodes.append(clone)
        for name in sorted(own_initializers):
            clone = copy.deepcopy(initializers[name])
            clone.name = renamed(name, 1, k)
            added_initializers.append(clone)
            weights_of[clone.name] = (name, k)
    last = depth - 1
    for i in tail:
        node = copy.deepcopy(graph.node[i])
        node.input[:] = [renamed(name, 1, last) if produced_by.get(name) == 1 else name for name in node.input]
        new_nodes.append(node)

    deeper = copy.deepcopy(model)
    g = deeper.graph
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(added_initializers)
    g.ClearField("value_info")  # shapes of the copies are not recorded; engines infer them
    for field, prefix in ((g.input, "past_key_values"), (g.output, "present")):
        entries = list(field)
        at = max(i for i, v in enumerate(entries) if v.name.startswith(f"{prefix}.1.")) + 1
        layer1 = [v for v in entries if v.name.startswith(f"{prefix}.1.")]
        extra = []
        for k in range(2, depth):
            for v in layer1:
                entry = copy.deepcopy(v)
                entry.name = renamed(v.name, 1, k)
                extra.append(entry)
        del field[:]
        field.extend(entries[:at] + extra + entries[at:])
    # graph outputs produced by layer 1 other than its cache (none in our graphs) would now be stale
    for out in g.output:
        if produced_by.get(out.name) == 1 and not CACHE.match(out.name):
            raise PipelineError(f"graph output {out.name} comes from layer 1", "this graph cannot be deepened")
    return deeper, weights_of
