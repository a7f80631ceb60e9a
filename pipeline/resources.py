"""Refuse a run early when this machine cannot hold what its stages will need (each stage states its own
estimate, pipeline/stages/).

Estimates come from the model's config alone (read before the weights load), so a 7B run on a
machine that is too small stops in seconds with the numbers instead of hours in. They are upper
bounds, not exact figures; docs/measurements.md compares them with measured peaks.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

GiB = 2**30
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: interpreter, torch, tokenizer, engine libraries
BASE = 1 * GiB


@dataclass(frozen=True)
class Shapes:
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config) -> "Shapes":
        hidden = config.hidden_size
        heads = getattr(config, "num_attention_heads", 1)
        return cls(hidden=hidden, intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,
                   layers=config.num_hidden_layers, vocab=config.vocab_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or hidden // heads,
                   tied=bool(getattr(config, "tie_word_embeddings", False)))

    @property
    def layer_params(self) -> int:
        attention = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return attention + 3 * self.hidden * self.intermediate

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.vocab * self.hidden * (1 if self.tied else 2)


def dtype_bytes(recipe) -> int:
    return BYTES[recipe.model.dtype]


def model_bytes(shapes: Shapes, recipe) -> int:
    """The model's weights in the dtype it is held in."""
    return shapes.params * dtype_bytes(recipe)


def perplexity_ram(shapes: Shapes, recipe) -> int:
    """The model, plus one window's logits, log-softmax and temporaries (float32)."""
    return model_bytes(shapes, recipe) + recipe.evaluation.context_length * shapes.vocab * 4 * 3 + BASE


def _free_disk(path: Path) -> int:
    existing = next(p for p in (Path(path).absolute(), *Path(path).absolute().parents) if p.exists())
    return shutil.disk_usage(existing).free


def _count(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"


def stage_estimates(shapes: Shapes, recipe, stages: list) -> dict[str, tuple[int, int]]:
    """{stage: (peak RAM, disk written)} in bytes, each stage's own estimate (pipeline/stages/)."""
    return {stage.name: stage.estimate(shapes, recipe) for stage in stages}


def peak_ram(config, recipe, stages: list) -> int:
    """The highest of the stages' RAM estimates, in bytes: what one run of them needs at once (they run one after
    another). A Ray sweep asks each point's node for this much memory (pipeline/sweep_ray.py)."""
    return max((ram for ram, _ in stage_estimates(Shapes.from_config(config), recipe, stages).values()), default=0)


def check_resources(config, recipe, stages: list, run_dir: Path, quiet: bool = False) -> dict:
    """Raise PipelineError naming the stage and the numbers when RAM or disk will not do; return the estimates.

    ``stages``: the Stage objects that will run; each estimates its own (peak RAM, disk written). ``quiet``: the
    estimate goes to the log file only (``pipeline validate`` prints it with the recipe).
    """
    shapes = Shapes.from_config(config)
    estimates = stage_estimates(shapes, recipe, stages)
    if not estimates:
        return {}
    available = psutil.virtual_memory().available
    stage, (ram, _) = max(estimates.items(), key=lambda item: item[1][0])
    (log.debug if quiet else log.info)("preflight: %s parameters; peak RAM about %.1f GiB (stage %s), %.1f GiB "
                                       "available", _count(shapes.params), ram / GiB, stage, available / GiB)
    if ram > available:
        raise PipelineError(
            f"stage {stage} needs about {ram / GiB:.1f} GiB of RAM for {_count(shapes.params)} parameters "
            f"({recipe.model.dtype}), but {available / GiB:.1f} GiB is available",
            "free memory, use a machine with more RAM, lower calibration.num_samples / seq_len, or pass "
            "--skip-preflight if you know the estimate is too high")
    disk = sum(d for _, d in estimates.values())
    free = _free_disk(run_dir)
    if disk > free:
        raise PipelineError(
            f"stages {', '.join(estimates)} will write about {disk / GiB:.1f} GiB to {run_dir}, "
            f"but {free / GiB:.1f} GiB is free there",
            "free some space, set output_dir on a larger disk, or pass --skip-preflight")
    return {s: {"ram_gib": r / GiB, "disk_gib": d / GiB} for s, (r, d) in estimates.items()}


def local_config(model) -> tuple[object | None, str]:
    """The source's config as attributes, read without the network and without torch (``pipeline validate``):
    (config, where) or (None, why not). A GGUF source (``model.gguf_file``) gives its shapes from the GGUF header;
    a hub model that is not in the local cache has none."""
    import json
    from types import SimpleNamespace

    from pipeline.core.model_store import resolve_source

    try:
        folder: Path | None = Path(resolve_source(model.source)).expanduser()
    except PipelineError as exc:  # a fetched model not fetched yet, an embedded-model package not installed
        return None, exc.problem
    if not folder.exists():  # a hub id: its config (or GGUF) only where the hub cache already has it
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model.source, model.gguf_file or "config.json", revision=model.revision)
        folder = Path(cached).parent if isinstance(cached, str) else None
    gguf = Path(folder) / model.gguf_file if folder is not None and model.gguf_file else None
    if gguf is not None and gguf.is_file():  # the weights' own shapes (a config.json beside it is not what loads)
        from pipeline.core.gguf_config import gguf_config

        return gguf_config(gguf), str(gguf)
    path = Path(folder) / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None, (f"no {model.gguf_file or 'config.json'} of {model.source} on this machine (a hub model not "
                      "downloaded yet)")
    data = json.loads(path.read_text())
    if "hidden_size" not in data and isinstance(data.get("text_config"), dict):
        data = {**data, **data["text_config"]}  # a multimodal checkpoint: the language model's shapes
    return SimpleNamespace(**data), str(path)


def engine_memory(artifact: Path, engine: str, manifest: dict) -> int:
    """About what ``engine`` holds to run ``artifact``: its weights file, less the pruned zeros of the decoder
    linears for DeepSparse (it keeps only the non-zeros of a sparse weight: 32-layer 7B-shaped DaSS 70% measured
    9.99 GiB, this gives 10.0; 50%: 14.80, this 15.3), plus 10% and 1 GiB."""
    import json
    from types import SimpleNamespace

    from export.graph_formats import GRAPHS

    graph = GRAPHS[engine]
    folder = Path(artifact) / engine
    if graph.made_from and not folder.is_dir():  # OpenVINO reads the onnxruntime graph where no IR was exported
        folder = Path(artifact) / graph.made_from
    data = sum(f.stat().st_size for f in (folder / "model.onnx", folder / "model.onnx_data",
                                          folder / "openvino_model.bin") if f.is_file())
    if graph.holds_only_nonzeros:
        shapes = Shapes.from_config(SimpleNamespace(**json.loads((folder / "config.json").read_text())))
        zeros = manifest["sparsity"]["overall_decoder_linears"] * shapes.layers * shapes.layer_params * 4
        data = max(data - int(zeros), 0)
    return int(1.1 * data) + BASE


def engine_unheld(artifact: Path, engine: str, manifest: dict) -> dict | None:
    """Why ``engine`` is not run on ``artifact`` here (it would hold more than the memory available: an engine
    killed for memory would cost the stage it follows), or None where it fits."""
    needed, available = engine_memory(artifact, engine, manifest), psutil.virtual_memory().available
    if needed <= available:
        return None
    return {"skipped": f"not run: {engine} would hold about {needed / GiB:.1f} GiB of weights, {available / GiB:.1f} "
                       "GiB available", "needed_bytes": needed, "available_bytes": available}
