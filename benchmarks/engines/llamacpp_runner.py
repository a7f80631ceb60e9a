"""llama.cpp through its Python binding (llama-cpp-python, the ``llamacpp`` extra): the dense model as GGUF
(export/gguf_writer.py), the KV cache inside llama.cpp.

- decode: the cache is filled with ``sequence_length - 1`` tokens once; each timed step evaluates one token
  at the next position, then the binding's token count is set back, so the next step overwrites the same
  cache cell (llama-cpp-python drops the cells past its count before it evaluates).
- prefill: ``prefill_length`` tokens into an empty cache.

The context is ``sequence_length`` and the batch as large, threads for decode and for batches alike, as the
other engines get. Also the child entry point of the GGUF's perplexity (``perplexity_child``): every window
evaluated with logits at every position, scored as pipeline/core/evaluate.py scores the PyTorch model.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.engines import MeasureSpec, graph_folder
from benchmarks.engines.timing import time_steps
from pipeline.common.errors import PipelineError

MODEL_FILE = "model.gguf"  # export/gguf_writer.py writes it; named here too, benchmarks must not import export's heavy side
INSTALL = ("./install.sh --with-llamacpp (llama-cpp-python; pip builds llama.cpp from source for this CPU, about "
           "10-15 minutes on 2 cores) or pip install 'dass-pipeline[llamacpp]', or drop llamacpp from benchmark.engines")


def binding():
    """The llama_cpp module, or a clear error naming the extra to install."""
    try:
        import llama_cpp
    except ImportError:
        raise PipelineError("the llamacpp engine needs llama-cpp-python, which is not installed", INSTALL) from None
    return llama_cpp


def open_gguf(path: Path, context: int, threads: int | None, logits_all: bool = False, f32_cache: bool = False,
              flash_attention: bool = False):
    """A llama.cpp context on ``path``: ``context`` positions, one batch as large, ``threads`` (None: all cores),
    flash attention on or off (the binding's default: off). The KV cache is llama.cpp's default (float16, what its
    users run) unless ``f32_cache``."""
    llama_cpp = binding()
    if not Path(path).is_file():
        raise PipelineError(f"no GGUF file at {path}", "write it first (pipeline gguf, or the benchmark stage)")
    threads = threads or os.cpu_count()
    with _extra_buffers(llama_cpp, uses_extra_buffers(system_info())):
        return llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context,
                               n_threads=threads, n_threads_batch=threads, logits_all=logits_all, verbose=False,
                               seed=0, flash_attn=flash_attention,
                               **({"type_k": 0, "type_v": 0} if f32_cache else {}))  # 0: GGML_TYPE_F32


#: why a build with AMX runs without llama.cpp's extra buffer types (its AMX and repacked weight layouts)
AMX_CRASH = ("llama.cpp's AMX matmul crashes (segmentation fault) on quantized weights in llama-cpp-python 0.3.36 "
             "(llama.cpp issue 20824; seen here on an Intel Xeon with AMX-INT8, on a tiny test model and on "
             "Qwen2.5-Coder-1.5B Q4_K_M), so the weights stay in llama.cpp's plain layout")


def uses_extra_buffers(info: str) -> bool:
    """Whether llama.cpp may put weights in its extra buffer types (AMX tiles, repacked Q4_0): not where the build
    has AMX-INT8 (``AMX_CRASH``); everywhere else yes, llama.cpp's own default."""
    return "AMX_INT8 = 1" not in info


@contextmanager
def _extra_buffers(llama_cpp, enabled: bool):
    """llama-cpp-python's ``Llama`` takes no ``use_extra_bufts``: the model parameters it starts from get it set
    while one model loads."""
    if enabled:
        yield
        return
    module = llama_cpp.llama_cpp
    default = module.llama_model_default_params

    def without():
        params = default()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without
    try:
        yield
    finally:
        module.llama_model_default_params = default


def system_info() -> str:
    """The instruction sets llama.cpp's CPU library was compiled for (AVX2, AVX512, ...; compile-time, not what the
    CPU has: benchmarks/engines/llamacpp_build.py compares them with /proc/cpuinfo)."""
    return binding().llama_print_system_info().decode(errors="replace").strip()


def machine() -> dict:
    """llama.cpp's system info, the build (install.sh's record) and how it fits this CPU (llamacpp_build.describe)."""
    from benchmarks.engines.llamacpp_build import describe

    info = system_info()
    extra = uses_extra_buffers(info)
    return {"system_info": info, **describe(info), "extra_buffers": extra,
            **({} if extra else {"extra_buffers_off": AMX_CRASH})}


def measure(spec: MeasureSpec) -> dict:
    folder = graph_folder(spec)
    if spec.mode == "batch":
        return _measure_batch(spec, folder)
    t0 = time.perf_counter()
    llm = open_gguf(folder / MODEL_FILE, spec.sequence_length, spec.threads, flash_attention=spec.flash_attention)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    if spec.mode == "decode":
        past = spec.sequence_length - 1
        llm.eval(rng.integers(0, vocab, past).tolist())
        token = [int(rng.integers(0, vocab))]

        def step():
            llm.n_tokens = past
            llm.eval(token)
    else:
        ids = rng.integers(0, vocab, spec.prefill_length).tolist()

        def step():
            llm.n_tokens = 0
            llm.eval(ids)

    result = time_steps(step, spec.warmup_seconds, spec.seconds)
    return {**result, "load_seconds": load_s, "threads": llm.n_threads if hasattr(llm, "n_threads") else spec.threads,
            **_facts(folder), "kv_cache": "internal (llama.cpp)", "flash_attention": spec.flash_attention}


def _facts(folder: Path) -> dict:
    described = folder.parent / "gguf.json"
    return {"engine_version": binding().__version__, "machine": machine(),
            "gguf_type": json.loads(described.read_text())["type"] if described.is_file() else None}


def _measure_batch(spec: MeasureSpec, folder: Path) -> dict:
    from benchmarks.engines.llamacpp_batch import BatchedDecoder

    t0 = time.perf_counter()
    decoder = BatchedDecoder(folder / MODEL_FILE, spec.batch_size, spec.sequence_length, spec.threads,
                             flash_attention=spec.flash_attention)
    load_s = time.perf_counter() - t0
    try:
        result = time_steps(decoder.step, spec.warmup_seconds, spec.seconds)
    finally:
        decoder.close()
    return {**result, "load_seconds": load_s, "threads": spec.threads or os.cpu_count(), **_facts(folder),
            "kv_cache": f"internal (llama.cpp), {spec.batch_size} sequences", "flash_attention": spec.flash_attention}


def window_nll(llm, window: list[int]) -> float:
    """Summed next-token loss of one window (positions 0..L-2 predict 1..L-1), logits from llama.cpp."""
    llm.reset()
    llm.eval(window)
    logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    targets = np.asarray(window[1:])
    return float((log_z - logits[np.arange(len(targets)), targets]).sum())


def perplexity_child(payload: dict) -> dict:
    """Child: summed loss over the windows in ``payload['windows']`` (a .npy file [windows, L])."""
    windows = np.load(payload["windows"])
    llm = open_gguf(Path(payload["gguf"]), windows.shape[1], payload.get("threads"), logits_all=True)
    t0 = time.perf_counter()
    total = sum(window_nll(llm, [int(t) for t in w]) for w in windows)
    return {"nll": total, "windows": int(windows.shape[0]), "context_length": int(windows.shape[1]),
            "seconds": time.perf_counter() - t0, "engine_version": binding().__version__}


if __name__ == "__main__":
    from pipeline.common.child import child_main

    child_main(perplexity_child)
