"""Tiny random GLU models built in the tests themselves, and a tiny tokenizer to save beside them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the CLI's per-invocation log files go to a scratch folder, not the user's ~/.cache
import tempfile  # noqa: E402

os.environ.setdefault("PIPELINE_LOG_DIR", tempfile.mkdtemp(prefix="pipeline-test-logs-"))

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
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
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
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
    # LLaMA 3.x: rope scaling (the graph's rotary table must come from the scaled module)
    "llama3": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16)),  # q/k norms
    # Gemma 2: sandwich norms, attention and final soft-capping, alternating sliding / full layers (the window
    # is the whole context here; a shorter one is refused for DeepSparse, tests/test_families.py)
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(**COMMON, head_dim=16, sliding_window=256,
                                                     query_pre_attn_scalar=16)),
    # Gemma 3: q/k norms, sandwich norms, a local rope base on sliding layers, embedding scaled in its module
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=256,
                                                         query_pre_attn_scalar=16,
                                                         layer_types=["sliding_attention", "full_attention"])),
}


#: fused projections (one qkv_proj, one gate_up_proj): Phi-3, and Phi-4-mini's grouped-query attention and
#: partial rotary; kept apart because their layers have no q_proj / gate_proj modules
FUSED_ARCHITECTURES = {
    "phi3": lambda: Phi3ForCausalLM(Phi3Config(**COMMON, pad_token_id=0, partial_rotary_factor=0.5)),
}


#: tests that run one after another on one pytest-xdist worker: the end-to-end runs (GBs of disk each, which must
#: not add up on a small CI disk) and the local Ray clusters (each sized to the whole machine)
SERIAL_FILES = {"test_sweep_ray.py", "test_cpu_kinds.py", "test_kill_resume.py",
                "test_embedded_e2e.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("e2e") or item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.xdist_group("serial"))


def tiny_model(arch: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = {**ARCHITECTURES, **FUSED_ARCHITECTURES}[arch]().eval()
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


def pruned_tiny(arch="llama", method="dass"):
    from pipeline.core.prune.methods import make_method
    from pipeline.core.prune.sparsity import SparsitySpec
    from pipeline.core.prune.sequential import prune_model

    model = tiny_model(arch)
    prune_model(model, make_method(method), SparsitySpec.parse("2:4"), calibration_ids(), scope="attention+mlp",
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


# --- the real CLI in a child process (test_cli.py, test_bad_inputs.py) ---

TEXT = " ".join(f"word{i % 37} and more text number {i}." for i in range(3000))


def run_cli(*args, cwd, log_dir=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PIPELINE_LOG_DIR": str(log_dir or Path(cwd) / "logs")}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_checkpoint(root / "tiny-llama", tiny_model("llama"))
    save_checkpoint(root / "tiny-opt", tiny_non_glu_model())
    (root / "calib.txt").write_text(TEXT)
    (root / "short.txt").write_text("too short")
    (root / "empty.txt").write_text("")
    return root


def write_recipe(root: Path, name: str, **changes) -> Path:
    """A tiny-model recipe in ``root``; ``section__key=value`` changes it."""
    import yaml

    data = {
        "name": name,
        "output_dir": str(root / "runs" / name),
        "model": {"source": str(root / "tiny-llama"), "dtype": "float32"},
        "calibration": {"dataset": "file", "path": str(root / "calib.txt"), "num_samples": 4, "seq_len": 32},
        "prune": {"method": "dass", "sparsity": "2:4", "scope": "attention+mlp"},
        "evaluation": {"dataset": "file", "path": str(root / "calib.txt"), "context_length": 64, "max_windows": 4},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tiny_recipe_file(tmp_path: Path, name: str, prune: dict) -> Path:
    """A recipe file for a tiny LLaMA saved in ``tmp_path`` (calibration and evaluation on TEXT), output in RUN."""
    import yaml

    save_checkpoint(tmp_path / "tiny", tiny_model("llama"))
    (tmp_path / "text.txt").write_text(TEXT)
    text = str(tmp_path / "text.txt")
    data = {
        "name": name,
        "output_dir": str(tmp_path / "run"),
        "model": {"source": str(tmp_path / "tiny"), "dtype": "float32"},
        "calibration": {"dataset": "file", "path": text, "num_samples": 4, "seq_len": 32},
        "prune": prune,
        "evaluation": {"dataset": "file", "path": text, "context_length": 64, "max_windows": 2},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- walkers of the code for decisions by name (test_graph_formats.py, test_engine_table.py) ---

def name_comparisons(tree, names, questions_are_switches: bool) -> list[str]:
    """Comparisons in ``tree`` with one of ``names`` as a literal on either side (``x == "a"``, ``x in ("a", "b")``).
    ``questions_are_switches`` False: ``"a" in collection`` (asking what a list holds) is let pass."""
    import ast

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not questions_are_switches and isinstance(node.left, ast.Constant) and any(
                isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            continue
        for side in (node.left, *node.comparators):
            values = [side] if isinstance(side, ast.Constant) else list(getattr(side, "elts", []))
            hits = [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]
            if hits:
                found.append(f"line {node.lineno}: compares with {hits}")
    return found
