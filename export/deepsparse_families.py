"""Which model families the DeepSparse graph (export/deepsparse_graph.py) covers, by config ``model_type``.

Torch-free and weight-free: the check reads only the config (config.json, via load_config), so a run
whose recipe asks for a DeepSparse export of an uncovered family is refused before any weights load or
calibration runs (pipeline/stages/export.py, check_config).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.common.errors import PipelineError


@dataclass(frozen=True)
class ArchitectureQuirks:
    """What differs between the LLaMA-like architectures the DeepSparse graph covers. The rest is read from the
    model itself: q/k norms (``self_attn.q_norm``), soft-capping (config), per-layer local rotary (Gemma 3)."""

    embedding_scale: bool = False  # Gemma, Gemma 2 multiply embeddings by sqrt(hidden_size) in the model's forward
    sandwich_norms: bool = False  # Gemma 2/3: a norm after attention and one on each side of the MLP
    fused_qkv: bool = False  # Phi-3: one qkv_proj, split into q, k, v


#: model_type -> quirks. An architecture not listed here is refused with a clear error.
ARCHITECTURES: dict[str, ArchitectureQuirks] = {
    "llama": ArchitectureQuirks(),  # LLaMA 2 and 3.x (rope scaling comes with the model's rotary module)
    "mistral": ArchitectureQuirks(),
    "qwen2": ArchitectureQuirks(),  # Qwen2 and Qwen2.5
    "qwen3": ArchitectureQuirks(),  # q/k norms
    "gemma": ArchitectureQuirks(embedding_scale=True),
    "gemma2": ArchitectureQuirks(embedding_scale=True, sandwich_norms=True),  # + attention / final soft-capping
    "gemma3_text": ArchitectureQuirks(sandwich_norms=True),  # + q/k norms, local rotary on sliding layers
    "phi3": ArchitectureQuirks(fused_qkv=True),  # Phi-3 and Phi-4-mini (partial rotary)
}


def quirks_for(config) -> ArchitectureQuirks:
    """The covered family's quirks; an uncovered one refused with the covered list and the fix."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise PipelineError(
            f"the DeepSparse export covers {', '.join(sorted(ARCHITECTURES))}, not {model_type!r}",
            "export for ONNX Runtime only (export.engines: [onnxruntime]) or add the architecture to "
            "export/deepsparse_families.py:ARCHITECTURES (and its patches to export/deepsparse_graph.py)",
        )
    return ARCHITECTURES[model_type]


def attention_window(config) -> int | None:
    """The sliding window some layers attend within (Mistral, Gemma 2/3, Phi-3, Qwen2 with it switched on), or None."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def check_context(config, max_positions: int) -> None:
    """The DeepSparse graph attends to every cached token (DeepSparse feeds the causal mask); a model whose layers
    attend within a sliding window is exact only while the context fits the window, so a longer one is refused."""
    context = min(max_positions, getattr(config, "max_position_embeddings", max_positions))
    window = attention_window(config)
    if window is not None and context > window:
        raise PipelineError(
            f"{config.model_type} attends within a sliding window of {window} tokens and the DeepSparse graph has no "
            f"window, so its context ({context} tokens) must not exceed {window}",
            f"set export.max_sequence_length to at most {window}, or export for ONNX Runtime only "
            "(export.engines: [onnxruntime])")
