"""The forward pass DeepSparse's internal KV cache needs, built from a transformers model's own modules.

DeepSparse 1.8 never published its text-generation graph format; what it accepts is what
SparseML 1.8 produced, found by compiling candidate graphs (tests/test_export_patches.py). Each
difference from transformers' own forward is one named patch below, with its reason:

- ``positions`` input (patch ``positions_input``): DeepSparse feeds ``positions`` and rejects
  ``position_ids`` / ``cache_position``.
- ``rotary_table`` : cos/sin are rows of a precomputed table gathered by position. The
  on-the-fly rotary of current transformers (MatMul with inv_freq, Cos, Sin) aborts the
  DeepSparse compiler (graph.cpp:925).
- ``causal_mask_input``: the engine feeds an int64 ``causal_mask [1, 1, q, S]``; it becomes an
  additive mask with ``(mask - 1) * FLT_MAX``. ``attention_mask`` (left padding) is folded in.
- ``repeat_kv_before_cache``: with grouped-query attention, K/V are repeated to all heads
  *before* the cache Concat, so the cache holds every head (as SparseML did); repeating after
  it aborts the compiler (fuse_cached_concat_gemm.cpp:283).
- ``cache_concat_feeds_matmul``: ``Concat([past, new], axis=2)`` feeds the attention MatMuls
  directly; nothing reads the past's shape.
- ``logits_first``: outputs are ``logits`` then ``present.{i}.key|value``.

Everything else (projections, norms, the GLU MLP, embedding and LM head) is the model's own
modules, called as they are, so pruned weights and architecture details carry over untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn

from export.deepsparse_families import (  # noqa: F401 (ARCHITECTURES re-exported)
    ARCHITECTURES, ArchitectureQuirks, check_context, quirks_for)
from pipeline.core.models import decoder_layers, fused_rows

PATCHES = ("positions_input", "rotary_table", "causal_mask_input", "repeat_kv_before_cache",
           "cache_concat_feeds_matmul", "logits_first")

FLT_MAX = torch.finfo(torch.float32).max


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rotary_tables(rotary: nn.Module, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[max_positions, rotary dim]`` from the model's own rotary module (keeps any rope scaling)."""
    positions = torch.arange(max_positions).unsqueeze(0)
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, positions)
    return cos[0].float().contiguous(), sin[0].float().contiguous()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_heads(x: torch.Tensor, times: int) -> torch.Tensor:
    if times == 1:
        return x
    batch, heads, seq, dim = x.shape
    return x[:, :, None].expand(batch, heads, times, seq, dim).reshape(batch, heads * times, seq, dim)


def _legacy_past(past_key_values) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Optimum hands the past over as a transformers Cache; we want plain (key, value) pairs."""
    if hasattr(past_key_values, "layers"):
        return [(layer.keys, layer.values) for layer in past_key_values.layers]
    return [tuple(pair) for pair in past_key_values]


@contextmanager
def _traced_as(layer: nn.Module, step) -> Iterator[None]:
    """Run ``step`` as ``layer``'s forward for one call, so the tracer names its nodes after the layer's scope
    (``/model/layers.i/...``, as in Optimum's standard graph); export/depth.py finds each layer's nodes by it."""
    layer.forward = partial(step, layer)
    try:
        yield
    finally:
        del layer.forward  # the class's forward again


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on the first ``cos.shape[-1]`` channels of each head (all of them but for partial rotary, Phi-4-mini)."""
    dim = cos.shape[-1]
    if dim == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rotated, passed = x[..., :dim], x[..., dim:]
    return torch.cat([rotated * cos + _rotate_half(rotated) * sin, passed], dim=-1)


def _qkv(layer, x: torch.Tensor, quirks: ArchitectureQuirks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value [batch, q, width] of the attention input: three projections, or one fused (Phi-3),
    split at the rows pruning takes as q / k / v (pipeline/core/models.py:fused_rows)."""
    attn = layer.self_attn
    if not quirks.fused_qkv:
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    qkv = attn.qkv_proj(x)
    return tuple(qkv[..., start:end] for start, end in fused_rows(layer, "self_attn.qkv_proj"))


def _layer_step(layer, hidden, past_key, past_value, rotary, additive, quirks: ArchitectureQuirks, softcap=None):
    """One decoder layer of the DeepSparse graph: (hidden out, key cache, value cache). ``rotary`` maps
    "global" / "local" to this step's (cos, sin) rows; a sliding layer of Gemma 3 reads the local table."""
    attn = layer.self_attn
    residual = hidden
    x = layer.input_layernorm(hidden)
    batch, q_len, _ = x.shape
    head_dim = attn.head_dim
    q, k, v = _qkv(layer, x, quirks)
    query = q.view(batch, q_len, -1, head_dim)
    key = k.view(batch, q_len, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3, Gemma 3: RMSNorm over each head's channels before rotary
        query, key = attn.q_norm(query), attn.k_norm(key)
    query, key = query.transpose(1, 2), key.transpose(1, 2)
    value = v.view(batch, q_len, -1, head_dim).transpose(1, 2)
    cos, sin = rotary["local" if getattr(attn, "is_sliding", False) and "local" in rotary else "global"]
    query, key = _apply_rotary(query, cos, sin), _apply_rotary(key, cos, sin)
    # repeat_kv_before_cache, cache_concat_feeds_matmul
    groups = query.shape[1] // key.shape[1]
    key = torch.cat([past_key, _repeat_heads(key, groups)], dim=2)
    value = torch.cat([past_value, _repeat_heads(value, groups)], dim=2)
    scores = torch.matmul(query, key.transpose(2, 3)) * attn.scaling
    if softcap:  # Gemma 2: cap * tanh(scores / cap), before the mask
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax(scores + additive, dim=-1, dtype=torch.float32).to(query.dtype)
    out = attn.o_proj(torch.matmul(probs, value).transpose(1, 2).reshape(batch, q_len, -1))
    if quirks.sandwich_norms:
        hidden = residual + layer.post_attention_layernorm(out)
        return hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden))), key, value
    hidden = residual + out
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, key, value


class DeepSparseForward:
    """Callable with DeepSparse's input names, bound to a covered family's ``*ForCausalLM``."""

    def __init__(self, model: nn.Module, max_positions: int):
        self.model = model
        self.quirks = quirks_for(model.config)
        check_context(model.config, max_positions)
        self.tables = {"global": rotary_tables(model.model.rotary_emb, max_positions)}
        if hasattr(model.model, "rotary_emb_local"):  # Gemma 3: sliding layers use their own rope base
            self.tables["local"] = rotary_tables(model.model.rotary_emb_local, max_positions)
        self.layers = decoder_layers(model)

    def __call__(self, input_ids, attention_mask, past_key_values, positions, causal_mask):
        model, config = self.model, self.model.config
        hidden = model.model.embed_tokens(input_ids)
        if self.quirks.embedding_scale:
            hidden = hidden * torch.tensor(config.hidden_size**0.5, dtype=hidden.dtype)

        # causal_mask_input: 1 = may attend; left padding from attention_mask folded in
        allowed = causal_mask * attention_mask[:, None, None, :]
        additive = (allowed.to(torch.float32) - 1.0) * FLT_MAX

        # rotary_table: rows gathered by position, [batch, 1, q, rotary dim]
        rotary = {name: (cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))
                  for name, (cos, sin) in self.tables.items()}
        step = partial(_layer_step, quirks=self.quirks, softcap=getattr(config, "attn_logit_softcapping", None))

        past = _legacy_past(past_key_values)
        presents = []
        for layer, (past_key, past_value) in zip(self.layers, past):
            with _traced_as(layer, step):  # the layer's nodes carry its scope (/model/layers.i/...)
                hidden, key, value = layer(hidden, past_key, past_value, rotary, additive)
            presents.append((key, value))
        logits = model.lm_head(model.model.norm(hidden))
        cap = getattr(config, "final_logit_softcapping", None)
        if cap:  # Gemma 2
            logits = torch.tanh(logits / cap) * cap
        return {"logits": logits, "past_key_values": tuple(presents)}  # logits_first
