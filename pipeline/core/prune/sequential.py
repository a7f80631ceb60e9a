"""The sequential layer-by-layer pruning loop (Wanda / SparseGPT style).

1. Calibration token windows run through the model until the first decoder layer; a
   pre-forward hook captures that layer's hidden states *and its own keyword arguments*
   (attention mask, position ids, rotary embeddings, ...), so no architecture detail is
   hard-coded here.
2. For each decoder layer in turn, cast to float32 (and moved to the compute device) alone:
   one probe forward finds which projections read the same input tensor (q/k/v, gate/up);
   forward hooks on one projection per such input accumulate the method's statistic over all
   calibration windows (pipeline/core/prune/base.py); every projection in scope is pruned from
   the statistics of the *dense* layer; then the *pruned* layer maps the windows to the next
   layer's inputs (in place, so only one activation buffer exists). Each layer therefore sees
   the outputs of the already-pruned layers before it.
   How the statistics are gathered and the weights chosen is the method's ``prune_layer``
   (pipeline/core/prune/base.py), given a handle on the layer and its windows; the loop applies
   what it yields and knows no kind of method.

Memory: the model stays in its load dtype on the CPU; one layer at a time is float32 on the
compute device; activations are one ``[samples, seq_len, hidden]`` buffer in the model dtype.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.core.models import Projection, decoder_layers, layer_projections
from pipeline.core.prune.base import PruningMethod
from pipeline.core.prune.block_reconstruct import reconstruct_block
from pipeline.core.prune.linalg import GramSum
from pipeline.core.prune.options import BlockOptions, ObsOptions
from pipeline.core.prune.reconstruct import with_reconstruction
from pipeline.core.prune.sparsity import SparsitySpec

log = logging.getLogger(__name__)


class _Captured(Exception):
    pass


@dataclass
class LayerInputs:
    hidden: torch.Tensor  # [samples, seq_len, hidden], storage dtype
    kwargs: dict[str, Any]  # the first decoder layer's keyword arguments (shared by all samples)


class LayerStore(Protocol):
    """Where decoder layers live when the model is not wholly in memory (pipeline/core/prune/streaming.py):
    ``load`` brings layer ``index`` in before it is pruned, ``store`` writes it out and frees it after."""

    def load(self, index: int) -> None: ...

    def store(self, index: int) -> None: ...


@dataclass
class PruneResult:
    #: "layers.{i}.{path}" -> stats about the pruned projection
    layers: dict[str, dict] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: "layers.{i}" -> the block reconstruction's relative output error before and after training
    blocks: dict[str, dict] = field(default_factory=dict)


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


def input_groups(layer: nn.Module, projections: list[Projection], x: torch.Tensor, kwargs: dict) -> list[list[Projection]]:
    """``projections`` grouped by the input tensor they read, found by one forward of ``x`` (identity, not value)."""
    seen: list[tuple[torch.Tensor, list[Projection]]] = []
    handles = []

    def hook_for(proj: Projection):
        def hook(module, args):
            for tensor, group in seen:
                if args[0] is tensor:
                    group.append(proj)
                    return
            seen.append((args[0], [proj]))

        return hook

    for proj in projections:
        handles.append(layer.get_submodule(proj.path).register_forward_pre_hook(hook_for(proj)))
    try:
        layer(x, **kwargs)
    finally:
        for h in handles:
            h.remove()
    grouped = [group for _, group in seen]
    missing = [p for p in projections if not any(p in g for g in grouped)]
    return grouped + [[p] for p in missing]  # a projection the forward did not reach keeps a group of its own


class InputStats:
    """Forward hooks that accumulate, over all tokens, one statistic per distinct input (in float64):

    - ``"input_norms"``: the sum of squared inputs per feature, ``[in_features]`` (Wanda, DaSS);
    - ``"input_gram"``: ``X^T X``, ``[in_features, in_features]`` (SparseGPT's Hessian), summed by
      :class:`pipeline.core.prune.linalg.GramSum` (one triangle, in place);
    - ``"input_gram_float32"``: the same in float32, as SparseGPT's reference accumulates it (the reconstruction's
      ``obs.precision: float32``): a float64 product of 8960 features over 8192 tokens takes half a minute on 2 cores.

    ``groups`` are projections that read one tensor: one hook on the first of each, and
    ``stats()`` gives every role of the group the same tensor.
    """

    def __init__(self, layer: nn.Module, groups: list[list[Projection]], kind: str):
        self.kind = kind
        self.groups = groups
        self.sums: dict[str, torch.Tensor] = {}
        self.handles = [layer.get_submodule(g[0].path).register_forward_hook(self._hook(g[0].role)) for g in groups]

    def _hook(self, key: str):
        def hook(module, args, output):
            dtype = torch.float32 if self.kind == "input_gram_float32" else torch.float64
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(dtype)
            if self.kind == "input_norms":
                total = x.pow(2).sum(dim=0)
                self.sums[key] = self.sums[key] + total if key in self.sums else total
            else:
                self.sums.setdefault(key, GramSum()).add(x)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def stats(self) -> dict[str, torch.Tensor]:
        sums = {k: v.value() if isinstance(v, GramSum) else v for k, v in self.sums.items()}
        return {p.role: sums[g[0].role] for g in self.groups for p in g if g[0].role in sums}


class _LayerStep:
    """The loop's :class:`pipeline.core.prune.base.LayerPass`: one layer (float32 on the compute device) and the
    calibration windows' hidden states at its input, which ``forward(update=True)`` replaces by its outputs."""

    def __init__(self, layer: nn.Module, inputs: LayerInputs | None, kwargs: dict, compute: torch.device,
                 statistic: str | None, one_shot: bool):
        self.layer, self.inputs, self.kwargs, self.compute = layer, inputs, kwargs, compute
        self.statistic, self.one_shot = statistic, one_shot
        self.projections = layer_projections(layer)
        self.has_data = inputs is not None
        self.advanced = False

    def groups(self, projections: list[Projection]) -> list[list[Projection]]:
        probe = self.inputs.hidden[0:1].to(self.compute, torch.float32)
        return input_groups(self.layer, projections, probe, self.kwargs)

    def forward(self, update: bool, groups: list[list[Projection]] = (), kind: str | None = None) -> dict[str, torch.Tensor]:
        """Every window through the layer (its outputs replace the inputs when ``update``); the statistic (default:
        the method's) of ``groups``."""
        hooks = InputStats(self.layer, list(groups), kind or self.statistic)
        try:
            hidden = self.inputs.hidden
            for s in range(hidden.shape[0]):
                out = self.layer(hidden[s : s + 1].to(self.compute, torch.float32), **self.kwargs)
                if update:
                    hidden[s] = _first_tensor(out)[0].to("cpu", hidden.dtype)
        finally:
            hooks.remove()
        self.advanced = self.advanced or update
        return hooks.stats()

    def collect(self, groups: list[list[Projection]], last: bool = False, kind: str | None = None) -> dict[str, torch.Tensor]:
        return self.forward(update=last and self.one_shot and not self.advanced, groups=groups, kind=kind)

    def outputs(self) -> torch.Tensor:
        """The layer's outputs for every window, as it is now (a new buffer; the inputs stay)."""
        hidden = self.inputs.hidden
        out = torch.empty_like(hidden)
        for s in range(hidden.shape[0]):
            out[s] = _first_tensor(self.layer(hidden[s : s + 1].to(self.compute, torch.float32), **self.kwargs))[0]
        return out

    def dense_done(self) -> None:
        if self.has_data and self.one_shot and not self.advanced:
            self.forward(update=True)  # one-shot: the dense outputs feed the next layer


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
            weight = proj.weight(layer)
            sparsity.check_fits(tuple(weight.shape), method.axis(proj.role), f"layers.{index}.{proj.name}")
        plan.append(chosen)
    return plan


def _record(result: PruneResult, name: str, role: str, weight: torch.Tensor, mask: torch.Tensor, sparsity: SparsitySpec,
            axis: str, keep_masks: bool) -> None:
    result.layers[name] = {"role": role, "shape": list(weight.shape), "sparsity": 1.0 - mask.sum().item() / mask.numel(),
                           "pattern": str(sparsity), "axis": axis}
    if keep_masks:
        result.masks[name] = mask.cpu()


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
    store: LayerStore | None = None,
    layer_sparsity: list[SparsitySpec] | None = None,
    reconstruct: str = "none",
    obs: ObsOptions | None = None,
    block: BlockOptions | None = None,
) -> PruneResult:
    """Prune ``model`` in place, layer by layer. Returns per-projection sparsity (and masks if asked).

    ``sequential=False`` is the one-shot variant: every layer's statistics come from the
    *dense* outputs of the layers before it (for comparison only; the paper is sequential).
    ``store``: the layers are not in memory (their parameters are on the meta device); each is loaded
    just before it is pruned and stored just after, so one layer is held at a time.
    ``layer_sparsity``: one spec per decoder layer in place of ``sparsity`` (layer_allocation.py).
    ``reconstruct``: after the masks, the kept weights are updated (pipeline/core/prune/reconstruct.py): ``obs``
    (with ``obs`` settings), ``block`` (each layer trained towards its dense outputs, ``block`` settings), both
    (``obs+block``) or ``none``.
    """
    compute = torch.device(device)
    layers = decoder_layers(model)
    plan = plan_projections(model, method, sparsity, scope, ignore)
    method = with_reconstruction(method, reconstruct, obs)
    train_blocks = reconstruct in ("block", "obs+block")
    if train_blocks and not sequential:
        raise ValueError("block reconstruction needs the sequential loop (sequential=True)")

    inputs = None
    if method.needs_calibration or train_blocks:
        if calibration_ids is None:
            raise ValueError(f"{method.name} needs calibration data")
        inputs = capture_layer_inputs(model, calibration_ids, progress=progress)
        layer_kwargs = _to(inputs.kwargs, compute, torch.float32)

    result = PruneResult()
    bar = tqdm(list(enumerate(layers)), desc=f"pruning ({method.name}, {sparsity})", disable=not progress)
    for index, layer in bar:
        if store is not None:
            store.load(index)
        spec = layer_sparsity[index] if layer_sparsity is not None else sparsity
        store_dtype = next(layer.parameters()).dtype
        layer.to(device=compute, dtype=torch.float32)

        step = _LayerStep(layer, inputs, layer_kwargs if inputs is not None else {}, compute, method.statistic,
                          one_shot=not sequential)
        started = time.perf_counter()
        targets = step.outputs() if train_blocks and plan[index] else None  # the dense layer's outputs
        target_seconds = time.perf_counter() - started
        masks: dict[str, torch.Tensor] = {}
        for pruned in method.prune_layer(step, plan[index], spec, f"layers.{index}"):
            weight = pruned.proj.weight(layer)
            if pruned.weight is None:
                weight.mul_(pruned.mask)
            else:
                weight.copy_(pruned.weight)
            _record(result, f"layers.{index}.{pruned.proj.name}", pruned.proj.role, weight, pruned.mask, spec,
                    method.axis(pruned.proj.role), keep_masks)
            if targets is not None:
                masks[pruned.proj.path] = pruned.mask
            del pruned
        step.dense_done()
        if targets is not None:
            started = time.perf_counter()
            fit = reconstruct_block(layer, masks, inputs.hidden, targets, layer_kwargs, block or BlockOptions(),
                                    compute, desc=f"block layers.{index}", progress=progress)
            result.blocks[f"layers.{index}"] = {"error_before": fit.loss_before, "error_after": fit.loss_after,
                                                "seconds": target_seconds + time.perf_counter() - started}
            if fit.trained_error is not None:
                result.blocks[f"layers.{index}"]["discarded_error"] = fit.trained_error
            del targets, masks
        if inputs is not None and sequential:
            step.forward(update=True)  # pruned outputs feed the next layer
        layer.to(device="cpu", dtype=store_dtype)
        if store is not None:
            store.store(index)
    return result
