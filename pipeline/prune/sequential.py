"""The sequential layer-by-layer pruning loop (Wanda / SparseGPT style).

1. Calibration token windows run through the model until the first decoder layer; a
   pre-forward hook captures that layer's hidden states *and its own keyword arguments*
   (attention mask, position ids, rotary embeddings, ...), so no architecture detail is
   hard-coded here.
2. For each decoder layer in turn: the layer is cast to float32 (and moved to the compute
   device) alone; forward hooks accumulate the squared input norms of its projections over
   all calibration windows; the method scores every projection in scope; the masks zero the
   weights; then the *pruned* layer maps the windows to the next layer's inputs (in place, so
   only one activation buffer exists). Each layer therefore sees the outputs of the
   already-pruned layers before it. SparseGPT's hooks accumulate X^T X instead and it rewrites
   the weights it keeps (pipeline/prune/sparsegpt.py).

Memory: the model stays in its load dtype on the CPU; one layer at a time is float32 on the
compute device; activations are one ``[samples, seq_len, hidden]`` buffer in the model dtype.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.models import Projection, decoder_layers, layer_projections
from pipeline.prune.base import PruningMethod
from pipeline.prune.masks import SparsitySpec, select_mask

log = logging.getLogger(__name__)


class _Captured(Exception):
    pass


@dataclass
class LayerInputs:
    hidden: torch.Tensor  # [samples, seq_len, hidden], storage dtype
    kwargs: dict[str, Any]  # the first decoder layer's keyword arguments (shared by all samples)


@dataclass
class PruneResult:
    #: "layers.{i}.{path}" -> stats about the pruned projection
    layers: dict[str, dict] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def _to(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move tensors (also inside tuples/lists/dicts) to device; floating ones to dtype."""
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    return value


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, input_ids: torch.Tensor, progress: bool = True) -> LayerInputs:
    """Run each calibration window up to the first decoder layer and keep what it receives."""
    first = decoder_layers(model)[0]
    dtype = next(model.parameters()).dtype
    n, seq_len = input_ids.shape
    hidden = torch.empty((n, seq_len, model.config.hidden_size), dtype=dtype)
    state: dict[str, Any] = {}

    def hook(module, args, kwargs):
        states = args[0] if args else kwargs["hidden_states"]
        hidden[state["i"]] = states[0].to(dtype)
        if "kwargs" not in state:
            state["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in tqdm(range(n), desc="calibration inputs", disable=not progress, leave=False):
            state["i"] = i
            try:
                model(input_ids=input_ids[i : i + 1], use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    kwargs = state["kwargs"]
    kwargs.pop("past_key_value", None)
    kwargs.pop("past_key_values", None)
    kwargs["use_cache"] = False
    return LayerInputs(hidden=hidden, kwargs=kwargs)


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class InputStats:
    """Forward hooks that accumulate, over all tokens, per projection input:

    - ``"norms"``: the sum of squared inputs per feature, ``[in_features]`` (Wanda, DaSS);
    - ``"gram"``: ``X^T X``, ``[in_features, in_features]`` (SparseGPT's Hessian).
    """

    def __init__(self, layer: nn.Module, projections: list[Projection], kind: str = "norms"):
        self.kind = kind
        self.sums: dict[str, torch.Tensor] = {}
        self.handles = []
        for proj in projections:
            module = layer.get_submodule(proj.path)
            self.handles.append(module.register_forward_hook(self._hook(proj.role)))

    def _hook(self, role: str):
        def hook(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            total = x.pow(2).sum(dim=0) if self.kind == "norms" else x.T @ x
            self.sums[role] = self.sums[role] + total if role in self.sums else total

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _in_scope(proj: Projection, scope: str, layer_index: int, ignore: list[str]) -> bool:
    if proj.kind == "attention" and scope != "attention+mlp":
        return False
    qualified = f"layers.{layer_index}.{proj.path}"
    return not any(fnmatch.fnmatch(qualified, pat) or fnmatch.fnmatch(proj.path, pat) for pat in ignore)


def plan_projections(model: nn.Module, method: PruningMethod, sparsity: SparsitySpec, scope: str = "mlp",
                     ignore: list[str] | None = None) -> list[list[Projection]]:
    """The projections to prune in each decoder layer; raises if N:M does not fit one of them."""
    ignore = ignore or []
    plan = []
    for index, layer in enumerate(decoder_layers(model)):
        chosen = [p for p in layer_projections(layer) if _in_scope(p, scope, index, ignore)]
        for proj in chosen:
            weight = layer.get_submodule(proj.path).weight
            sparsity.check_fits(tuple(weight.shape), method.axis(proj.role), f"layers.{index}.{proj.path}")
        plan.append(chosen)
    return plan


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: PruningMethod,
    sparsity: SparsitySpec,
    calibration_ids: torch.Tensor | None,
    scope: str = "mlp",
    ignore: list[str] | None = None,
    device: str = "cpu",
    sequential: bool = True,
    keep_masks: bool = False,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` in place, layer by layer. Returns per-projection sparsity (and masks if asked).

    ``sequential=False`` is the one-shot variant: every layer's statistics come from the
    *dense* outputs of the layers before it (for comparison only; the paper is sequential).
    """
    compute = torch.device(device)
    layers = decoder_layers(model)
    plan = plan_projections(model, method, sparsity, scope, ignore)

    inputs = None
    if method.needs_calibration:
        if calibration_ids is None:
            raise ValueError(f"{method.name} needs calibration data")
        inputs = capture_layer_inputs(model, calibration_ids, progress=progress)
        layer_kwargs = _to(inputs.kwargs, compute, torch.float32)

    # a method with prune() rewrites the weights it keeps (SparseGPT); the others only score
    reconstructs = hasattr(method, "prune")
    result = PruneResult()
    bar = tqdm(list(enumerate(layers)), desc=f"pruning ({method.name}, {sparsity})", disable=not progress)
    for index, layer in bar:
        store_dtype = next(layer.parameters()).dtype
        layer.to(device=compute, dtype=torch.float32)

        def propagate() -> None:
            for s in range(inputs.hidden.shape[0]):
                x = inputs.hidden[s : s + 1].to(compute, torch.float32)
                inputs.hidden[s] = _first_tensor(layer(x, **layer_kwargs))[0].to("cpu", inputs.hidden.dtype)

        stats: dict[str, torch.Tensor] = {}
        if inputs is not None:
            norms = InputStats(layer, plan[index] if reconstructs else layer_projections(layer),
                               getattr(method, "statistics", "norms"))
            try:
                if sequential:
                    for s in range(inputs.hidden.shape[0]):
                        layer(inputs.hidden[s : s + 1].to(compute, torch.float32), **layer_kwargs)
                else:
                    propagate()  # dense outputs feed the next layer
            finally:
                norms.remove()
            stats = norms.sums

        for proj in plan[index]:
            linear = layer.get_submodule(proj.path)
            axis = method.axis(proj.role)
            name = f"layers.{index}.{proj.path}"
            if reconstructs:
                mask = method.prune(proj.role, linear.weight.data, stats, sparsity, name)
            else:
                mask = select_mask(method.score(proj.role, linear.weight.data, stats), sparsity, axis)
                linear.weight.data.mul_(mask)
            result.layers[name] = {
                "role": proj.role,
                "shape": list(linear.weight.shape),
                "sparsity": 1.0 - mask.sum().item() / mask.numel(),
                "pattern": str(sparsity),
                "axis": axis,
            }
            if keep_masks:
                result.masks[name] = mask.cpu()

        if inputs is not None and sequential:
            propagate()  # pruned outputs feed the next layer
        layer.to(device="cpu", dtype=store_dtype)
    return result
