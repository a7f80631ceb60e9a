"""DaSS (Guo, Kamigaito, Watanabe, TMLR 2025): dependency-aware semi-structured sparsity for GLU MLPs.

The GLU intermediate channel i is produced by row i of gate_proj and of up_proj and consumed
by column i of down_proj. DaSS scores the producing weights by the norm of the channel they
produce:

- gate_proj, up_proj: ``|W_ij| * ||y_i||^alpha``, compared within each input column j
  (input-balanced); N:M groups run along the output dimension.
- down_proj: ``|W_ij| * ||y_j||``, compared within each output row (as Wanda).

y is the input of down_proj. Attention projections, when pruned, use Wanda.
"""

from __future__ import annotations

from typing import Mapping

import torch

from pipeline.core.prune.base import ScoringMethod
from pipeline.core.prune.options import DassOptions
from pipeline.core.prune.sparsity import Axis
from pipeline.core.prune.wanda import wanda_score


class DaSS(ScoringMethod):
    name = "dass"
    Options = DassOptions

    def axis(self, role: str) -> Axis:
        return "column" if role in ("gate", "up") else "row"

    def inputs_read(self, role: str) -> tuple[str, ...]:
        return ("down",) if role in ("gate", "up") else (role,)

    def score(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if role in ("gate", "up"):
            # ||y_i||^alpha == (sum y_i^2)^(alpha / 2): the norm of the channel row i produces.
            channel = stats["down"].pow(self.options.alpha / 2).to(weight.dtype).unsqueeze(1)
            return weight.abs() * channel
        return wanda_score(weight, stats[role])
