"""Perplexity on non-overlapping windows of a token stream (as Wanda and SparseGPT report it).

Stream protocol (``bos_token_id`` None): window ``w`` is ``tokens[w*L:(w+1)*L]``. BOS per window
(pipeline/core/window_protocol.py): window ``w`` is BOS + ``tokens[w*(L-1):(w+1)*(L-1)]``, so the text
tokens still tile the stream without gaps or overlaps. Either way each window scores its ``L - 1``
next-token predictions; the first position (a BOS, or the stream's token there) is never a target.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.common.errors import PipelineError


def evaluation_windows(tokens: torch.Tensor, context_length: int, max_windows: int | None = None,
                       bos_token_id: int | None = None) -> torch.Tensor:
    """``[windows, context_length]``: the stream cut as the protocol says (see the module docstring)."""
    span = context_length - (0 if bos_token_id is None else 1)
    windows = tokens.numel() // span
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise PipelineError(
            f"the evaluation text has {tokens.numel()} tokens, fewer than one window of {context_length}",
            "use a longer evaluation text or a smaller evaluation.context_length",
        )
    cut = tokens[: windows * span].reshape(windows, span)
    if bos_token_id is None:
        return cut
    return torch.cat([torch.full((windows, 1), bos_token_id, dtype=cut.dtype), cut], dim=1)


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, context_length: int, max_windows: int | None = None,
               device: str = "cpu", progress: bool = True, desc: str = "perplexity",
               bos_token_id: int | None = None) -> dict:
    """exp(mean next-token loss) over the windows of ``evaluation_windows`` (at most ``max_windows``)."""
    batches = evaluation_windows(tokens, context_length, max_windows, bos_token_id)
    windows = batches.shape[0]
    window_nll: list[float] = []
    home = next(model.parameters()).device
    model.to(device)
    try:
        for w in tqdm(range(windows), desc=desc, disable=not progress, leave=False):
            ids = batches[w].unsqueeze(0).to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            window_nll.append(nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="mean").item())
    finally:
        model.to(home)
    mean = sum(window_nll) / windows  # every window scores context_length - 1 tokens
    spread = math.sqrt(sum((v - mean) ** 2 for v in window_nll) / (windows - 1)) if windows > 1 else None
    return {"perplexity": math.exp(mean), "windows": windows, "context_length": context_length,
            "tokens": windows * context_length, "bos_per_window": bos_token_id is not None,
            # the sampling noise of the windows: the mean loss's standard error (exp of it: a perplexity factor)
            "nll_standard_error": spread / math.sqrt(windows) if spread is not None else None,
            "window_nll": window_nll}


def paired_change(reference: dict, other: dict) -> dict | None:
    """``other``'s perplexity against ``reference``'s on the same windows: the ratio and the standard error of the
    mean per-window loss difference (the windows' own difficulty cancels, so this noise is far below either
    perplexity's own). None when the two did not score the same windows."""
    a, b = reference.get("window_nll"), other.get("window_nll")
    if not a or not b or len(a) != len(b):
        return None
    diffs = [y - x for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else 0.0
    return {"ratio": math.exp(mean), "nll_difference": mean, "standard_error": spread / math.sqrt(len(diffs))}
