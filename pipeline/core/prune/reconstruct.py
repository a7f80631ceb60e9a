"""Reconstruction after masking, for every method (recipe ``prune.reconstruct``).

- ``obs``: :class:`WithObsUpdate` wraps any method: the method chooses its masks from the dense layer as it would
  alone, then the kept weights of every projection get the OBS update (SparseGPT's reconstruction with the mask
  prescribed, pipeline/core/prune/sparsegpt.py) from ``X^T X`` of the dense layer's inputs. Pruned weights stay
  exactly zero; only kept weights change. SparseGPT's own update is already this one, so SparseGPT passes through.
- ``block``: pipeline/core/prune/block_reconstruct.py, run by the sequential loop after the masks are applied.
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch

from pipeline.core.models import Projection
from pipeline.core.prune.base import LayerPass, PruningMethod, Pruned
from pipeline.core.prune.options import ObsOptions
from pipeline.core.prune.sparsegpt import SparseGPT, inverse_hessian_factor, obs_update
from pipeline.core.prune.sparsity import Axis, SparsitySpec

RECONSTRUCT_MODES = ("none", "obs", "block", "obs+block")


class _DenseView:
    """The loop's layer handle as the wrapped method sees it: the method's own passes never let the layer's
    outputs move on (one-shot), since the OBS statistics still need the dense layer's inputs after them.

    ``grams``: the ``X^T X`` already gathered from the dense layer, by role. Their diagonals are the sums of squared
    inputs per feature, so a method asking for ``input_norms`` of those inputs gets them without a pass of its own
    (one forward pass of every calibration window through the layer saved)."""

    def __init__(self, step: LayerPass, statistic: str | None, grams: dict[str, torch.Tensor]):
        self._step, self._statistic, self._grams = step, statistic, grams
        self.layer, self.projections, self.has_data = step.layer, step.projections, step.has_data

    def groups(self, projections: list[Projection]) -> list[list[Projection]]:
        return self._step.groups(projections)

    def collect(self, groups, last: bool = False, kind=None):
        kind = kind or self._statistic
        roles = [p.role for g in groups for p in g]
        if kind == "input_norms" and all(r in self._grams for r in roles):
            return {r: torch.diagonal(self._grams[r]).to(torch.float64) for r in roles}
        return self._step.collect(groups, last=False, kind=kind)

    def dense_done(self) -> None:
        pass


class WithObsUpdate(PruningMethod):
    """``inner``'s masks, then the OBS update of the weights they keep (one ``X^T X`` per distinct input)."""

    statistic: Literal["input_gram"] = "input_gram"

    def __init__(self, inner: PruningMethod, options: ObsOptions | None = None):
        self.inner = inner
        self.options = options or ObsOptions()
        self.name = inner.name

    @property
    def needs_calibration(self) -> bool:
        return True

    def axis(self, role: str) -> Axis:
        return self.inner.axis(role)

    def prune_layer(self, step: LayerPass, plan: list[Projection], spec: SparsitySpec, prefix: str) -> Iterator[Pruned]:
        if isinstance(self.inner, SparseGPT):  # its own weight update is this one: the same weights
            yield from self.inner.prune_layer(step, plan, spec, prefix)
            return
        groups = sorted(step.groups(plan), key=lambda g: -step.layer.get_submodule(g[0].path).in_features)
        kind = "input_gram" if self.options.precision == "float64" else "input_gram_float32"
        grams = step.collect(groups, kind=kind)  # one pass for every distinct input
        view = _DenseView(step, self.inner.statistic, grams)
        masks = {p.proj.name: p.mask for p in self.inner.prune_layer(view, plan, spec, prefix)}
        rewritten: dict[str, Pruned] = {}
        for group in groups:
            gram = grams.pop(group[0].role)
            for proj in group:
                grams.pop(proj.role, None)
            factor = inverse_hessian_factor(gram, self.options.dampening_frac, f"{prefix}.{group[0].path}",
                                            precision=getattr(torch, self.options.precision), flipped=True)
            del gram
            for proj in group:
                weight = proj.weight(step.layer).clone()
                keep = masks.pop(proj.name).to(weight.device)  # from the dense weights: the pruned ones' error moves
                rewritten[proj.name] = Pruned(proj, obs_update(weight, factor, keep, self.options.block_size), weight)
            del factor
        step.dense_done()
        for proj in plan:
            yield rewritten.pop(proj.name)


def with_reconstruction(method: PruningMethod, mode: str, obs: ObsOptions | None = None) -> PruningMethod:
    """``method`` as the loop runs it under ``prune.reconstruct`` ``mode`` (block is the loop's, not the method's)."""
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"unknown reconstruct mode {mode!r}")
    return WithObsUpdate(method, obs) if mode in ("obs", "obs+block") else method

