"""Block reconstruction (``prune.reconstruct: block``, EBFT-style): one decoder layer, attention and MLP together
(so the fit spans the nonlinearity), trained with Adam to reproduce the *dense* layer's outputs on the calibration
inputs that reach it through the already-pruned layers below; the mask is fixed.

A pruned weight is zero before, during and after: its gradient is masked before every step and the weight is
masked again after it (Adam's moments could move it otherwise). Training never leaves a layer worse than it found
it: where the error on the calibration windows rose, the trained weights are discarded (with a warning). The loss is the mean squared error over every
token and feature, divided by the mean square of the dense outputs' change to their input (the layer's own
contribution), so one learning rate suits layers whose residual stream differs in scale.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.core.models import layer_projections
from pipeline.core.prune.options import BlockOptions

log = logging.getLogger(__name__)


@dataclass
class BlockResult:
    loss_before: float  # relative error of the masked layer on the training windows, before any step
    loss_after: float  # the same after the last step (or, where training made it worse, the same as before)
    trained_error: float | None = None  # where training made it worse: the error it reached (its weights discarded)


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def trainable(layer: nn.Module, masks: dict[str, torch.Tensor], train: list[str]) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
    """The parameters trained, each with its keep-mask (None: every entry free). ``masks``: projection path -> mask."""
    chosen: list[tuple[nn.Parameter, torch.Tensor | None]] = []
    seen: set[int] = set()
    linear_weights = set()
    for proj in layer_projections(layer):
        module = layer.get_submodule(proj.path)
        linear_weights.add(id(module.weight))
        if proj.path in masks and "pruned" in train:
            chosen.append((module.weight, masks[proj.path]))
        elif proj.path not in masks and "dense" in train:
            chosen.append((module.weight, None))
        if "biases" in train and getattr(module, "bias", None) is not None:
            chosen.append((module.bias, None))
    if "norms" in train:
        for name, module in layer.named_modules():
            if "norm" in type(module).__name__.lower() or "norm" in name.split(".")[-1].lower():
                for param in module.parameters(recurse=False):
                    if id(param) not in linear_weights:
                        chosen.append((param, None))
    unique = []
    for param, mask in chosen:
        if id(param) not in seen:
            seen.add(id(param))
            unique.append((param, mask))
    return unique


def reconstruct_block(layer: nn.Module, masks: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
                      kwargs: dict, options: BlockOptions, compute: torch.device, desc: str = "block",
                      progress: bool = True) -> BlockResult:
    """Train ``layer`` (float32 on ``compute``, masks already applied) so that ``layer(inputs[s]) ~ targets[s]``.

    ``inputs``, ``targets``: ``[windows, seq_len, hidden]`` on the CPU (any float dtype); ``kwargs``: the layer's
    keyword arguments for one full window (cut to ``options.tokens`` where set). Where training raised the error,
    it is redone from the same start at a third of the learning rate, ``options.retries`` times at most."""
    result = _train(layer, masks, inputs, targets, kwargs, options, compute, desc, progress)
    lr = options.lr
    for _ in range(options.retries):
        if result.trained_error is None:
            break
        lr /= 3
        result = _train(layer, masks, inputs, targets, kwargs, options.model_copy(update={"lr": lr}), compute,
                        f"{desc} (lr {lr:.3g})", progress)
    return result


def _train(layer: nn.Module, masks: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
           kwargs: dict, options: BlockOptions, compute: torch.device, desc: str, progress: bool) -> BlockResult:
    tokens = min(options.tokens or inputs.shape[1], inputs.shape[1])
    kwargs = _cut(kwargs, inputs.shape[1], tokens)
    params = trainable(layer, masks, options.train)
    frozen = [p for p in layer.parameters() if all(p is not q for q, _ in params)]
    for p in frozen:
        p.requires_grad_(False)
    for p, _ in params:
        p.requires_grad_(True)
    masks_on = [(p, m.to(p.device) if m is not None else None) for p, m in params]
    optimizer = torch.optim.Adam([p for p, _ in params], lr=options.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, options))

    def window(s: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = inputs[s : s + 1, :tokens].detach().to(compute, torch.float32)
        return x, targets[s : s + 1, :tokens].detach().to(compute, torch.float32)

    scale = _contribution_scale(inputs[:, :tokens], targets[:, :tokens])
    generator = torch.Generator().manual_seed(options.seed)
    order: list[int] = []
    before = _mean_error(layer, inputs.shape[0], window, kwargs, scale)
    start = [p.detach().clone() for p, _ in params]  # restored if training makes the layer worse
    try:
        with torch.enable_grad():
            for _ in tqdm(range(options.steps), desc=desc, disable=not progress, leave=False):
                optimizer.zero_grad(set_to_none=True)
                batch = []
                for _ in range(options.batch_windows):
                    if not order:
                        order = torch.randperm(inputs.shape[0], generator=generator).tolist()
                    batch.append(order.pop())
                for s in batch:
                    x, y = window(s)
                    loss = (_output(layer(x, **kwargs)) - y).pow(2).mean() / (scale * len(batch))
                    loss.backward()
                for p, m in masks_on:
                    if m is not None and p.grad is not None:
                        p.grad.mul_(m)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    for p, m in masks_on:
                        if m is not None:
                            p.mul_(m)
    finally:
        for p in layer.parameters():
            p.requires_grad_(False)
            p.grad = None
    after = _mean_error(layer, inputs.shape[0], window, kwargs, scale)
    if not after < before:  # too high a learning rate for this model, or nothing left to fit: keep the layer as it was
        with torch.no_grad():
            for (p, _), saved in zip(params, start):
                p.copy_(saved)
        log.warning("%s: training raised the relative output error %.4g -> %.4g (%d steps, lr %g); the layer is kept "
                    "as before it (a lower prune.block.lr may help)", desc, before, after, options.steps, options.lr)
        return BlockResult(before, before, trained_error=after)
    log.info("%s: relative output error %.4g -> %.4g (%d steps)", desc, before, after, options.steps)
    return BlockResult(before, after)


def lr_factor(step: int, options: BlockOptions) -> float:
    """The share of ``options.lr`` used at optimizer step ``step`` (0-based)."""
    if options.schedule == "constant":
        return 1.0
    warmup = max(1, options.steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, options.steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def relative_error(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict,
                   compute: torch.device) -> float:
    """The block loss's measure of ``layer`` on whole windows: ``layer(inputs[s])`` against ``targets[s]``, relative
    to what the dense layer adds to its input (for windows never trained on, e.g. held out)."""

    def window(s: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (inputs[s : s + 1].to(compute, torch.float32), targets[s : s + 1].to(compute, torch.float32))

    return _mean_error(layer, inputs.shape[0], window, kwargs, _contribution_scale(inputs, targets))


@torch.no_grad()
def _mean_error(layer, windows: int, window, kwargs, scale: float) -> float:
    total = 0.0
    for s in range(windows):
        x, y = window(s)
        total += (_output(layer(x, **kwargs)) - y).pow(2).mean().item()
    return total / windows / scale


def _contribution_scale(inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean square of what the dense layer adds to its input (the residual stream itself cancels in the error)."""
    total = 0.0
    for s in range(inputs.shape[0]):
        total += (targets[s].float() - inputs[s].float()).pow(2).mean().item()
    return max(total / inputs.shape[0], 1e-20)


def _cut(value, seq_len: int, tokens: int):
    """The layer's keyword arguments for the first ``tokens`` positions: every tensor dimension of length
    ``seq_len`` (positions, rotary tables, attention masks) cut to ``tokens``."""
    if tokens == seq_len:
        return value
    if isinstance(value, torch.Tensor):
        for dim, size in enumerate(value.shape):
            if size == seq_len:
                value = value.narrow(dim, 0, tokens)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, seq_len, tokens) for v in value)
    if isinstance(value, dict):
        return {k: _cut(v, seq_len, tokens) for k, v in value.items()}
    return value
