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
    """What differs between the LLaMA-like architectures the DeepSparse graph covers."""

    embedding_scale: bool = False  # Gemma multiplies embeddings by sqrt(hidden_size)


#: model_type -> quirks. An architecture not listed here is refused with a clear error.
ARCHITECTURES: dict[str, ArchitectureQuirks] = {
    "llama": ArchitectureQuirks(),
    "mistral": ArchitectureQuirks(),
    "qwen2": ArchitectureQuirks(),
    "gemma": ArchitectureQuirks(embedding_scale=True),
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
