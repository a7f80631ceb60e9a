"""The pruning contract: a method states the statistic of the projection inputs it needs and prunes one
decoder layer at a time through :meth:`PruningMethod.prune_layer`, given a :class:`LayerPass` (the loop's
handle on that layer and its calibration windows). The loop itself (sequential.py) knows no method kind.

Statistics are accumulated over every calibration token by forward hooks (pipeline/core/prune/sequential.py),
once per *distinct* projection input: q, k and v read one tensor, gate and up read one tensor, so each
such group is summed once and every role in it gets the same statistic.

- :class:`ScoringMethod` (DaSS, Wanda, magnitude): a pure function from (role, weight, statistics) to
  importance scores; the shared selection core (masks.py) turns scores into a mask. Its statistic is
  ``"input_norms"``: per role, the sum over tokens of the squared input, shape ``[in_features]``, so
  ``stats[r].sqrt()`` is the per-feature L2 norm ||x_j||; for ``down`` it is ||y_j|| of the GLU
  intermediate activation y = act(gate(x)) * up(x). ``None``: no calibration at all (magnitude).
- :class:`ReconstructingMethod` (SparseGPT): also rewrites the weights it keeps. Its statistic is
  ``"input_gram"``: ``X^T X`` of one distinct input, ``[in_features, in_features]``. The loop gathers
  one such matrix at a time, hands it to :meth:`ReconstructingMethod.prepare` (which may consume it),
  and prunes every projection reading that input with the prepared state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Literal, Mapping, Protocol

import torch
from torch import nn

from pipeline.core.models import Projection
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.options import MethodOptions, NoOptions
from pipeline.core.prune.sparsity import Axis, SparsitySpec

MLP_ROLES = ("gate", "up", "down")
ATTENTION_ROLES = ("q", "k", "v", "o")


@dataclass
class Pruned:
    """One pruned projection: its keep-mask, and the weight to write when the method rewrote it
    (``None``: the loop multiplies the layer's own weight by the mask)."""

    proj: Projection
    mask: torch.Tensor
    weight: torch.Tensor | None = None


class LayerPass(Protocol):
    """One decoder layer being pruned, as the loop hands it to a method (pipeline/core/prune/sequential.py)."""

    layer: nn.Module
    projections: list[Projection]  # every projection of the layer, in scope or not
    has_data: bool  # calibration windows exist (False for a method without a statistic)

    def groups(self, projections: list[Projection]) -> list[list[Projection]]:
        """``projections`` grouped by the input tensor they read."""

    def collect(self, groups: list[list[Projection]], last: bool = False,
                kind: Literal["input_norms", "input_gram", "input_gram_float32"] | None = None) -> dict[str, torch.Tensor]:
        """The method's statistic (or ``kind``) of each group, over every window. ``last``: the method reads the
        dense layer no more (the one-shot variant then lets this pass's outputs feed the next layer)."""

    def dense_done(self) -> None:
        """The method reads the dense layer no more; call before the first rewritten weight is yielded."""


class PruningMethod(ABC):
    name: ClassVar[str]
    statistic: ClassVar[Literal["input_norms", "input_gram"] | None]
    Options: ClassVar[type[MethodOptions]] = NoOptions  # its parameters (pipeline/core/prune/options.py)

    def __init__(self, **options):
        """``options``: the fields of the method's own ``Options`` model, validated by it."""
        self.options = self.Options(**options)

    @property
    def needs_calibration(self) -> bool:
        return self.statistic is not None

    @abstractmethod
    def axis(self, role: str) -> Axis:
        """Along which axis the weights of this projection compete (see pipeline/core/prune/sparsity.py)."""

    @abstractmethod
    def prune_layer(self, step: LayerPass, plan: list[Projection], spec: SparsitySpec, prefix: str) -> Iterator[Pruned]:
        """Prune the projections ``plan`` of ``step.layer`` to ``spec``, yielding each (in plan order). ``prefix``:
        ``layers.{i}``, for names in messages."""


class ScoringMethod(PruningMethod):
    statistic: ClassVar[Literal["input_norms"] | None] = "input_norms"

    def inputs_read(self, role: str) -> tuple[str, ...]:
        """The roles whose input statistics :meth:`score` reads for ``role`` (default: its own)."""
        return (role,)

    @abstractmethod
    def score(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Importance of every weight of ``weight`` (higher = keep)."""

    def prune_layer(self, step: LayerPass, plan: list[Projection], spec: SparsitySpec, prefix: str) -> Iterator[Pruned]:
        """One pass gathers every needed input's statistic from the dense layer, then score + select."""
        stats: dict[str, torch.Tensor] = {}
        if step.has_data and self.statistic is not None:
            needed = {r for p in plan for r in self.inputs_read(p.role)}
            stats = step.collect(step.groups([p for p in step.projections if p.role in needed]), last=True)
        for proj in plan:
            yield Pruned(proj, self.select(proj.role, proj.weight(step.layer), stats, spec))

    def select(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor], spec: SparsitySpec) -> torch.Tensor:
        """The keep-mask of one projection: its scores compared along the method's axis (the shared core)."""
        return select_mask(self.score(role, weight, stats), spec, self.axis(role))


class ReconstructingMethod(PruningMethod):
    statistic: ClassVar[Literal["input_gram"]] = "input_gram"

    @abstractmethod
    def prepare(self, gram: torch.Tensor, name: str) -> Any:
        """What pruning needs from one input's ``X^T X`` (float64); may modify or free ``gram``."""

    @abstractmethod
    def prune(self, role: str, weight: torch.Tensor, prepared: Any, sparsity: SparsitySpec, name: str) -> torch.Tensor:
        """Prune ``weight`` ([out, in], float32) in place, rewriting the kept weights; return the keep-mask."""

    def prune_layer(self, step: LayerPass, plan: list[Projection], spec: SparsitySpec, prefix: str) -> Iterator[Pruned]:
        """One pass per distinct input gathers its ``X^T X`` (the largest first, while no rewritten copy is held);
        every projection reading it is rewritten into a side copy, so the layer stays dense until all are done."""
        rewritten: dict[str, Pruned] = {}
        for group in sorted(step.groups(plan), key=lambda g: -step.layer.get_submodule(g[0].path).in_features):
            gram = step.collect([group]).pop(group[0].role)
            prepared = self.prepare(gram, f"{prefix}.{group[0].path}")
            del gram
            for proj in group:
                weight = proj.weight(step.layer).clone()
                mask = self.prune(proj.role, weight, prepared, spec, f"{prefix}.{proj.name}")
                rewritten[proj.name] = Pruned(proj, mask, weight)
            del prepared
        step.dense_done()
        for proj in plan:
            yield rewritten.pop(proj.name)
