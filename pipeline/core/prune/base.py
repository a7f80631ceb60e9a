"""The pruning contract: two kinds of method, each stating the statistic of the projection inputs it needs.

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
from typing import Any, ClassVar, Literal, Mapping

import torch

from pipeline.core.prune.options import MethodOptions, NoOptions
from pipeline.core.prune.sparsity import Axis, SparsitySpec

MLP_ROLES = ("gate", "up", "down")
ATTENTION_ROLES = ("q", "k", "v", "o")


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


class ScoringMethod(PruningMethod):
    statistic: ClassVar[Literal["input_norms"] | None] = "input_norms"

    def inputs_read(self, role: str) -> tuple[str, ...]:
        """The roles whose input statistics :meth:`score` reads for ``role`` (default: its own)."""
        return (role,)

    @abstractmethod
    def score(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Importance of every weight of ``weight`` (higher = keep)."""


class ReconstructingMethod(PruningMethod):
    statistic: ClassVar[Literal["input_gram"]] = "input_gram"

    @abstractmethod
    def prepare(self, gram: torch.Tensor, name: str) -> Any:
        """What pruning needs from one input's ``X^T X`` (float64); may modify or free ``gram``."""

    @abstractmethod
    def prune(self, role: str, weight: torch.Tensor, prepared: Any, sparsity: SparsitySpec, name: str) -> torch.Tensor:
        """Prune ``weight`` ([out, in], float32) in place, rewriting the kept weights; return the keep-mask."""
