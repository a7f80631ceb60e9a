"""Every pruning method on every family (the docs/families.md pruning column, cell by cell): on a tiny random model
of each family, unstructured 50% and 2:4 on attention + MLP, checked against the rules written here, not read back
from the methods:

- DaSS: gate / up compete within each input column (N:M groups along the output dimension), down and q/k/v/o within
  each output row (groups along the input dimension);
- Wanda: within each output row; magnitude: over the whole matrix, N:M along the input dimension;
- SparseGPT: 128-column blocks (the whole matrix here), N:M along the input dimension, and the kept weights are
  rewritten (its reconstruction), where the other methods keep them as they were;
- a fused linear (Phi-3's qkv_proj, gate_up_proj) is checked role by role on its row ranges;
- nothing but the projections changes.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import ARCHITECTURES, FUSED_ARCHITECTURES, calibration_ids, tiny_model
from pipeline.core.models import decoder_layers, layer_projections
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.sequential import prune_model
from pipeline.core.prune.sparsity import SparsitySpec

FAMILIES = [*ARCHITECTURES, *FUSED_ARCHITECTURES]
METHODS = ["dass", "wanda", "sparsegpt", "magnitude"]


def competes_within(method: str, role: str) -> str:
    """The spec: which weights compete with each other (unstructured), independent of the methods' code."""
    if method == "dass" and role in ("gate", "up"):
        return "column"
    return {"dass": "row", "wanda": "row", "sparsegpt": "matrix", "magnitude": "matrix"}[method]


def nm_groups(zeros: torch.Tensor, m: int, method: str, role: str) -> torch.Tensor:
    """Zeros per N:M group: M consecutive weights along the output dimension for DaSS's gate/up, else the input."""
    if competes_within(method, role) == "column":
        zeros = zeros.t()
    return zeros.reshape(zeros.shape[0], -1, m).sum(dim=2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_method_prunes_family_by_its_rule(family, method, pattern):
    model = tiny_model(family)
    dense = copy.deepcopy(model)
    spec = SparsitySpec.parse(pattern)
    prune_model(model, make_method(method), spec, calibration_ids(), scope="attention+mlp", progress=False)

    checked = 0
    for layer, before in zip(decoder_layers(model), decoder_layers(dense)):
        for proj in layer_projections(layer):
            weight, original = proj.weight(layer), proj.weight(before)
            zeros = weight == 0
            name = f"{family} {method} {pattern} {proj.name}"
            if spec.is_nm:
                assert (nm_groups(zeros, spec.m, method, proj.role) == spec.m - spec.n).all(), name
            else:
                where = competes_within(method, proj.role)
                if where == "column":
                    assert (zeros.sum(dim=0) == weight.shape[0] // 2).all(), name
                elif where == "row":
                    assert (zeros.sum(dim=1) == weight.shape[1] // 2).all(), name
                else:
                    assert zeros.sum() == weight.numel() // 2, name
            kept = ~zeros
            if method == "sparsegpt":
                assert not torch.equal(weight[kept], original[kept]), f"{name}: SparseGPT must reconstruct the kept weights"
            else:
                assert torch.equal(weight[kept], original[kept]), f"{name}: a selecting method changes no kept weight"
            checked += 1
    assert checked == 7 * len(decoder_layers(model)), f"{family}: every role of every layer (q k v o gate up down)"

    pruned_state, dense_state = model.state_dict(), dense.state_dict()
    for key, tensor in dense_state.items():
        if not any(part in key for part in ("_proj.weight", "qkv_proj", "gate_up_proj")):
            assert torch.equal(pruned_state[key], tensor), f"{family} {method}: {key} changed"
