"""Per-layer sparsity allocation: the scoring maths, as pure functions of per-layer statistics.

A scheme turns one statistic per decoder layer into one sparsity per layer, every layer's pruned
projections then pruned to its layer's ratio. ``sizes[l]`` is the number of weights in layer l's
pruned projections (0: nothing pruned there, the layer takes no part).

The overall rule: the size-weighted mean of the per-layer ratios is the requested sparsity,
``sum(sizes * ratios) == target * sum(sizes)`` (to float64 rounding), and every ratio lies in the band
``[target - band, target + band]``. The masks then prune ``floor(group * ratio)`` weights of each
comparison group (pipeline/core/prune/masks.py), as uniform pruning does with ``target``, so the
sparsity read back from the weights is below the target by less than one weight per group.

- ``uniform``: every layer ``target``.
- ``owl`` (Yin et al. 2024, Outlier Weighed Layerwise sparsity): D_l, the fraction of the Wanda metric
  ``|W_ij| * ||x_j||`` over the layer's pruned projections above ``m`` times the layer's mean metric;
  D mapped linearly, the layer with most outliers to ``target - band`` and the one with fewest to
  ``target + band``, then shifted to the exact mean (:func:`fit_weighted_mean`; where the shift would
  leave the band the ratios are clipped to it and the shift found again, so the band is a hard bound;
  OWL's own code shifts without clipping).
- ``sensitivity``: E_l(s), the estimated output error of pruning fraction s of layer l: the OBS-diagonal
  (Wanda squared) saliency ``W_ij^2 * ||x_j||^2`` summed over the fraction s of each projection's lowest
  saliencies, divided by the squared norm of the residual stream entering the layer (median over tokens):
  later layers read the stream through a norm, so an error counts relative to the stream it is added to
  (without it, the growth of activations with depth makes late layers look the most sensitive). The per-layer ratios minimise ``sum_l E_l(s_l)`` over the band at the fixed overall
  sparsity: each E_l is increasing and (nearly) convex in s, so taking band steps in order of their
  marginal error per pruned weight (water-filling) reaches the minimum on the step grid; the last step
  taken is taken in part, so the mean is exact.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

SCHEMES = ("uniform", "owl", "sensitivity")
#: fractions at which a layer's pruning error is tabulated (:func:`pruning_error_curve`)
ERROR_GRID = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
#: steps of the band over which the sensitivity allocation is optimised
BAND_STEPS = 64


def outlier_ratio(metric: torch.Tensor, m: float) -> float:
    """OWL's layerwise outlier ratio: the fraction of entries of ``metric`` larger than ``m`` times its mean."""
    values = metric.flatten().to(torch.float64)
    return (values > m * values.mean()).to(torch.float64).mean().item()


def pruning_error_curve(saliencies: Iterable[torch.Tensor], grid: torch.Tensor = ERROR_GRID) -> torch.Tensor:
    """Estimated error of pruning each fraction of ``grid`` from every tensor of ``saliencies``.

    For each tensor, the sum of its ``floor(fraction * numel)`` smallest entries; summed over the tensors
    (an iterator of tensors is consumed one at a time, so only one is sorted at once).
    """
    error = torch.zeros_like(grid)
    for saliency in saliencies:
        flat = saliency.flatten().to(torch.float64)
        cumulative = torch.cat([flat.new_zeros(1), torch.sort(flat).values.cumsum(0)])
        error += cumulative[torch.floor(grid * flat.numel() + 1e-9).long()]
    return error


def fit_weighted_mean(ratios: torch.Tensor, sizes: torch.Tensor, target: float, low: float, high: float) -> torch.Tensor:
    """``clip(ratios + c, low, high)`` with the one shift ``c`` that makes the size-weighted mean ``target``.

    The weighted mean of the clipped ratios grows monotonically with ``c``, from ``low`` to ``high``;
    bisection finds ``c`` to float64 precision. Needs ``low <= target <= high``.
    """
    ratios, weights = ratios.to(torch.float64), sizes.to(torch.float64)
    weights = weights / weights.sum()

    def mean_at(shift: float) -> float:
        return (weights * (ratios + shift).clamp(low, high)).sum().item()

    below, above = low - ratios.max().item(), high - ratios.min().item()
    for _ in range(200):
        middle = (below + above) / 2
        if mean_at(middle) < target:
            below = middle
        else:
            above = middle
    fitted = (ratios + above).clamp(low, high)
    # the last float64 rounding: spread the residual over the unclipped layers, so the mean is target
    free = (fitted > low) & (fitted < high)
    if free.any():
        residual = target - (weights * fitted).sum()
        fitted[free] += residual / weights[free].sum()
    return fitted.clamp(low, high)


def owl_sparsities(outlier_ratios: Sequence[float], sizes: Sequence[int], target: float, band: float) -> list[float]:
    """OWL: the more outliers a layer has, the lower its sparsity; linear in D, within ``target +- band``."""
    d, n = torch.tensor(outlier_ratios, dtype=torch.float64), torch.tensor(sizes, dtype=torch.float64)
    result = torch.full_like(d, target)
    used = n > 0
    spread = d[used].max() - d[used].min() if used.any() else torch.tensor(0.0)
    if spread > 0 and band > 0:
        unit = (d[used] - d[used].min()) / spread  # 0: fewest outliers, 1: most
        result[used] = fit_weighted_mean(target + band - 2 * band * unit, n[used], target, target - band, target + band)
    return result.tolist()


def sensitivity_sparsities(error_curves: torch.Tensor, sizes: Sequence[int], target: float, band: float,
                           grid: torch.Tensor = ERROR_GRID, steps: int = BAND_STEPS) -> list[float]:
    """Per-layer sparsities in ``target +- band`` minimising the summed estimated error at the size-weighted mean ``target``.

    ``error_curves[l]`` is layer l's estimated error at each fraction of ``grid`` (:func:`pruning_error_curve`).
    """
    n = torch.tensor(sizes, dtype=torch.float64)
    result = torch.full((len(sizes),), target, dtype=torch.float64)
    used = n > 0
    if band == 0 or not used.any():
        return result.tolist()
    band_grid = torch.linspace(target - band, target + band, steps + 1, dtype=torch.float64)
    errors = torch.tensor(np.stack([np.interp(band_grid.numpy(), grid.numpy(), curve.numpy())
                                    for curve in error_curves[used].to(torch.float64)]))
    widths = band_grid.diff()  # [steps]
    weights_per_step = n[used].unsqueeze(1) * widths.unsqueeze(0)  # [layers, steps] weights pruned by each step
    marginal = errors.diff(dim=1) / weights_per_step  # error per pruned weight of each step
    marginal = marginal.cummax(dim=1).values  # a layer's steps are taken in order
    order = torch.sort(marginal.flatten(), stable=True).indices
    needed = band * n[used].sum()  # weights to prune beyond every layer at target - band
    taken_before = torch.cat([torch.zeros(1, dtype=torch.float64), weights_per_step.flatten()[order].cumsum(0)[:-1]])
    fraction = ((needed - taken_before) / weights_per_step.flatten()[order]).clamp(0.0, 1.0)
    taken = torch.zeros_like(marginal).flatten()
    taken[order] = fraction
    result[used] = band_grid[0] + (taken.view_as(marginal) * widths.unsqueeze(0)).sum(dim=1)
    return result.tolist()
