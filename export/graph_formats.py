"""The artifact's graph formats as one table: what differs between the DeepSparse graph, the ONNX Runtime graph and the
OpenVINO IR. Torch-free and onnx-free; the code of export/ and pipeline/ that behaves differently per graph reads an
entry's fields instead of comparing the graph's name (tests/test_graph_formats.py walks the code for such
comparisons).

- ``internal_cache``: the graph's inputs are DeepSparse's (``positions``, ``causal_mask``, a cache of all heads, which
  DeepSparse keeps inside the engine); otherwise Optimum's standard with-past graph, the KV cache of the KV heads as
  inputs and outputs.
- ``runtime``: what computes its logits for the checks, the reference perplexity and accuracy (DeepSparse's graph too
  runs in ONNX Runtime there: the same numbers, and its engine's pipeline has no logits API).
- ``deployed_engine``: the engine its users run it in, where that is not ``runtime``; the perplexity recorded for that
  engine is computed by the engine itself, apart (export/engine_perplexity.py). ``engine``: the one it runs in.
- ``traced``: exported from PyTorch by Optimum; otherwise converted from the ``made_from`` graph.
- ``weights_always_external`` / ``pads_weights_file``: DeepSparse rewrites ``model.onnx`` when it loads it (loaders
  give it a copy, which must be small), and its INT8 kernels read past the last weight (export/artifact.py:
  DEEPSPARSE_DATA_TAIL).
- ``reads_shared_weights``: with ``export.share_weights`` this graph's weights file becomes a hard link to the
  traced graph's that holds the same bytes (export/shared_weights.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class GraphFormat:
    name: str  # the folder in the artifact, the key of the manifest's "engines"
    load: str  # how a user loads it
    internal_cache: bool = False
    runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    graph_file: str = "model.onnx"
    traced: bool = True
    made_from: str | None = None
    weights_always_external: bool = False
    pads_weights_file: bool = False
    reads_shared_weights: bool = False
    holds_only_nonzeros: bool = False  # its engine keeps only the non-zeros of a pruned weight in memory
    deployed_engine: Literal["deepsparse"] | None = None

    @property
    def engine(self) -> str:
        """The engine its users run it in, and in which its per-engine perplexity is computed."""
        return self.deployed_engine or self.runtime

    @property
    def in_openvino(self) -> bool:
        return self.runtime == "openvino"

    @property
    def kv_cache(self) -> str:
        return "internal (DeepSparse engine)" if self.internal_cache else "external (inputs/outputs)"


GRAPHS: dict[str, GraphFormat] = {g.name: g for g in (
    GraphFormat("deepsparse", load='deepsparse.TextGeneration(model_path="ARTIFACT/deepsparse")', internal_cache=True,
                weights_always_external=True, pads_weights_file=True, holds_only_nonzeros=True,
                deployed_engine="deepsparse"),
    GraphFormat("onnxruntime", load='ORTModelForCausalLM.from_pretrained("ARTIFACT/onnxruntime")',
                reads_shared_weights=True),
    GraphFormat("openvino", load='openvino.Core().compile_model("ARTIFACT/openvino/openvino_model.xml", "CPU")',
                graph_file="openvino_model.xml", traced=False, made_from="onnxruntime", runtime="openvino"),
)}

#: the graphs Optimum traces from PyTorch, in export order
ONNX_GRAPHS = tuple(name for name, graph in GRAPHS.items() if graph.traced)


def graph_feed(name: str, input_names, config, ids) -> dict:
    """The inputs of graph ``name`` for a prefill of ``ids`` with an empty cache (export/checks.py)."""
    from export.checks import deepsparse_graph_feed, onnxruntime_graph_feed

    if GRAPHS[name].internal_cache:
        return deepsparse_graph_feed(config, ids)
    return onnxruntime_graph_feed(input_names, config, ids)


def graph_logits(name: str, path, config, ids):
    """Logits of the ONNX graph ``path`` of format ``name`` for ``ids`` [batch, seq] (export/checks.py)."""
    from export.checks import deepsparse_graph_logits, onnxruntime_graph_logits

    run = deepsparse_graph_logits if GRAPHS[name].internal_cache else onnxruntime_graph_logits
    return run(path, config, ids)
