"""Wanda (Sun et al. 2023): |W_ij| * ||x_j||, compared within each output row."""

from __future__ import annotations

from typing import Mapping

import torch

from pipeline.core.prune.base import ScoringMethod
from pipeline.core.prune.sparsity import Axis


def wanda_score(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    return weight.abs() * input_sq_sum.sqrt().to(weight.dtype).unsqueeze(0)


class Wanda(ScoringMethod):
    name = "wanda"

    def axis(self, role: str) -> Axis:
        return "row"

    def score(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return wanda_score(weight, stats[role])
