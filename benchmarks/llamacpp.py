"""llama.cpp as a peer engine: the dense model written as GGUF folders (export/gguf_writer.py), described for the
benchmark runner like artifacts, and their perplexity measured through llama.cpp by the same protocol as every
other perplexity (pipeline/core/evaluate.py's windows; the loss of each window's L - 1 next-token predictions).

A GGUF folder is benchmarked by the ``llamacpp`` engine only (it has no ONNX graph); its ``method`` is
``gguf-<type>`` so that it is never taken for the dense reference of the ONNX engines.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

from pipeline.common.child import run_child
from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

DESCRIPTION = "gguf.json"  # export/gguf_writer.py writes it beside llamacpp/
GRAPH = "llamacpp"


def is_gguf_folder(path: Path) -> bool:
    return (Path(path) / DESCRIPTION).is_file() and (Path(path) / GRAPH / "model.gguf").is_file()


def describe_gguf(path: Path, key: str | None = None) -> dict:
    """A GGUF folder as the benchmark runner describes an artifact (key, layers, graphs, ...)."""
    path = Path(path)
    if not is_gguf_folder(path):
        raise PipelineError(f"{path} is not a GGUF folder (no {DESCRIPTION} and {GRAPH}/model.gguf)",
                            "write one with `pipeline gguf` or the benchmark stage (benchmark.engines: [llamacpp])")
    info = json.loads((path / DESCRIPTION).read_text())
    config = json.loads((path / GRAPH / "config.json").read_text())
    label = key or f"{info['name']}-{info['type']}"
    return {"key": label, "name": label, "path": str(path), "method": f"gguf-{info['type']}",
            "model": info.get("source") or info["name"], "requested_sparsity": None, "sparsity": 0.0,
            "layers": config["num_hidden_layers"], "graphs": [GRAPH],
            "gguf_type": info["type"] if info["type"] != "source" else f"source {info.get('file_type', '')}".strip(),
            "bytes": info["bytes"],
            "perplexity": {"measured_in": "llamacpp", **info["perplexity"]} if info.get("perplexity") else None}


def write_ggufs(model, tokenizer, root: Path, types: list[str], name: str, source: str | None = None,
                source_gguf: Path | None = None) -> list[Path]:
    """``root/<type>/`` for each type (export/gguf_writer.py; ``source``: the file the model came from, linked);
    returns the folders."""
    from export.gguf_writer import SOURCE, link_source_gguf, write_gguf

    folders = []
    for gguf_type in types:
        folder = Path(root) / gguf_type
        if gguf_type == SOURCE:
            if source_gguf is None:
                raise PipelineError("benchmark.gguf_types has source, but the model was not loaded from a GGUF file",
                                    "drop source from benchmark.gguf_types, or load the model with model.gguf_file")
            link_source_gguf(model.config, source_gguf, folder, name, source=source)
        else:
            write_gguf(model, tokenizer, folder, gguf_type, name, source_gguf=source_gguf, source=source)
        folders.append(folder)
    return folders


def gguf_perplexity(folder: Path, tokens, context_length: int, max_windows: int | None = None,
                    bos_token_id: int | None = None, threads: int | None = None, stage: str = "benchmark",
                    timeout: float = 6 * 3600) -> dict:
    """The perplexity of ``folder``'s GGUF in llama.cpp on ``tokens`` (a 1-D tensor), windows as in
    pipeline/core/evaluate.py; the result has the keys of ``pipeline.core.evaluate.perplexity``'s."""
    import numpy as np

    from pipeline.core.evaluate import evaluation_windows

    windows = evaluation_windows(tokens, context_length, max_windows, bos_token_id)
    with tempfile.TemporaryDirectory(prefix="gguf-ppl-") as tmp:
        path = Path(tmp) / "windows.npy"
        np.save(path, windows.numpy().astype(np.int64))
        out = run_child("benchmarks.engines.llamacpp_runner",
                        {"gguf": str(Path(folder) / GRAPH / "model.gguf"), "windows": str(path), "threads": threads},
                        f"llama.cpp perplexity of {folder}", stage, timeout)
    n = out["windows"] * (context_length - 1)
    return {"perplexity": math.exp(out["nll"] / n), "windows": out["windows"], "context_length": context_length,
            "tokens": out["windows"] * context_length, "bos_per_window": bos_token_id is not None,
            "engine": "llamacpp", "engine_version": out["engine_version"], "seconds": out["seconds"]}


def record_perplexity(folder: Path, result: dict) -> None:
    """Add the perplexity to the folder's gguf.json (the report reads it from there)."""
    from pipeline.common.outputs import write_json_atomic

    path = Path(folder) / DESCRIPTION
    info = json.loads(path.read_text())
    info["perplexity"] = result
    write_json_atomic(path, info)
