"""From importance scores to keep-masks: the one selection core every method shares.

A score matrix has the shape of a linear layer's weight, ``[out_features, in_features]``.
A mask is a bool tensor of the same shape, True where the weight is kept.

Every method states along which axis its scores are compared:

- ``"row"``: within each output row (Wanda, DaSS down_proj). N:M groups are M consecutive
  weights of a row, i.e. along the input dimension.
- ``"column"``: within each input column (DaSS gate_proj / up_proj, "input-balanced").
  N:M groups are M consecutive weights of a column, i.e. along the output dimension.
- ``"matrix"``: over the whole matrix (magnitude, as in the Wanda reference). N:M groups
  lie along the input dimension, as for ``"row"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from pipeline.errors import PipelineError

Axis = Literal["row", "column", "matrix"]

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class SparsitySpec:
    """Unstructured (``fraction`` pruned) or N:M (keep ``n`` of every ``m``)."""

    fraction: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.fraction:g}"

    @classmethod
    def parse(cls, value: float | int | str) -> "SparsitySpec":
        """Parse ``0.5``, ``"0.5"``, ``"50%"`` or ``"2:4"``; raise PipelineError on nonsense."""
        if isinstance(value, str):
            match = _NM.match(value)
            if match:
                n, m = int(match.group(1)), int(match.group(2))
                if m < 2 or not 0 < n < m:
                    raise PipelineError(
                        f"sparsity {value!r} is not a valid N:M pattern (need 0 < N < M)",
                        "keep N of every M weights, e.g. '2:4' or '4:8'",
                    )
                return cls(fraction=1.0 - n / m, n=n, m=m)
            text = value.strip()
            try:
                number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                raise PipelineError(
                    f"sparsity {value!r} is neither a fraction nor an N:M pattern",
                    "write a fraction in (0, 1) such as 0.5, or a pattern such as '2:4'",
                ) from None
            value = number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"sparsity {value!r} has the wrong type", "write 0.5 or '2:4'")
        if not 0.0 < float(value) < 1.0:
            raise PipelineError(
                f"sparsity {value} is outside (0, 1)",
                "give the fraction of weights to remove, e.g. 0.5 for 50%",
            )
        return cls(fraction=float(value))

    def check_fits(self, shape: tuple[int, int], axis: Axis, name: str) -> None:
        """N:M needs M to divide the grouped dimension of the weight."""
        if not self.is_nm:
            return
        dim = shape[0] if axis == "column" else shape[1]
        which = "output" if axis == "column" else "input"
        if dim % self.m:
            raise PipelineError(
                f"{self} sparsity does not fit {name}: its {which} dimension {dim} is not a multiple of {self.m}",
                f"choose an M that divides {dim}, or list {name} under prune.ignore",
            )


def select_mask(score: torch.Tensor, spec: SparsitySpec, axis: Axis) -> torch.Tensor:
    """Keep-mask for ``score`` (``[out, in]``): the highest scores survive within each comparison group."""
    if score.dim() != 2:
        raise ValueError(f"score must be 2-D, got shape {tuple(score.shape)}")
    if axis == "column":
        return select_mask(score.t().contiguous(), spec, "row").t().contiguous()
    if spec.is_nm:
        return _nm_mask_rows(score, spec.n, spec.m)
    if axis == "row":
        return _unstructured_mask_rows(score, spec.fraction)
    if axis == "matrix":
        return _unstructured_mask_rows(score.reshape(1, -1), spec.fraction).reshape(score.shape)
    raise ValueError(f"unknown axis {axis!r}")


def _unstructured_mask_rows(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """Prune exactly ``int(cols * fraction)`` lowest scores in every row."""
    rows, cols = score.shape
    n_prune = int(cols * fraction)
    if n_prune == 0:
        return torch.ones_like(score, dtype=torch.bool)
    # Selection instead of a full sort: the n_prune-th smallest score of each row is the threshold.
    threshold = torch.kthvalue(score, n_prune, dim=1, keepdim=True).values
    below = score < threshold
    # Ties at the threshold: prune the first ones (in index order) until each row has exactly n_prune,
    # so that counts are exact and the result deterministic (e.g. for all-zero activations).
    missing = n_prune - below.sum(dim=1, keepdim=True)
    at = score == threshold
    prune = below | (at & (at.cumsum(dim=1) <= missing))
    return ~prune


def _nm_mask_rows(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive scores along each row (vectorised)."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    keep = torch.topk(groups, n, dim=2, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, keep, True)
    return mask.reshape(rows, cols)
