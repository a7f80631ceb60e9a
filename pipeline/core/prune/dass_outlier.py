"""DaSS with outlier input columns protected (``prune.method: dass_outlier``): an opt-in variant, not the authors'
rule (that is pipeline/core/prune/dass.py, pinned by tests/test_fidelity.py).

DaSS compares gate_proj / up_proj weights within each input column j, so it prunes the same share of every
column, also of the few columns whose input x_j carries outlier activations (on Qwen2.5 max/median ||x_j|| is
4-16x): those weights feed every GLU channel with the largest inputs, and losing half of them costs most of
DaSS's error there (benchmarks/mask_error.py). This variant keeps the outlier columns of gate_proj and up_proj
dense and meets the sparsity on the others:

- outlier columns: ``||x_j|| > outlier_ratio x median_j ||x_j||`` (x: the input of gate/up), at most
  ``max_outlier_fraction`` of the columns (the largest norms first);
- unstructured: the weights DaSS would prune in the whole matrix (``in x int(out x sparsity)``) are pruned
  from the other columns, spread evenly (a column gets one more where the count does not divide; the columns
  of smallest ||x_j|| first), each column choosing by DaSS's score, so the matrix's sparsity is exactly the
  recipe's;
- N:M: a column keeps N of every M weights along the output dimension or is dense, so the outlier columns are
  dense and every other column is exact N:M; the matrix's sparsity is then below the recipe's by the outlier
  columns' share (recorded, as always, in sparsity.json), since N:M leaves no column room to prune more.

down_proj and attention projections: as DaSS (Wanda).
"""

from __future__ import annotations

from typing import Mapping

import torch

from pipeline.core.prune.dass import DaSS
from pipeline.core.prune.masks import prune_lowest_per_row, select_mask
from pipeline.core.prune.options import DassOutlierOptions
from pipeline.core.prune.sparsity import SparsitySpec


def outlier_columns(input_sq_sum: torch.Tensor, ratio: float, max_fraction: float) -> torch.Tensor:
    """Indices of the input features whose norm exceeds ``ratio`` x the median norm, the largest first, at most
    ``int(max_fraction x features)``."""
    norms = input_sq_sum.double().sqrt()
    limit = int(max_fraction * norms.numel())
    if limit == 0:
        return torch.empty(0, dtype=torch.long)
    order = torch.argsort(norms, descending=True, stable=True)[:limit]
    return order[norms[order] > ratio * norms.median()]


def protected_column_mask(score: torch.Tensor, spec: SparsitySpec, outliers: torch.Tensor,
                          input_sq_sum: torch.Tensor) -> torch.Tensor:
    """Keep-mask of a gate/up weight ``[out, in]``: DaSS's column-wise choice with the ``outliers`` columns dense."""
    out, cols = score.shape
    dense = torch.zeros(cols, dtype=torch.bool)
    dense[outliers] = True
    if spec.is_nm:
        keep = select_mask(score, spec, "column")
        keep[:, dense.to(keep.device)] = True
        return keep
    total = cols * int(out * spec.fraction)  # what plain DaSS prunes in this matrix
    others = (~dense).nonzero().flatten()
    if others.numel() == 0:
        raise ValueError("every input column is an outlier")
    base, extra = divmod(total, others.numel())
    if base + (extra > 0) > out:
        raise ValueError(f"{outliers.numel()} dense columns leave too few weights to prune {total} of {out * cols}")
    counts = torch.zeros(cols, dtype=torch.long)
    counts[others] = base
    if extra:  # one more in the columns of smallest input norm
        counts[others[torch.argsort(input_sq_sum[others].double(), stable=True)[:extra]]] += 1
    return prune_lowest_per_row(score.t(), counts).t().contiguous()


class DaSSOutlier(DaSS):
    name = "dass_outlier"
    Options = DassOutlierOptions

    def inputs_read(self, role: str) -> tuple[str, ...]:
        return ("down", "gate") if role in ("gate", "up") else (role,)

    def select(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor], spec: SparsitySpec):
        score = self.score(role, weight, stats)
        if role not in ("gate", "up"):
            return select_mask(score, spec, self.axis(role))
        x = stats["gate"] if "gate" in stats else stats[role]
        outliers = outlier_columns(x, self.options.outlier_ratio, self.options.max_outlier_fraction)
        return protected_column_mask(score, spec, outliers, x)
