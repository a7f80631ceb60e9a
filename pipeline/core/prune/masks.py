"""From importance scores to keep-masks: the one selection core every method shares.

A score matrix has the shape of a linear layer's weight, ``[out_features, in_features]``.
A mask is a bool tensor of the same shape, True where the weight is kept. The axis along which
scores compete is the method's (pipeline/core/prune/sparsity.py).

Tie rule (unstructured and N:M alike): among equal scores, the one with the lower index along the
compared axis is pruned first, as a stable ascending sort that prunes its first entries would do.
So the count pruned per group is exact and the mask deterministic (all-zero activations, or the
repeated values of a dequantized 4-bit checkpoint, tie often).
"""

from __future__ import annotations

import torch

from pipeline.core.prune.sparsity import Axis, SparsitySpec


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
    """Prune the ``m - n`` lowest of every ``m`` consecutive scores along each row (ties: lower index first)."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    prune = torch.sort(groups, dim=2, stable=True).indices[..., : m - n]
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(2, prune, False)
    return mask.reshape(rows, cols)


def prune_lowest_per_row(score: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep-mask that prunes the ``counts[r]`` lowest scores of every row ``r`` (ties: lower index first)."""
    rows, cols = score.shape
    if counts.shape != (rows,) or (counts < 0).any() or (counts > cols).any():
        raise ValueError(f"counts must be {rows} numbers in [0, {cols}]")
    order = torch.sort(score, dim=1, stable=True).indices
    pruned_in_order = torch.arange(cols, device=score.device).unsqueeze(0) < counts.to(score.device).unsqueeze(1)
    keep = torch.ones_like(score, dtype=torch.bool)
    keep.scatter_(1, order, ~pruned_in_order)
    return keep
