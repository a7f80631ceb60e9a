"""The model families this tool knows, by config ``model_type``: one entry per family, and the one place where code
decides anything by a ``model_type`` string (tests/test_family_registry.py walks every other module's syntax tree).

Torch-free: the recipe layer and the config-only checks read it before any weights load. Each entry says

- ``bos_per_window``: what ``bos_per_window: auto`` means for it (pipeline/core/window_protocol.py);
- ``deepsparse``: whether the DeepSparse graph covers it, and what that graph must add (export/deepsparse_graph.py);
  ``None``: ONNX Runtime only;
- ``gguf``: the llama.cpp graph the GGUF writer writes it as (export/gguf_writer.py), ``None``: not written.

What does not depend on the family is read from the model and its config, not from here: the projections by module
path (pipeline/core/models.py: ROLE_PATHS, FUSED_PATHS), sliding windows and layer types (the config), q/k norms and
soft-capping (the modules). Adding a family is one entry here and its tiny model in tests/conftest.py; docs/families.md
is written from this table (python -m pipeline.families_table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeepSparseQuirks:
    """What differs between the LLaMA-like architectures the DeepSparse graph covers. The rest is read from the
    model itself: q/k norms (``self_attn.q_norm``), soft-capping (config), per-layer local rotary (Gemma 3)."""

    embedding_scale: bool = False  # Gemma, Gemma 2 multiply embeddings by sqrt(hidden_size) in the model's forward
    sandwich_norms: bool = False  # Gemma 2/3: a norm after attention and one on each side of the MLP
    fused_qkv: bool = False  # Phi-3: one qkv_proj, split into q, k, v


@dataclass(frozen=True)
class GgufGraph:
    """How the GGUF writer writes a family: llama.cpp's architecture name, and its rotary layout. llama.cpp's
    ``llama`` graph rotates adjacent pairs (q and k rows are permuted from transformers' rotate-half order);
    ``qwen2`` rotates halves as transformers does (no permutation) and reads the q/k/v biases."""

    arch: str
    permute_qk: bool
    qkv_bias: bool = False


@dataclass(frozen=True)
class Family:
    label: str  # how a user names it
    bos_per_window: bool = False  # checkpoints expect a BOS at the start of every sequence
    deepsparse: DeepSparseQuirks | None = None
    gguf: GgufGraph | None = None
    notes: str = ""  # what the DeepSparse graph adds for it, for docs/families.md
    tested_as: tuple[str, ...] = ()  # the tiny random models that stand for it in the tests (tests/conftest.py)


FAMILIES: dict[str, Family] = {
    "llama": Family("LLaMA 2, LLaMA 3.x, ReLU-GLU", deepsparse=DeepSparseQuirks(),
                    gguf=GgufGraph("llama", permute_qk=True), notes="rotary table from the model's (scaled) rotary module", tested_as=("llama", "reglu", "llama3")),
    "mistral": Family("Mistral", deepsparse=DeepSparseQuirks(), gguf=GgufGraph("llama", permute_qk=True), notes="context ≤ its sliding window",
                      tested_as=("mistral",)),
    "qwen2": Family("Qwen2 / Qwen2.5", deepsparse=DeepSparseQuirks(),
                    gguf=GgufGraph("qwen2", permute_qk=False, qkv_bias=True), tested_as=("qwen2",)),
    "qwen3": Family("Qwen3", deepsparse=DeepSparseQuirks(), notes="q/k RMSNorm per head", tested_as=("qwen3",)),
    "gemma": Family("Gemma", bos_per_window=True, deepsparse=DeepSparseQuirks(embedding_scale=True),
                    notes="embedding scale", tested_as=("gemma",)),
    "gemma2": Family("Gemma 2", bos_per_window=True,
                     deepsparse=DeepSparseQuirks(embedding_scale=True, sandwich_norms=True),
                     notes="sandwich norms, attention and final soft-capping; context ≤ sliding window",
                     tested_as=("gemma2",)),
    "gemma3": Family("Gemma 3 multimodal (the BOS protocol only)", bos_per_window=True),
    "gemma3_text": Family("Gemma 3 text", bos_per_window=True, deepsparse=DeepSparseQuirks(sandwich_norms=True),
                          notes="q/k norms, sandwich norms, local rope table on sliding layers; context ≤ sliding window",
                          tested_as=("gemma3",)),
    "phi3": Family("Phi-3 / Phi-4-mini (fused qkv and gate_up)", deepsparse=DeepSparseQuirks(fused_qkv=True),
                   notes="split of the fused qkv, partial rotary", tested_as=("phi3",)),
}


def family(model_type: str | None) -> Family | None:
    return FAMILIES.get(model_type or "")


def bos_per_window_family(model_type: str | None) -> bool:
    """True for a family whose checkpoints expect a BOS per window; unknown families: the stream protocol."""
    known = family(model_type)
    return bool(known and known.bos_per_window)


def deepsparse_model_types() -> dict[str, DeepSparseQuirks]:
    return {name: f.deepsparse for name, f in FAMILIES.items() if f.deepsparse is not None}


def gguf_model_types() -> tuple[str, ...]:
    return tuple(name for name, f in FAMILIES.items() if f.gguf)


def gguf_graph(model_type: str | None) -> GgufGraph | None:
    known = family(model_type)
    return known.gguf if known else None
