"""The OBS statistics' kernels (pipeline/core/prune/linalg.py) against plain torch, and the pass they save."""

import pytest
import torch

from conftest import calibration_ids, tiny_model
from pipeline.core.models import decoder_layers
from pipeline.core.prune.linalg import GramSum, lower_triangular_inverse
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.sequential import prune_model
from pipeline.core.prune.sparsity import SparsitySpec


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_the_gram_sum_is_the_full_symmetric_xtx_over_every_batch(dtype, tolerance):
    torch.manual_seed(0)
    batches = [torch.randn(n, 37, dtype=dtype) * (1 + torch.arange(37, dtype=dtype)) for n in (5, 64, 1)]
    gram = GramSum()
    for x in batches:
        gram.add(x)
    value = gram.value()
    stacked = torch.cat(batches)
    expected = stacked.T @ stacked
    assert value.dtype == dtype and value.shape == (37, 37)
    assert torch.equal(value, value.T), "both triangles are filled, exactly symmetric"
    assert torch.allclose(value, expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


def test_a_non_contiguous_batch_is_summed_as_its_values():
    torch.manual_seed(1)
    x = torch.randn(12, 20)[:, ::2]  # a strided view
    gram = GramSum()
    gram.add(x)
    assert torch.allclose(gram.value(), x.T @ x, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_lower_triangular_inverse_inverts_and_stays_lower(dtype):
    torch.manual_seed(2)
    a = torch.randn(50, 50, dtype=torch.float64)
    lower = torch.linalg.cholesky(a @ a.T + 50 * torch.eye(50, dtype=torch.float64)).to(dtype)
    inverse = lower_triangular_inverse(lower.clone())
    assert torch.equal(inverse, inverse.tril())
    assert torch.allclose(inverse @ lower, torch.eye(50, dtype=dtype), atol=1e-5 if dtype == torch.float32 else 1e-12)


def _passes_through_layer_0(reconstruct: str) -> int:
    model = tiny_model("llama", seed=0)
    calls = []
    decoder_layers(model)[0].register_forward_hook(lambda *_: calls.append(1))
    ids = calibration_ids(n=4, seq_len=16)
    calls.clear()
    prune_model(model, make_method("dass"), SparsitySpec(fraction=0.5), ids,
                progress=False, reconstruct=reconstruct)
    return len(calls)


def test_obs_reads_the_methods_norms_off_its_grams_diagonal_instead_of_a_pass_of_their_own():
    plain, obs = _passes_through_layer_0("none"), _passes_through_layer_0("obs")
    # each call is one window: 4 for the statistics pass, 4 for the pass that feeds the next layer, one to find which
    # projections share an input; obs may probe that once more, but a pass of its own would be 4 more windows
    assert plain >= 9 and obs - plain <= 1
