"""Models with LLaMA-2-7B's exact layer shapes and random weights, at any depth (no download needed).

Hidden 4096, intermediate 11008, 32 heads (no GQA), vocab 32000, rms_norm_eps 1e-5: every matrix a
decoder layer multiplies is the size it is in LLaMA-2-7B, so per-layer engine costs are the real
ones; only the depth differs. ``depth_fit`` turns timings at two or more depths into a per-layer and
a fixed cost, and ``extrapolate`` gives the 32-layer figure.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

LLAMA2_7B_LAYERS = 32


def llama2_7b_config(layers: int, vocab: int = 32000) -> LlamaConfig:
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                       num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2)


def random_model(config: LlamaConfig, dtype: torch.dtype, seed: int = 0) -> LlamaForCausalLM:
    """A model of that shape with random weights, built without a slow per-module init."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype))
    model.model.rotary_emb = LlamaRotaryEmbedding(config)  # its buffer was left empty on the meta device
    return model.eval()


def byte_level_tokenizer(text: str, vocab_size: int = 32000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on ``text`` with at most ``vocab_size`` entries.

    LLaMA-2's own tokenizer cannot be downloaded here; any tokenizer whose ids stay below the
    model's vocabulary serves a random-weight model (the engines' speed does not depend on it).
    """
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([text], vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<unk>")
