"""Magnitude pruning: |W|, compared over the whole matrix (as in the Wanda reference)."""

from __future__ import annotations

from typing import Mapping

import torch

from pipeline.core.prune.base import ScoringMethod
from pipeline.core.prune.sparsity import Axis


class Magnitude(ScoringMethod):
    name = "magnitude"
    statistic = None  # no calibration

    def axis(self, role: str) -> Axis:
        return "matrix"

    def score(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return weight.abs()
