"""DaSS fidelity: an independent, loop-by-loop reference of the DaSS authors' selection rules, run through
the whole sequential procedure on a tiny model, gives exactly the project's masks, with ties built in.

The reference is written from the paper and the authors' description, not from pipeline/core/prune:
- statistics: per calibration window, the full model (earlier layers already pruned) runs forward and
  hooks on the current layer sum the squared inputs of each projection over all tokens (float64);
  y = the input of down_proj;
- gate_proj / up_proj: score |W_ij| * ||y_i||^alpha; unstructured: in every input column j, a stable
  ascending sort over the output rows i, the first int(rows * s) pruned; N:M: in every column, each
  group of M consecutive output rows prunes its M - N lowest (stable: lower index first on ties);
- down_proj (and q/k/v/o with attention in scope): Wanda, |W_ij| * ||x_j||, the same rules along
  each output row (groups of M consecutive input columns);
- all of a layer's masks come from one pass over the *dense* layer; only then do the pruned layer's
  outputs feed the next layer.

Tie rule (documented in pipeline/core/prune/masks.py): among equal scores the lower index is pruned
first. Ties are built on purpose: channels whose up_proj row is zero give y_i = 0, so every weight
scored with ||y_i|| is 0 (more zeros in a column / row than are pruned, so the rule decides); zeroed
norm weights and v_proj rows do the same to the attention projections' inputs.
"""

import copy
import math

import pytest
import torch

from conftest import calibration_ids, tiny_model
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.sequential import prune_model
from pipeline.core.prune.sparsity import SparsitySpec

PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
         "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def model_with_ties(seed: int = 0):
    model = tiny_model("llama", seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for layer in model.model.layers:
            inter = layer.mlp.up_proj.weight.shape[0]
            dead = torch.randperm(inter, generator=g)[: inter * 5 // 8]  # 80 of 128 channels: y_i = 0
            layer.mlp.up_proj.weight[dead] = 0.0
            hidden = layer.input_layernorm.weight.shape[0]
            layer.input_layernorm.weight[torch.randperm(hidden, generator=g)[: hidden * 5 // 8]] = 0.0
            v_rows = layer.self_attn.v_proj.weight.shape[0]
            layer.self_attn.v_proj.weight[torch.randperm(v_rows, generator=g)[: v_rows * 5 // 8]] = 0.0
    return model


def reference_statistics(model, layer, ids, roles):
    """Sum over all tokens of x^2 per input feature of each projection of ``layer`` (full-model forwards)."""
    sums = {r: None for r in roles}
    handles = []
    for role in roles:
        def hook(module, args, output, role=role):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            total = x.pow(2).sum(dim=0)
            sums[role] = total if sums[role] is None else sums[role] + total
        handles.append(layer.get_submodule(PATHS[role]).register_forward_hook(hook))
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(input_ids=ids[i : i + 1], use_cache=False)
    for h in handles:
        h.remove()
    return sums


def prune_positions(scores: list[float], count: int) -> list[int]:
    """Stable ascending sort of ``scores``; the first ``count`` positions (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda i: scores[i])[:count]


def reference_mask(weight, score_of, spec, along_rows: bool):
    """Keep-mask (nested lists) from ``score_of(i, j)``; ``along_rows``: groups are output rows of one column."""
    rows, cols = weight.shape
    keep = [[True] * cols for _ in range(rows)]
    lines, length = (cols, rows) if along_rows else (rows, cols)
    for line in range(lines):
        at = (lambda k: (k, line)) if along_rows else (lambda k: (line, k))
        if spec.is_nm:
            for start in range(0, length, spec.m):
                group = [score_of(*at(k)) for k in range(start, start + spec.m)]
                for k in prune_positions(group, spec.m - spec.n):
                    i, j = at(start + k)
                    keep[i][j] = False
        else:
            for k in prune_positions([score_of(*at(k)) for k in range(length)], int(length * spec.fraction)):
                i, j = at(k)
                keep[i][j] = False
    return torch.tensor(keep)


def reference_dass(model, ids, spec: SparsitySpec, alpha: float, roles):
    masks = {}
    for index, layer in enumerate(model.model.layers):
        stats = reference_statistics(model, layer, ids, set(roles) | {"down"})
        layer_masks = {}
        for role in roles:  # every mask of this layer from the dense layer's statistics
            w = layer.get_submodule(PATHS[role]).weight.detach().tolist()
            weight = torch.tensor(w)
            if role in ("gate", "up"):
                norm = [math.sqrt(v) ** alpha for v in stats["down"].tolist()]
                layer_masks[role] = reference_mask(weight, lambda i, j: abs(w[i][j]) * norm[i], spec, along_rows=True)
            else:
                norm = [math.sqrt(v) for v in stats[role].tolist()]
                layer_masks[role] = reference_mask(weight, lambda i, j: abs(w[i][j]) * norm[j], spec, along_rows=False)
        with torch.no_grad():
            for role, mask in layer_masks.items():
                layer.get_submodule(PATHS[role]).weight.mul_(mask)
                masks[f"layers.{index}.{PATHS[role]}"] = mask
    return masks


@pytest.mark.parametrize("pattern,scope", [("0.5", "mlp"), ("2:4", "mlp"), ("4:8", "attention+mlp"),
                                           ("0.6", "attention+mlp")])
def test_dass_masks_equal_the_loop_by_loop_reference(pattern, scope):
    spec = SparsitySpec.parse(pattern if ":" in pattern else float(pattern))
    roles = ["gate", "up", "down"] + (["q", "k", "v", "o"] if scope == "attention+mlp" else [])
    ids = calibration_ids(n=4, seq_len=16)
    model = model_with_ties()
    reference = reference_dass(copy.deepcopy(model), ids, spec, 0.5, roles)
    ours = prune_model(model, make_method("dass", alpha=0.5), spec, ids, scope=scope, keep_masks=True,
                       progress=False).masks
    assert set(ours) == set(reference)
    for name, mask in reference.items():
        assert torch.equal(ours[name], mask), f"{name}: {(ours[name] != mask).sum().item()} weights differ"


def test_the_constructed_ties_decide_masks():
    """The ties are real: in some column of gate_proj the zero scores outnumber the weights pruned, so a
    different tie rule (higher index first) gives a different mask."""
    ids = calibration_ids(n=4, seq_len=16)
    model = model_with_ties()
    stats = reference_statistics(model, model.model.layers[0], ids, ["down"])["down"]
    zero_channels = int((stats == 0).sum())
    assert zero_channels > 128 * 0.5, "more zero-scored rows per column than the 50% pruned"
    score = model.model.layers[0].mlp.gate_proj.weight.abs() * stats.sqrt().unsqueeze(1).float()
    spec = SparsitySpec.parse(0.5)
    column = score[:, 0].tolist()
    lower_first = set(prune_positions(column, 64))
    higher_first = set(sorted(range(128), key=lambda i: (column[i], -i))[:64])
    assert lower_first != higher_first
    ours = prune_model(model, make_method("dass"), spec, ids, scope="mlp", keep_masks=True, progress=False).masks
    pruned = {i for i in range(128) if not ours["layers.0.mlp.gate_proj"][i, 0]}
    assert pruned == lower_first
