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


def _fill_random(module: torch.nn.Module, dtype: torch.dtype, gen: torch.Generator) -> None:
    """Give every (meta) parameter of ``module`` real random values (norms 1), as ``random_model`` does."""
    from pipeline.core.checkpoint import assign_parameter

    for name, param in list(module.named_parameters()):
        if "norm" in name:
            value = torch.ones(param.shape, dtype=dtype)
        else:
            value = torch.randn(param.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype)
        assign_parameter(module, name, value)


def write_checkpoint(folder, layers: int, dtype: str = "float16", seed: int = 0, text: str | None = None) -> None:
    """An ordinary Hugging Face folder (config.json, sharded safetensors + index, tokenizer) of a LLaMA-2-7B-shaped
    model with ``layers`` decoder layers and random weights, written one layer at a time (memory: one layer)."""
    from pathlib import Path

    from pipeline.core.checkpoint import ShardWriter, skeleton
    from pipeline.core.data import embedded_text
    from pipeline.core.models import DTYPES, decoder_layers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = skeleton(llama2_7b_config(layers), dtype)
    gen = torch.Generator().manual_seed(seed)
    _fill_random(model.model.embed_tokens, DTYPES[dtype], gen)
    _fill_random(model.model.norm, DTYPES[dtype], gen)
    _fill_random(model.lm_head, DTYPES[dtype], gen)
    writer = ShardWriter(folder, model)
    writer.write_outside_layers()
    for index, layer in enumerate(decoder_layers(model)):
        _fill_random(layer, DTYPES[dtype], gen)
        writer.write_layer(index)
        layer.to("meta")
    writer.finish()
    byte_level_tokenizer(text or embedded_text()).save_pretrained(folder)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a LLaMA-2-7B-shaped checkpoint with random weights "
                                                 "(a Hugging Face safetensors folder), one layer in memory at a time.")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--layers", type=int, default=LLAMA2_7B_LAYERS)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_checkpoint(args.out, args.layers, args.dtype, args.seed)


if __name__ == "__main__":
    main()
