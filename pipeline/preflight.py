"""Refuse a run early when this machine cannot hold what its stages will need.

Estimates come from the model's config alone (read before the weights load), so a 7B run on a
machine that is too small stops in seconds with the numbers instead of hours in. They are upper
bounds of the kind measured in README "Measured" (7B DaSS prune in float16: 16.8 GiB projected,
estimated here at about 18 GiB), not exact figures.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipeline.errors import PipelineError

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


def needs(shapes: Shapes, recipe, stage: str) -> tuple[int, int]:
    """(peak RAM, disk written) in bytes for one stage of ``recipe`` on a model of ``shapes``."""
    dtype = BYTES[recipe.model.dtype]
    model = shapes.params * dtype
    fp32 = shapes.params * 4
    cal, ev = recipe.calibration, recipe.evaluation
    logits = ev.context_length * shapes.vocab * 4 * 3  # logits, log-softmax, gradient-free temporaries
    if stage == "prune":
        buffer = cal.num_samples * cal.seq_len * shapes.hidden * dtype  # the layer-by-layer activations
        layer = shapes.layer_params * 4 * 3  # one layer in float32, its masks and scores
        hessian = 2 * max(shapes.hidden, shapes.intermediate) ** 2 * 8 if recipe.prune.method == "sparsegpt" else 0
        return model + buffer + layer + hessian + BASE, int(model * 1.05)
    if stage in ("baseline", "evaluate"):
        return model + logits + BASE, 0
    if stage == "export":
        from export.artifact import estimated_bytes  # the export stage's own disk check uses the same figure

        return 2 * fp32 + BASE, estimated_bytes(shapes.params, tuple(recipe.export.engines))
    if stage == "quantize":
        return 2 * fp32 + BASE, int(fp32 * 0.6)  # float graph read, INT8 weights written (a quarter) + activations
    if stage == "benchmark":
        return int(1.5 * fp32) + BASE, 0  # each engine loads one graph in its own process
    raise ValueError(stage)


def _free_disk(path: Path) -> int:
    existing = next(p for p in (Path(path).absolute(), *Path(path).absolute().parents) if p.exists())
    return shutil.disk_usage(existing).free


def _count(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"


def check_resources(config, recipe, stages: list[str], run_dir: Path) -> dict:
    """Raise PipelineError naming the stage and the numbers when RAM or disk will not do; return the estimates."""
    shapes = Shapes.from_config(config)
    estimates = {stage: needs(shapes, recipe, stage) for stage in stages}
    if not estimates:
        return {}
    available = psutil.virtual_memory().available
    stage, (ram, _) = max(estimates.items(), key=lambda item: item[1][0])
    log.info("preflight: %s parameters; peak RAM about %.1f GiB (stage %s), %.1f GiB available",
             _count(shapes.params), ram / GiB, stage, available / GiB)
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
            f"stages {', '.join(stages)} will write about {disk / GiB:.1f} GiB to {run_dir}, "
            f"but {free / GiB:.1f} GiB is free there",
            "free some space, set output_dir on a larger disk, or pass --skip-preflight")
    return {s: {"ram_gib": r / GiB, "disk_gib": d / GiB} for s, (r, d) in estimates.items()}
