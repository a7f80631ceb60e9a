"""Greedy generation with an artifact in DeepSparse, ONNX Runtime or OpenVINO, each in a child process.

A DeepSparse compile or run that fails is a C++ assertion that kills its process; no
try/except can catch it. So every engine run happens in a child (``python -m
export.engines ...``) and a death becomes one PipelineError naming the engine, the artifact,
the stage and the engine's last message; the parent and everything already written survive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from export.graph_formats import GRAPHS
from pipeline.common.child import child_main, run_child


@contextlib.contextmanager
def deepsparse_scratch(folder: str | Path):
    """A scratch view of an artifact's DeepSparse folder for the engine to load.

    DeepSparse rewrites ``model.onnx`` in place with static shapes when it loads a KV-cache
    model, which would change the artifact (and its checksum). The scratch folder holds a copy of
    ``model.onnx`` (small: the weights are external data) and links to everything else.
    """
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="deepsparse-") as tmp:
        scratch = Path(tmp)
        for item in folder.iterdir():
            if item.name == "model.onnx":
                shutil.copy2(item, scratch / item.name)
            else:
                os.symlink(item.resolve(), scratch / item.name)
        yield scratch


def _generate_deepsparse(folder: str, prompt: str, max_new_tokens: int, sequence_length: int,
                         prompt_sequence_length: int, internal_kv_cache: bool) -> dict:
    import deepsparse
    import numpy as np

    t0 = time.perf_counter()
    with deepsparse_scratch(folder) as scratch:
        pipeline = deepsparse.TextGeneration(model_path=str(scratch), sequence_length=sequence_length,
                                             prompt_sequence_length=prompt_sequence_length,
                                             internal_kv_cache=internal_kv_cache)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = pipeline(prompt=prompt, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True)
    seconds = time.perf_counter() - t0
    scores = np.asarray(out.generations[0].score)
    # Greedy: each generated token is the argmax of its scores. DeepSparse 1.8 produces one token
    # more than max_new_tokens; the extra one is dropped so that every engine returns the same count.
    ids = scores.reshape(-1, scores.shape[-1]).argmax(-1).tolist()[:max_new_tokens]
    text = pipeline.tokenizer.decode(ids, skip_special_tokens=True)
    return {"ids": ids, "text": text, "seconds": seconds, "generated": int(scores.reshape(-1, scores.shape[-1]).shape[0]),
            "compile_seconds": compile_s, "internal_kv_cache": internal_kv_cache}


def _size_cache_from_config(model) -> None:
    """Optimum's runtime sizes the empty KV cache it feeds from ``num_attention_heads`` and ``hidden_size //
    heads`` for model types missing from its lists (Gemma 2, Phi-3 in optimum-onnx 0.1.0), which a grouped-query
    model (Gemma 2, Phi-4-mini) or one with its own ``head_dim`` (Gemma 2) rejects at the first step; the graph's
    own cache inputs say the truth, so they are set from the config as our feeds do (export/checks.py)."""
    from export.deepsparse_graph import head_dim

    config = model.config
    model.num_key_value_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    model.embed_size_per_head = head_dim(config)


def _generate_onnxruntime(folder: str, prompt: str, max_new_tokens: int, threads: int | None = None) -> dict:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    t0 = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=options)
    _size_cache_from_config(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    compile_s = time.perf_counter() - t0
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    return {"ids": new, "text": tokenizer.decode(new, skip_special_tokens=True), "seconds": seconds,
            "generated": len(new), "compile_seconds": compile_s}


def _generate_openvino(folder: str, prompt: str, max_new_tokens: int, threads: int | None = None,
                       sparse: bool = False) -> dict:
    """Greedy decoding in OpenVINO's CPU plugin: the artifact's IR or ONNX Runtime graph (export/openvino_graph.py),
    the KV cache fed back as inputs, as Optimum's runtime does; stops at the end-of-sequence token like generate.
    ``sparse``: ask for the sparse weights decompression (on only where the CPU and the artifact allow it)."""
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer

    from export import openvino_graph as ovg
    from export.checks import onnxruntime_graph_feed

    root = Path(folder)
    source = ovg.graph_file(root).parent
    config, tokenizer = AutoConfig.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    path = ovg.artifact_sparse_path(root, sparse)
    t0 = time.perf_counter()
    compiled = ovg.compile_model(ovg.openvino_model(root), threads, path)
    request = compiled.create_infer_request()
    names = {i.any_name for i in compiled.inputs}
    compile_s = time.perf_counter() - t0
    prompt_ids = tokenizer(prompt, return_tensors="np").input_ids
    feed = onnxruntime_graph_feed(names, config, prompt_ids)
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    seen, new = prompt_ids.shape[1], []
    t0 = time.perf_counter()
    for _ in range(max_new_tokens):
        out = request.infer(feed)
        token = int(np.asarray(out["logits"])[0, -1].argmax())
        new.append(token)
        if token in eos:
            break
        feed = {"input_ids": np.array([[token]], np.int64), "attention_mask": np.ones((1, seen + 1), np.int64)}
        if "position_ids" in names:
            feed["position_ids"] = np.array([[seen]], np.int64)
        for i in range(config.num_hidden_layers):
            for kind in ("key", "value"):
                feed[f"past_key_values.{i}.{kind}"] = np.asarray(out[f"present.{i}.{kind}"])
        seen += 1
    seconds = time.perf_counter() - t0
    return {"ids": new, "text": tokenizer.decode(new, skip_special_tokens=True), "seconds": seconds,
            "generated": len(new), "compile_seconds": compile_s, "graph": str(ovg.graph_file(root).relative_to(root)),
            "kernels": ovg.kernels(compiled), "sparse_weights": path.as_dict()}


#: each graph's greedy generation (export/graph_formats.py: GRAPHS), run in a child process
GENERATORS = {"deepsparse": _generate_deepsparse, "onnxruntime": _generate_onnxruntime, "openvino": _generate_openvino}


def _child_main(spec: dict) -> dict:
    engine = spec.pop("engine")
    if engine in GENERATORS:
        return GENERATORS[engine](**spec)
    if engine == "abort":  # for tests: an engine that dies like a failed C++ assertion
        print("Assertion at src/lib/engine/simulated.cpp:1", file=sys.stderr, flush=True)
        os.abort()
    raise ValueError(f"unknown engine {engine}")


def generation_spec(engine: str, prompt: str, max_new_tokens: int, sequence_length: int = 256,
                    internal_kv_cache: bool = True) -> dict:
    """The keyword arguments ``run_engine`` takes for a greedy generation with ``engine``."""
    spec = {"prompt": prompt, "max_new_tokens": max_new_tokens}
    if GRAPHS[engine].internal_cache:
        # prompt_sequence_length 4: DeepSparse compiles a 4-token prefill engine besides the 1-token one
        spec.update(sequence_length=sequence_length, prompt_sequence_length=4, internal_kv_cache=internal_kv_cache)
    return spec


def run_engine(engine: str, artifact: Path | str, stage: str, timeout: float = 1800, **spec) -> dict:
    """Run ``engine`` on ``artifact/engine`` in a child process (OpenVINO: on the artifact, whose IR or ONNX Runtime
    graph it reads); returns its result dict."""
    folder = Path(artifact) / engine if engine in GRAPHS and GRAPHS[engine].traced else Path(artifact)
    payload = {"engine": engine, **({"folder": str(folder)} if engine != "abort" else {}), **spec}
    return run_child("export.engines", payload, f"{engine} on {folder}", stage, timeout)


if __name__ == "__main__":
    child_main(_child_main)
