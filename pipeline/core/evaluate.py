"""Perplexity on non-overlapping windows of a token stream (as Wanda and SparseGPT report it)."""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.common.errors import PipelineError


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, context_length: int, max_windows: int | None = None,
               device: str = "cpu", progress: bool = True, desc: str = "perplexity") -> dict:
    """exp(mean next-token loss) over ``len(tokens) // context_length`` windows (at most ``max_windows``)."""
    windows = tokens.numel() // context_length
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise PipelineError(
            f"the evaluation text has {tokens.numel()} tokens, fewer than one window of {context_length}",
            "use a longer evaluation text or a smaller evaluation.context_length",
        )
    total_nll = 0.0
    home = next(model.parameters()).device
    model.to(device)
    try:
        for w in tqdm(range(windows), desc=desc, disable=not progress, leave=False):
            ids = tokens[w * context_length : (w + 1) * context_length].unsqueeze(0).to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="mean")
            total_nll += loss.item() * (context_length - 1)
    finally:
        model.to(home)
    mean = total_nll / (windows * (context_length - 1))
    return {"perplexity": math.exp(mean), "windows": windows, "context_length": context_length,
            "tokens": windows * context_length}
