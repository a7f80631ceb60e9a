"""Tiny random GLU models built in the tests themselves, and a tiny tokenizer to save beside them."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

ARCHITECTURES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None)),
    "gemma": lambda: GemmaForCausalLM(GemmaConfig(**COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh")),
    "reglu": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, hidden_act="relu")),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),
}


def tiny_model(arch: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch]().eval()
    model.config.use_cache = False
    return model


def tiny_non_glu_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=256, word_embed_proj_dim=64)
    return OPTForCausalLM(config).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level-ish character tokenizer with VOCAB entries, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 32 + VOCAB - 2)]
    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<s>",
                                   pad_token="<unk>")


def save_checkpoint(folder, model) -> str:
    model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def calibration_ids(n: int = 4, seq_len: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (n, seq_len), generator=g)


@pytest.fixture
def ids() -> torch.Tensor:
    return calibration_ids()


def pruned_tiny(arch="llama"):
    from pipeline.prune import make_method
    from pipeline.prune.masks import SparsitySpec
    from pipeline.prune.sequential import prune_model

    model = tiny_model(arch)
    prune_model(model, make_method("dass"), SparsitySpec.parse("2:4"), calibration_ids(), scope="attention+mlp",
                progress=False)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.bos_token_id = 1, 1
    return model


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    model = pruned_tiny()
    folder = tmp_path_factory.mktemp("artifact") / "artifact"
    from export.artifact import export_artifact

    manifest = export_artifact(model, tiny_tokenizer(), folder, max_positions=128, metadata={"method": "dass"},
                               external_data=True)
    return model, folder, manifest
