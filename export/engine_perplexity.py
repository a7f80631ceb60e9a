"""Perplexity of an artifact's graph computed by the engine its users run it in (export/graph_formats.py:
``GraphFormat.engine``), with the windows and loss of pipeline/core/evaluate.py, reused as export/onnx_perplexity.py
reuses it. One figure per engine: a graph that computes the wrong thing in its engine shows it here, where a figure
computed in another runtime would not.

ONNX Runtime's and OpenVINO's graphs already run in their own engine there (export/onnx_perplexity.py). DeepSparse's
graph is run by the DeepSparse engine: a scratch copy of its ``model.onnx`` (export/engines.py: deepsparse_scratch),
made static for one evaluation window by DeepSparse's own helper (``overwrite_onnx_model_inputs_for_kv_cache_models``:
``input_ids`` and ``positions`` of the window's length q), compiled by ``deepsparse.Engine`` without its internal KV
cache and run window by window. Its past is one slot of zeros, masked out (``causal_mask`` and ``attention_mask`` 0
there), because with a past of length 0 DeepSparse 1.8 compiles none of the graph (``fraction_of_supported_ops``
0.0): all of it then runs in the engine's ONNX Runtime fallback, which would measure ONNX Runtime again. The figure
records the fraction the engine compiled. A DeepSparse failure is a C++ assertion that kills its process, so the
engine runs in a child (pipeline/common/child.py) and a death becomes one PipelineError naming the engine and graph.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from export.graph_formats import GRAPHS
from pipeline.common.child import child_main, run_child
from pipeline.common.errors import PipelineError

#: the past slots fed to DeepSparse besides each window (zeros, masked out): a past of 0 is not compiled
MASKED_PAST = 1

#: each engine's package and how a user gets it
PACKAGES = {
    "deepsparse": ("deepsparse", "pip install deepsparse==1.8.0 (x86-64 Linux, Python 3.8-3.11)"),
    "onnxruntime": ("onnxruntime", "pip install onnxruntime==1.26.0"),
    "openvino": ("openvino", "pip install 'dass-pipeline[openvino]' (openvino==2026.4.1; ./install.sh --with-openvino)"),
}


def check_engine(folder: Path, engine: str) -> None:
    """Refuse, in one line naming the fix, a perplexity of ``folder``'s ``engine`` graph that cannot be computed
    here: an engine that runs no ONNX graph of an artifact, a graph the artifact lacks, an engine not installed."""
    folder = Path(folder)
    if engine not in GRAPHS:
        raise PipelineError(
            f"no perplexity of the artifact {folder} in {engine}: {engine} does not run an artifact's graphs",
            f"ask one of {', '.join(GRAPHS)} (the PyTorch figure of the model it was exported from is the evaluate "
            "stage's perplexity.json; a GGUF's perplexity is measured in llama.cpp by the benchmark stage)")
    graph = GRAPHS[engine]
    readable = [folder / engine / graph.graph_file]
    if graph.made_from:
        readable.append(folder / graph.made_from / GRAPHS[graph.made_from].graph_file)
    if not any(path.is_file() for path in readable):
        raise PipelineError(f"the artifact {folder} has no {engine} graph ({engine}/{graph.graph_file})",
                            f"export it with export.engines including {graph.made_from or engine}, or ask one of "
                            f"the graphs it has")
    package, install = PACKAGES[graph.engine]
    if importlib.util.find_spec(package) is None:
        raise PipelineError(f"a perplexity in {graph.engine} needs the {package} package, which is not installed",
                            install)


def engine_perplexity(folder: Path, engine: str, tokens: torch.Tensor, context_length: int,
                      max_windows: int | None = None, progress: bool = True, bos_token_id: int | None = None,
                      stage: str = "perplexity") -> dict:
    """The perplexity of ``folder``'s ``engine`` graph computed by that graph's engine (the keys of
    pipeline.core.evaluate.perplexity's result, plus ``graph`` and ``engine``). Refused up front by
    ``check_engine``."""
    check_engine(folder, engine)
    graph = GRAPHS[engine]
    if graph.deployed_engine is None:  # its runtime is its engine
        from export.onnx_perplexity import artifact_perplexity

        result = artifact_perplexity(folder, tokens, context_length, max_windows, engine, progress, bos_token_id)
    else:
        windows = tokens.numel() // context_length if max_windows is None else max_windows
        with tempfile.TemporaryDirectory(prefix="engine-perplexity-") as tmp:  # argv cannot hold a long text
            path = Path(tmp) / "tokens.npy"
            np.save(path, tokens.numpy())
            result = run_child("export.engine_perplexity", {
                "engine": graph.deployed_engine, "folder": str(Path(folder) / engine), "tokens": str(path),
                "context_length": context_length, "max_windows": max_windows, "bos_token_id": bos_token_id},
                f"{graph.deployed_engine} perplexity of {Path(folder) / engine}", stage,
                timeout=max(1800, 120 * windows))
    return {**result, "graph": engine, "engine": graph.engine}


def masked_past_feed(config, input_ids: np.ndarray, past: int = MASKED_PAST) -> dict[str, np.ndarray]:
    """The DeepSparse graph's inputs for ``input_ids`` [1, q] at positions 0..q-1 after ``past`` cache slots of zeros
    that nothing attends to (export/checks.py's feed with an empty cache, widened)."""
    from export.checks import deepsparse_graph_feed

    feed = deepsparse_graph_feed(config, input_ids)
    q = input_ids.shape[1]
    for name, value in list(feed.items()):
        if name.startswith("past_key_values"):
            feed[name] = np.zeros((*value.shape[:2], past, *value.shape[3:]), value.dtype)
    feed["attention_mask"] = np.concatenate([np.zeros((1, past), np.int64), feed["attention_mask"]], 1)
    feed["causal_mask"] = np.concatenate([np.zeros((1, 1, q, past), np.int64), feed["causal_mask"]], 3)
    return feed


class DeepSparseLogits(nn.Module):
    """``model(input_ids=...).logits`` computed by the DeepSparse engine, for windows of exactly ``window`` tokens
    (the engine is compiled for that one static shape)."""

    def __init__(self, folder: Path, window: int, threads: int | None = None):
        super().__init__()
        import deepsparse
        from deepsparse.cpu import cpu_architecture
        from deepsparse.utils.onnx import overwrite_onnx_model_inputs_for_kv_cache_models
        from transformers import AutoConfig

        from export.engines import deepsparse_scratch

        self.config, self.window = AutoConfig.from_pretrained(folder), window
        with deepsparse_scratch(folder) as scratch:
            path = str(scratch / "model.onnx")
            overwrite_onnx_model_inputs_for_kv_cache_models(path, sequence_length=window + MASKED_PAST,
                                                            input_ids_length=window)
            self.engine = deepsparse.Engine(path, batch_size=1, num_cores=threads)
        arch = cpu_architecture()
        self.about = {"engine_version": deepsparse.__version__, "isa": arch.isa, "vnni": bool(arch.vnni),
                      "fraction_of_supported_ops": self.engine.fraction_of_supported_ops, "masked_past": MASKED_PAST,
                      "kv_cache": "none (static window)"}
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # evaluate() asks for a device

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        ids = input_ids.cpu().numpy()
        if ids.shape != (1, self.window):
            raise ValueError(f"compiled for one window of {self.window} tokens, given {ids.shape}")
        feed = masked_past_feed(self.config, ids)
        logits = self.engine.run([feed[name] for name in self.engine.input_names])[0]
        return SimpleNamespace(logits=torch.from_numpy(np.asarray(logits)))


def _deepsparse_perplexity(folder: str, tokens: str, context_length: int, max_windows: int | None,
                           bos_token_id: int | None) -> dict:
    from pipeline.core.evaluate import perplexity

    model = DeepSparseLogits(Path(folder), context_length)
    result = perplexity(model, torch.from_numpy(np.load(tokens)), context_length, max_windows, progress=False,
                        bos_token_id=bos_token_id)
    return {**result, **model.about}


#: the engines whose perplexity runs in a child process, by GraphFormat.deployed_engine
CHILD_ENGINES = {"deepsparse": _deepsparse_perplexity}


def _child_main(spec: dict) -> dict:
    return CHILD_ENGINES[spec.pop("engine")](**spec)


if __name__ == "__main__":
    child_main(_child_main)
