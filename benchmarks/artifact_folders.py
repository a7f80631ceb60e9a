"""Where a benchmarked artifact's manifest lies, the name it is benchmarked under, and what ``pipeline validate``
needs of it, read as JSON alone (no onnx, no torch: validating a recipe loads nothing heavy). The full description,
which also checks the artifact's files and parses its graphs, is benchmarks/runner.py:describe_artifact."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.graph_limits import graph_limits
from benchmarks.llamacpp import describe_gguf, is_gguf_folder

MANIFEST = "manifest.json"  # export/artifact.py writes it (the same name)
#: a run's artifact folders and the suffix each is benchmarked under (RUN/artifact-int8 -> RUN-int8)
RUN_FOLDERS = {"artifact": "", "artifact-dense": "-dense", "artifact-int8": "-int8"}


def manifest_folder(entry: str | Path) -> Path | None:
    """The folder holding the manifest of ``entry`` (an artifact folder, or a run folder with one in artifact/);
    None when neither holds one."""
    path = Path(entry)
    for folder in (path / "artifact", path):
        if (folder / MANIFEST).is_file():
            return folder
    return None


def benchmark_label(folder: Path) -> str:
    """The name an artifact folder is benchmarked under: RUN, RUN-dense, RUN-int8 for a run's folders, else its name."""
    folder = Path(folder)
    return folder.parent.name + RUN_FOLDERS[folder.name] if folder.name in RUN_FOLDERS else folder.name


def outline(entry: str | Path) -> dict | None:
    """{key, path, max_sequence_length} of an artifact or GGUF folder from its JSON files alone; None when there is
    none at ``entry`` (yet)."""
    if is_gguf_folder(Path(entry)):
        return describe_gguf(Path(entry))
    folder = manifest_folder(entry)
    if folder is None:
        return None
    manifest = json.loads((folder / MANIFEST).read_text())
    engines = list(manifest.get("engines") or {})
    config_file = folder / engines[0] / "config.json" if engines else None
    config = json.loads(config_file.read_text()) if config_file and config_file.is_file() else {}
    return {"key": benchmark_label(folder), "path": str(folder), "max_sequence_length": graph_limits(manifest, config)}
