"""The pruning methods by recipe name: one table; each method takes its own parameter model's fields."""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from pipeline.common.errors import PipelineError
from pipeline.core.prune.base import PruningMethod
from pipeline.core.prune.dass import DaSS
from pipeline.core.prune.dass_outlier import DaSSOutlier
from pipeline.core.prune.magnitude import Magnitude
from pipeline.core.prune.options import METHOD_NAMES, OPTIONS
from pipeline.core.prune.sparsegpt import SparseGPT
from pipeline.core.prune.wanda import Wanda

METHODS: dict[str, type[PruningMethod]] = {cls.name: cls for cls in (DaSS, DaSSOutlier, Wanda, SparseGPT, Magnitude)}


def make_method(name: str, options: Mapping[str, Any] | BaseModel | None = None, **keywords) -> PruningMethod:
    """The method ``name`` with its parameters (``prune.<name>`` of the recipe, or keywords: ``alpha=0.5``)."""
    if name not in METHODS:
        raise PipelineError(f"unknown pruning method {name!r}", f"use one of: {', '.join(METHOD_NAMES)}")
    given = options.model_dump() if isinstance(options, BaseModel) else dict(options or {})
    try:
        return METHODS[name](**given, **keywords)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PipelineError(f"prune.{name}: {problems}",
                            f"keys of prune.{name}: {', '.join(OPTIONS[name].model_fields) or 'none'}") from None
