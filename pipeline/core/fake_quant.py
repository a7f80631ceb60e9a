"""Simulated weight-only quantization (round-to-nearest, per group), for perplexity studies only.

No CPU engine here runs 4-bit weights, so the paper's appendix study (DaSS + 4-bit weights) is
reproduced in PyTorch: each decoder linear's weight is quantized to ``bits`` with one scale and zero
point per group of ``group`` input columns, then dequantized in place. Pruned zeros are kept exactly
(the mask is re-applied), so the model is sparse and quantized at once.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.common.errors import PipelineError
from pipeline.core.models import decoder_layers


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group: int = 128) -> torch.Tensor:
    """Asymmetric round-to-nearest per group along the input dimension; returns the dequantized weight."""
    rows, cols = weight.shape
    if cols % group:
        raise PipelineError(f"group size {group} does not divide the input dimension {cols}", "choose a divisor")
    w = weight.float().reshape(rows, cols // group, group)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    levels = 2**bits - 1
    scale = ((high - low) / levels).clamp_min(1e-8)
    zero = torch.round(-low / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, levels)
    out = ((q - zero) * scale).reshape(rows, cols)
    return torch.where(weight == 0, torch.zeros_like(out), out).to(weight.dtype)  # pruned zeros stay zero


@torch.no_grad()
def quantize_decoder_linears_(model: nn.Module, bits: int = 4, group: int = 128) -> int:
    """Fake-quantize every linear inside the decoder layers in place; returns how many."""
    count = 0
    for layer in decoder_layers(model):
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(rtn_quantize(module.weight, bits, group))
                count += 1
    return count
