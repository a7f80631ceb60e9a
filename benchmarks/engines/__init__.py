"""Engine runners for the benchmark stage. One measurement = one engine, one artifact, one mode, in
its own child process (``python -m benchmarks.engines``), so an engine abort is one clear error.

Modes (benchmarks/settings.py): ``decode`` tokens/s = 1000 / median ms of one step; ``prefill`` tokens/s =
prefill_length x 1000 / median ms; ``batch`` (N sequences, one new token each) tokens/s = N x 1000 / median ms.

Each runner warms up for ``warmup_seconds``, then times single steps for ``seconds`` and reports the
median, mean and count of the step latencies. Engine facts live in the ``ENGINES`` table below.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.engines.counted import check_decoded
from benchmarks.settings import BenchmarkSettings
from pipeline.common.child import run_child
from pipeline.common.errors import PipelineError


@dataclass(frozen=True)
class EngineFacts:
    package: str        # what must be importable
    install: str        # how a user gets it
    graph: str | None   # the artifact (or GGUF folder) subfolder it runs (None: rebuilt from config.json)
    runner: str         # module with measure(spec) -> dict
    exploits_sparsity: bool
    label: str          # how reports name it
    #: whose recorded perplexity is this engine's own (export/engine_perplexity.py: the engine that computed it);
    #: None: none is (OpenVINO with sparse weights asked: other kernels than the figure's, on a CPU with AMX)
    perplexity_in: str | None = None
    #: what it runs is the dense model's GGUF files (benchmarks/llamacpp.py), not an ONNX artifact: the benchmark
    #: stage writes GGUFs when one such engine is asked, and every ONNX cell is compared with its cells (vs_llamacpp)
    runs_gguf: bool = False
    #: the engine whose measurement of the dense artifact this engine's artifacts are also compared with (besides
    #: the dense artifact in this engine itself): the speedup of a sparse engine over a dense one (stats.py)
    dense_peer: str | None = None
    #: the engine this one is a variant of, with its sparse path asked: each artifact is compared in both, the
    #: same rounds (stats.py: openvino_sparse)
    sparse_variant_of: str | None = None
    #: its sparse kernels need AMX; asked on a CPU without it, the run says so in one line and goes on
    needs_amx: bool = False
    #: the engine of the paper's CPU table, whose decode speedups benchmarks/paper.py sets beside the paper's and in
    #: which report.py compares pruning methods at equal sparsity (exactly one engine)
    paper_engine: bool = False

    @property
    def reinitialised(self) -> bool:
        """It runs the architecture rebuilt from config.json with fresh weights (graph None): its speed is that of
        the shapes, its perplexity no artifact's (left out of the workloads and of the comparisons with GGUFs)."""
        return self.graph is None

    @property
    def runs_onnx(self) -> bool:
        """It runs an ONNX artifact's own graph (and weights)."""
        return not self.runs_gguf and not self.reinitialised


OPENVINO_INSTALL = "pip install 'dass-pipeline[openvino]' (openvino==2026.4.1; or ./install.sh --with-openvino)"

ENGINES: dict[str, EngineFacts] = {
    "deepsparse": EngineFacts("deepsparse", "pip install deepsparse==1.8.0 (x86-64 Linux, Python 3.8-3.11)",
                              "deepsparse", "benchmarks.engines.deepsparse_runner", True, "DeepSparse",
                              perplexity_in="deepsparse", dense_peer="onnxruntime", paper_engine=True),
    "onnxruntime": EngineFacts("onnxruntime", "pip install onnxruntime==1.26.0", "onnxruntime",
                               "benchmarks.engines.onnxruntime_runner", False, "ONNX Runtime",
                               perplexity_in="onnxruntime"),
    "pytorch": EngineFacts("torch", "pip install torch==2.13.0", None, "benchmarks.engines.pytorch_runner", False, "PyTorch",
                           perplexity_in="pytorch"),
    # the dense model as GGUF files (export/gguf_writer.py), one folder per type; the binding is an optional extra
    "llamacpp": EngineFacts("llama_cpp", "pip install 'dass-pipeline[llamacpp]' (llama-cpp-python; pip builds "
                            "llama.cpp from source, about 15-25 minutes on 2 cores)", "llamacpp",
                            "benchmarks.engines.llamacpp_runner", False, "llama.cpp", perplexity_in="llamacpp",
                            runs_gguf=True),
    # OpenVINO's CPU plugin on the ONNX Runtime graph (or the artifact's IR, export/openvino_graph.py); the sparse
    # variant asks for its sparse weights decompression (INT8 MatMuls on CPUs with AMX; reported off elsewhere)
    "openvino": EngineFacts("openvino", OPENVINO_INSTALL, "onnxruntime", "benchmarks.engines.openvino_runner", False,
                            "OpenVINO", perplexity_in="openvino"),
    "openvino-sparse": EngineFacts("openvino", OPENVINO_INSTALL, "onnxruntime", "benchmarks.engines.openvino_runner",
                                   True, "OpenVINO, sparse weights asked", sparse_variant_of="openvino",
                                   needs_amx=True),
}


ENGINE_NAMES = {name: facts.label for name, facts in ENGINES.items()}

#: the engine that runs the GGUF files (llama.cpp), and the paper's engine (DeepSparse): one each in the table
GGUF_ENGINE = next(name for name, facts in ENGINES.items() if facts.runs_gguf)
PAPER_ENGINE = next(name for name, facts in ENGINES.items() if facts.paper_engine)
_UNKNOWN = EngineFacts("", "", "", "", False, "")  # an engine no entry describes: an ONNX engine with no peers


def asks_ggufs(engines) -> bool:
    """One of ``engines`` runs the dense model as GGUF files (llama.cpp): the benchmark stage writes them."""
    return any(ENGINES[engine].runs_gguf for engine in engines)


def engine_facts(engine: str) -> EngineFacts:
    """The table's entry of ``engine``; results may name one this version has no entry for (a plain ONNX engine)."""
    return ENGINES.get(engine, _UNKNOWN)


@dataclass(frozen=True)
class MeasureSpec:
    """One measurement, as the child process receives it; the values come from a BenchmarkSettings."""

    engine: str
    artifact: str
    mode: str
    sequence_length: int
    prefill_length: int
    threads: int | None
    warmup_seconds: float
    seconds: float
    batch_size: int = 1
    flash_attention: bool = False  # llama.cpp only: its flash attention on (benchmark.llamacpp_flash_attention)

    @classmethod
    def of(cls, engine: str, artifact: str, mode: str, settings: BenchmarkSettings,
           size: int | None = None) -> "MeasureSpec":
        """``size``: the prompt length of a prefill (default: settings.prefill_length), the number of sequences of
        a batch (required)."""
        if mode == "batch" and not size:
            raise ValueError("a batch measurement needs its batch size")
        return cls(engine, str(artifact), mode, settings.sequence_length,
                   size if mode == "prefill" and size else settings.prefill_length, settings.threads,
                   settings.warmup_seconds, settings.seconds, size if mode == "batch" else 1,
                   engine_facts(engine).runs_gguf and mode in settings.llamacpp_flash_attention)

    @property
    def step_shape(self) -> tuple[int, int, int]:
        """(sequences, new tokens per sequence, cached tokens per sequence) of one timed step."""
        if self.mode == "prefill":
            return 1, self.prefill_length, 0
        return self.batch_size, 1, self.sequence_length - 1

    @property
    def tokens_per_step(self) -> int:
        rows, new, _ = self.step_shape
        return rows * new


def check_engine(engine: str) -> EngineFacts:
    if engine not in ENGINES:
        raise PipelineError(f"unknown benchmark engine {engine!r}", f"choose from {', '.join(ENGINES)}")
    facts = ENGINES[engine]
    if importlib.util.find_spec(facts.package) is None:
        raise PipelineError(f"the {engine} engine is not installed", f"{facts.install}, or drop it from benchmark.engines")
    return facts


def check_threads(threads: int | None) -> None:
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cores:
        raise PipelineError(f"benchmark threads={threads} but this machine has {cores} cores",
                            f"set benchmark.threads between 1 and {cores}, or null for all cores")


def graph_folder(spec: MeasureSpec) -> Path:
    """The folder the engine reads: its graph subfolder, or (PyTorch) any subfolder with config.json. (OpenVINO
    reads the artifact itself: its IR, else this ONNX Runtime graph; export/openvino_graph.py.)"""
    facts = ENGINES[spec.engine]
    root = Path(spec.artifact)
    if facts.graph:
        return root / facts.graph
    return next(p.parent for p in sorted(root.glob("*/config.json")))


def measure(spec: MeasureSpec, stage: str = "benchmark", timeout: float = 1800) -> dict:
    """Run one measurement in a child process; returns the runner's result with tokens/s added."""
    check_engine(spec.engine)
    check_threads(spec.threads)
    what = f"{spec.engine} on {spec.artifact} ({spec.mode})"
    result = run_child("benchmarks.engines", asdict(spec), what, stage, timeout)
    rows, new, _ = spec.step_shape
    check_decoded(result.get("decoded"), rows, new, what)  # the sequences the step really decoded
    result["tokens_per_s"] = spec.tokens_per_step * 1000.0 / result["ms_median"]
    return result
