"""Pruning: the shared sequential core and one small module per method."""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.prune.base import PruningMethod
from pipeline.prune.dass import DaSS
from pipeline.prune.magnitude import Magnitude
from pipeline.prune.sparsegpt import SparseGPT
from pipeline.prune.wanda import Wanda

METHOD_NAMES = ("dass", "wanda", "sparsegpt", "magnitude")


def make_method(name: str, alpha: float = 0.5) -> PruningMethod:
    if name == "dass":
        return DaSS(alpha=alpha)
    if name == "wanda":
        return Wanda()
    if name == "sparsegpt":
        return SparseGPT()
    if name == "magnitude":
        return Magnitude()
    raise PipelineError(f"unknown pruning method {name!r}", f"use one of: {', '.join(METHOD_NAMES)}")
