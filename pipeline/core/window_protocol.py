"""Whether each perplexity / calibration window starts with the tokenizer's BOS, by model family.

Two protocols:

- **stream** (Wanda / SparseGPT, whose LLaMA-2 figures the DaSS paper compares with): the text is
  tokenized as one stream (one BOS at its very start, if the tokenizer adds one) and cut into windows;
  a window after the first starts mid-text, with no BOS.
- **BOS per window**: every window is BOS + (length - 1) text tokens; the text tokens of successive
  windows still tile the stream without gaps or overlaps, and the BOS position is never a target.
  Gemma checkpoints need it: without a BOS the model is far off its training distribution (a Gemma 3
  checkpoint measured perplexity 376 on the stream protocol and 72 with a BOS per window, issue 18).

``auto`` picks BOS per window for the families whose entry in pipeline/core/families.py says so (by the config's
``model_type``) and the stream protocol for every other one. Torch-free: the recipe layer may read it.
"""

from __future__ import annotations

from typing import Literal, Union

from pipeline.core.families import bos_per_window_family

Setting = Union[Literal["auto"], bool]


def bos_per_window(setting: Setting, model_type: str | None) -> bool:
    """The recipe's ``bos_per_window`` (auto / true / false) resolved for a model family."""
    if setting == "auto":
        return bos_per_window_family(model_type)
    return bool(setting)


def describe(bos: bool | None, length: int | None = None) -> str:
    """One phrase for report.md: which protocol the windows followed."""
    if bos is None:
        return "window protocol not recorded (a run from before it was)"
    if bos:
        text = f"{length - 1} text tokens" if length else "text tokens"
        return f"BOS per window (BOS + {text}; the BOS is never a target)"
    return "one token stream cut into windows, no BOS per window (the Wanda / SparseGPT protocol)"
