"""SparseGPT (Frantar & Alistarh 2023): prune and reconstruct with the inverse Hessian of the layer input.

Unlike the scoring methods, SparseGPT changes the weights it keeps: column by column (input
features, in blocks of ``block_size``), it zeroes the least important weights (score
``w^2 / [H^-1]_jj^2``) and spreads each zeroed weight's error over the columns not yet treated,
through the Cholesky factor of ``H^-1``, ``H = X^T X`` summed over all calibration tokens.

- unstructured: the mask is chosen per block of ``block_size`` columns (all rows together),
  the fraction pruned in each block being the requested one, as in the reference;
- N:M: in each row, N of every M consecutive input weights are kept, chosen when the group's
  first column is reached (groups along the input dimension).

Damping: ``dampening_frac * mean(diag H)`` on the diagonal (0.01, the reference's default; recipe
``prune.dampening_frac``);
inputs that never fire (a zero diagonal) get their weights zeroed. A Hessian that is still not
positive definite is damped ten times harder, up to four times, with a warning each time.
Memory: one distinct input's Hessian at a time (q/k/v share one, gate/up share one), factorised once
for all the projections that read it: about two ``in_features^2`` float64 matrices at the peak
(11008^2 for LLaMA-2-7B's down_proj input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.common.errors import PipelineError
from pipeline.core.prune.base import ReconstructingMethod
from pipeline.core.prune.linalg import lower_triangular_inverse
from pipeline.core.prune.options import SparseGPTOptions
from pipeline.core.prune.sparsity import Axis, SparsitySpec

log = logging.getLogger(__name__)


@dataclass
class Factor:
    """What pruning needs from one input's ``X^T X``: the upper Cholesky factor of its damped inverse, and
    the input features that never fire (their weights are zeroed)."""

    upper: torch.Tensor  # [in, in] float32
    dead: torch.Tensor  # [in] bool


@torch.no_grad()
def inverse_hessian_factor(gram: torch.Tensor, dampening_frac: float, name: str = "",
                           precision: torch.dtype = torch.float64, flipped: bool = False) -> Factor:
    """Factor of (H + damping)^-1, damping harder (with a warning) where H is singular. Consumes ``gram``.

    Works in place on ``gram`` (in ``precision``) and frees each intermediate as soon as the next exists, so
    the peak is about two ``in_features^2`` matrices (for LLaMA-2-7B's down_proj in float64, 2 x 0.97 GB).
    ``flipped``: one Cholesky and one triangular inverse instead of Cholesky, inverse and a second Cholesky
    (the same factor up to rounding: see :func:`_flipped_factor`); with float32 about 4x faster on a CPU.
    """
    h = gram if gram.dtype == precision else gram.to(precision)
    del gram
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    mean = torch.diagonal(h).mean().clamp_min(1e-12)
    diagonal = torch.diagonal(h).clone()
    relative = dampening_frac
    for _ in range(5):
        torch.diagonal(h).copy_(diagonal + relative * mean)
        if flipped:
            upper = _flipped_factor(h)
            if upper is not None:
                return Factor(upper.to(torch.float32), dead)
            relative = max(relative * 10, 0.01)
            log.warning("the Hessian of %s is not positive definite in %s; damping it harder: %g x mean(diag H)",
                        name or "a projection", str(precision).removeprefix("torch."), relative)
            continue
        chol, info = torch.linalg.cholesky_ex(h)
        if info == 0:
            del h
            inverse = torch.cholesky_inverse(chol)
            del chol
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if info == 0:
                return Factor(upper.to(torch.float32), dead)
            raise PipelineError(f"SparseGPT: the inverse Hessian of {name or 'a projection'} is not positive definite",
                                "check the calibration data (NaN or inf activations?) or raise prune.dampening_frac")
        del chol
        relative = max(relative * 10, 0.01)
        log.warning("SparseGPT: the Hessian of %s is not positive definite (too few or degenerate calibration "
                    "tokens); damping it harder: %g x mean(diag H)", name or "a projection", relative)
    raise PipelineError(f"SparseGPT: the Hessian of {name or 'a projection'} stays singular after heavy damping",
                        "check the calibration data (NaN or inf activations?) or use more calibration samples")


def _flipped_factor(h: torch.Tensor) -> torch.Tensor | None:
    """The upper U with ``H^-1 = U^T U`` from one Cholesky: with J the index reversal, ``J H J = L L^T`` gives
    ``H^-1 = (J L^-1 J)^T (J L^-1 J)`` and ``J L^-1 J`` is upper triangular. None where H is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(h.flip(0, 1))
    if info != 0 or not torch.isfinite(torch.diagonal(chol)).all():
        return None
    return lower_triangular_inverse(chol).flip(0, 1)


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, factor: Factor, sparsity: SparsitySpec, block_size: int = 128) -> torch.Tensor:
    """Prune ``weight`` ([out, in], float32) in place with SparseGPT; returns the keep-mask."""
    w = weight.data
    dead = factor.dead.to(w.device)
    w[:, dead] = 0.0
    hinv = factor.upper.to(w.device)
    rows, cols = w.shape
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1 = w[:, start:end].clone()
        err = torch.zeros_like(w1)
        h1 = hinv[start:end, start:end]
        d = torch.diagonal(h1)
        if sparsity.is_nm:
            pruned = torch.zeros_like(w1, dtype=torch.bool)
        else:
            score = w1.pow(2) / d.pow(2).unsqueeze(0)
            k = int(score.numel() * sparsity.fraction)
            pruned = torch.zeros(score.numel(), dtype=torch.bool, device=w.device)
            if k:
                pruned[torch.topk(score.flatten(), k, largest=False).indices] = True
            pruned = pruned.view_as(score)
        for i in range(end - start):
            if sparsity.is_nm and i % sparsity.m == 0:
                group = w1[:, i:i + sparsity.m].pow(2) / d[i:i + sparsity.m].pow(2).unsqueeze(0)
                drop = torch.topk(group, sparsity.m - sparsity.n, dim=1, largest=False).indices
                pruned.scatter_(1, i + drop, True)
            col = w1[:, i]
            q = torch.where(pruned[:, i], torch.zeros_like(col), col)
            e = (col - q) / h1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err[:, i] = e
        w[:, start:end] = w1
        w[:, end:] -= err @ hinv[start:end, end:]
        keep[:, start:end] = ~pruned
    keep[:, dead] = False
    w.mul_(keep)
    return keep


@torch.no_grad()
def obs_update(weight: torch.Tensor, factor: Factor, keep: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """The OBS update of the weights ``keep`` holds, the mask fixed (SparseGPT's reconstruction with a prescribed
    mask): ``weight`` is rewritten in place; returns ``keep``.

    SparseGPT's sweep (:func:`sparsegpt_prune`) with the mask prescribed, ordered for speed: the mask being known,
    a column needs only the errors of the columns before it in its block, so each column is one matrix-vector
    product (``w_i - E_{<i} h_{<i,i}``) instead of a rank-one update of every column after it; blocks still pass
    their errors on as one product. Equal to it up to float rounding (tests/test_reconstruct.py)."""
    w = weight.data
    hinv = factor.upper.to(w.device)
    keep = keep.to(w.device)
    rows, cols = w.shape
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1 = w[:, start:end]
        h1 = hinv[start:end, start:end]
        kept = keep[:, start:end].t().to(w.dtype)  # [block, rows]: 1 kept, 0 pruned
        scale = (1 - kept) / torch.diagonal(h1).unsqueeze(1)  # a pruned weight's error factor, 0 where kept
        err = torch.zeros((end - start, rows), dtype=w.dtype, device=w.device)  # one row per column: contiguous
        for i in range(end - start):
            col = torch.addmv(w1[:, i], err[:i].t(), h1[:i, i], alpha=-1) if i else w1[:, i]
            torch.mul(col, scale[i], out=err[i])
            w1[:, i] = col * kept[i]
        w[:, end:] -= err.t() @ hinv[start:end, end:]
    w.mul_(keep)
    return keep


class SparseGPT(ReconstructingMethod):
    """Needs ``X^T X`` per distinct projection input and rewrites the weights it keeps."""

    name = "sparsegpt"
    Options = SparseGPTOptions

    def axis(self, role: str) -> Axis:
        return "row"  # N:M groups along the input dimension

    def prepare(self, gram: torch.Tensor, name: str) -> Factor:
        return inverse_hessian_factor(gram, self.options.dampening_frac, name)

    def prune(self, role: str, weight: torch.Tensor, prepared: Factor, sparsity: SparsitySpec,
              name: str = "") -> torch.Tensor:
        return sparsegpt_prune(weight, prepared, sparsity, self.options.block_size)
