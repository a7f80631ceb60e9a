"""The pruning methods by recipe name."""

from __future__ import annotations

from pipeline.common.errors import PipelineError
from pipeline.core.prune.base import PruningMethod
from pipeline.core.prune.dass import DaSS
from pipeline.core.prune.magnitude import Magnitude
from pipeline.core.prune.sparsegpt import SparseGPT
from pipeline.core.prune.wanda import Wanda

METHOD_NAMES = ("dass", "wanda", "sparsegpt", "magnitude")


def make_method(name: str, alpha: float = 0.5, block_size: int = 128, dampening_frac: float = 0.01) -> PruningMethod:
    """The method ``name``; ``alpha`` is DaSS's exponent, ``block_size`` and ``dampening_frac`` SparseGPT's."""
    if name == "dass":
        return DaSS(alpha=alpha)
    if name == "wanda":
        return Wanda()
    if name == "sparsegpt":
        return SparseGPT(block_size=block_size, dampening_frac=dampening_frac)
    if name == "magnitude":
        return Magnitude()
    raise PipelineError(f"unknown pruning method {name!r}", f"use one of: {', '.join(METHOD_NAMES)}")
