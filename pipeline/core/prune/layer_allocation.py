"""Per-layer sparsities for a model: the statistics pass over the dense model, then the scheme (allocation.py).

Why a pass of its own, before pruning: the ratios are tied together by the overall sparsity, so every
layer's statistic is needed before layer 0 is pruned; the pruning pass cannot gather them as it goes.
As in OWL's own code, the statistics come from the *dense* model: the calibration windows run through
the dense layers one after the other (each layer's dense outputs feed the next), and per layer the
hooks of the pruning loop (sequential.InputStats, squared input norms once per distinct input) give
``||x_j||^2`` of every pruned projection, and the residual stream entering the layer gives the scale
its errors are measured against (:func:`residual_energy`). Cost: one more forward of every layer over the calibration
windows (the pruning pass of a scoring method does two). The statistics do not depend on the target
sparsity or the method, so one pass serves every target (scripts/ppl_table.py reuses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.core.models import Projection, decoder_layers
from pipeline.core.prune.allocation import (ERROR_GRID, outlier_ratio, owl_sparsities, pruning_error_curve,
                                            sensitivity_sparsities)
from pipeline.core.prune.sequential import InputStats, _first_tensor, _to, capture_layer_inputs, input_groups
from pipeline.core.prune.wanda import wanda_score


@dataclass(frozen=True)
class AllocationSettings:
    scheme: str = "uniform"  # uniform | owl | sensitivity
    owl_lambda: float = 0.08  # OWL: band around the target
    owl_m: float = 5.0  # OWL: outlier threshold, a multiple of the layer's mean metric
    sensitivity_band: float = 0.08  # sensitivity: band around the target


@dataclass
class LayerStatistics:
    sizes: list[int]  # weights in each layer's pruned projections
    outlier_ratios: list[float]  # OWL's D per layer, at owl_m
    error_curves: torch.Tensor  # [layers, len(allocation.ERROR_GRID)]: estimated error vs fraction pruned, relative
    #                             to the layer's residual_energy
    owl_m: float


def residual_energy(hidden: torch.Tensor) -> float:
    """The median over tokens of ``||h_t||^2``, the squared norm of the residual stream entering a layer.

    Every later layer reads the residual stream through a norm, so an error added to it counts relative to
    its size; the median, because a few tokens carry massive activations in LLaMA-like models."""
    return hidden.to(torch.float64).pow(2).sum(dim=-1).median().item()


@torch.no_grad()
def measure_layers(model: nn.Module, calibration_ids: torch.Tensor, plan: list[list[Projection]], owl_m: float,
                   device: str = "cpu", progress: bool = True) -> LayerStatistics:
    """Per decoder layer, from the dense model: the size, OWL's outlier ratio and the pruning-error curve of ``plan[l]``."""
    compute = torch.device(device)
    inputs = capture_layer_inputs(model, calibration_ids, progress=progress)
    kwargs = _to(inputs.kwargs, compute, torch.float32)
    sizes, ratios, curves = [], [], []
    layers = decoder_layers(model)
    for index, layer in tqdm(list(enumerate(layers)), desc="allocation statistics", disable=not progress):
        chosen = plan[index]
        if not chosen:
            sizes.append(0), ratios.append(0.0), curves.append(pruning_error_curve([]))
            continue
        store_dtype = next(layer.parameters()).dtype
        residual = residual_energy(inputs.hidden)
        layer.to(device=compute, dtype=torch.float32)
        groups = input_groups(layer, chosen, inputs.hidden[0:1].to(compute, torch.float32), kwargs)
        hooks = InputStats(layer, groups, "input_norms")
        try:
            for s in range(inputs.hidden.shape[0]):  # the dense outputs feed the next layer
                out = layer(inputs.hidden[s : s + 1].to(compute, torch.float32), **kwargs)
                inputs.hidden[s] = _first_tensor(out)[0].to("cpu", inputs.hidden.dtype)
        finally:
            hooks.remove()
        stats = hooks.stats()
        metrics = [wanda_score(p.weight(layer), stats[p.role]).cpu() for p in chosen]
        sizes.append(sum(m.numel() for m in metrics))
        ratios.append(outlier_ratio(torch.cat([m.flatten() for m in metrics]), owl_m))
        curves.append(pruning_error_curve(m.to(torch.float64).pow(2) for m in metrics) / residual)
        layer.to(device="cpu", dtype=store_dtype)
    return LayerStatistics(sizes=sizes, outlier_ratios=ratios, error_curves=torch.stack(curves), owl_m=owl_m)


def layer_sparsities(stats: LayerStatistics, settings: AllocationSettings, target: float) -> list[float]:
    """The sparsity of every decoder layer for ``settings.scheme`` at overall sparsity ``target``."""
    if settings.scheme == "uniform":
        return [target] * len(stats.sizes)
    if settings.scheme == "owl":
        if settings.owl_m != stats.owl_m:
            raise ValueError(f"statistics measured at owl_m={stats.owl_m}, asked for {settings.owl_m}")
        return owl_sparsities(stats.outlier_ratios, stats.sizes, target, settings.owl_lambda)
    if settings.scheme == "sensitivity":
        return sensitivity_sparsities(stats.error_curves, stats.sizes, target, settings.sensitivity_band)
    raise ValueError(f"unknown allocation scheme {settings.scheme!r}")


def layer_records(stats: LayerStatistics, settings: AllocationSettings, sparsities: list[float],
                  achieved: list[float | None]) -> list[dict]:
    """One entry per decoder layer for sparsity.json: the ratio asked for, the one read back, the statistic behind it."""
    records = []
    for index, (size, wanted, got) in enumerate(zip(stats.sizes, sparsities, achieved)):
        record = {"layer": index, "weights": size, "sparsity": wanted, "achieved": got}
        if settings.scheme == "owl":
            record["outlier_ratio"] = stats.outlier_ratios[index]
        elif settings.scheme == "sensitivity":
            record["estimated_error"] = float(np.interp(wanted, ERROR_GRID.numpy(), stats.error_curves[index].numpy()))
        records.append(record)
    return records
