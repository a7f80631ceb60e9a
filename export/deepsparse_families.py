"""Which model families the DeepSparse graph (export/deepsparse_graph.py) covers, by config ``model_type``.

Torch-free and weight-free: the check reads only the config (config.json, via load_config), so a run
whose recipe asks for a DeepSparse export of an uncovered family is refused before any weights load or
calibration runs (pipeline/stages/export.py, check_config).
"""

from __future__ import annotations

from pipeline.common.errors import PipelineError
from pipeline.core.families import DeepSparseQuirks as ArchitectureQuirks
from pipeline.core.families import deepsparse_model_types

#: model_type -> quirks, from the family registry (pipeline/core/families.py). A family not listed is refused with a
#: clear error.
ARCHITECTURES: dict[str, ArchitectureQuirks] = deepsparse_model_types()


def quirks_for(config) -> ArchitectureQuirks:
    """The covered family's quirks; an uncovered one refused with the covered list and the fix."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise PipelineError(
            f"the DeepSparse export covers {', '.join(sorted(ARCHITECTURES))}, not {model_type!r}",
            "export for ONNX Runtime only (export.engines: [onnxruntime]) or add the architecture to "
            "pipeline/core/families.py (deepsparse=...) and its patches to export/deepsparse_graph.py",
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
