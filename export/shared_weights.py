"""One weights file for both graphs of an artifact.

The DeepSparse and ONNX Runtime graphs come out of the same model, so their weight tensors hold the same
bytes, mostly under different initializer names (the exporter names and transposes them per graph). This
finds each tensor by the sha256 of its bytes and points every initializer of the ONNX Runtime graph whose bytes are in
``deepsparse/model.onnx_data`` at that tensor's offset there, and makes ``onnxruntime/model.onnx_data`` a
hard link to that file: one copy of the weights on disk.

Why a hard link and not a reference: ONNX Runtime (1.26) refuses external data outside the model's own
folder, whether the location says ``../deepsparse/model.onnx_data`` or is a symbolic link resolving there
("External data path for model escapes model directory"); and each engine's folder must load on its own.
A hard link is a second name of the same file, so both folders load as they are. What it cannot do:
survive a copy that does not keep hard links (``cp -r``, zip; ``tar`` and ``rsync -H`` keep them) — the
copy is then two identical files, still correct. The DeepSparse file's zero tail (export/artifact.py,
DEEPSPARSE_DATA_TAIL) is addressed by nobody and harmless to ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
DATA = "model.onnx_data"
#: an external tensor of the ONNX Runtime graph whose bytes the DeepSparse graph lacks is moved into model.onnx up to
#: this size (measured: a [1, 64, 1] rotary constant, 256 bytes, kept a real 1.5B dense artifact from sharing);
#: a larger one leaves both files as they are
INLINE_MAX = 1 << 20


def _external(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def point_at(tensor, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` (an initializer or a Constant's value) read ``length`` bytes at ``offset`` of ``location``."""
    import onnx

    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def attribute_tensors(graph):
    """The tensors in ``graph``'s node attributes (a Constant's ``value``, subgraphs included). Optimum saves a
    graph above 2 GB with ``convert_attribute=True``, so these live in ``model.onnx_data`` too."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_tensors(subgraph)


def all_tensors(graph):
    """Every tensor of ``graph`` that can hold weights: its initializers, then its attributes' tensors."""
    yield from graph.initializer
    yield from attribute_tensors(graph)


def _offsets(folder: Path) -> dict[str, tuple[int, int]]:
    """sha256 of each external tensor of ``folder/model.onnx`` -> (offset, length) in its data file."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    found = {}
    with open(folder / DATA, "rb") as data:
        for tensor in all_tensors(graph):
            ext = _external(tensor)
            if ext.get("location") == DATA:
                offset, length = int(ext.get("offset", 0)), int(ext["length"])
                data.seek(offset)
                found.setdefault(hashlib.sha256(data.read(length)).hexdigest(), (offset, length))
    return found


def share_weights(artifact: Path) -> dict | None:
    """Point the ONNX Runtime graph of ``artifact`` (a folder being written) at the DeepSparse graph's weights
    file; returns what was shared, or None when the artifact lacks one of the two graphs. A tensor is found by
    the sha256 of its bytes (any copy of equal bytes serves); an inline one not found stays inline, an external
    one not found is moved inline up to INLINE_MAX bytes, and above that leaves the graph as it was (its bytes would
    be lost with its own data file)."""
    import onnx
    from onnx import numpy_helper

    artifact = Path(artifact)
    ds, ort = artifact / "deepsparse", artifact / "onnxruntime"
    if not (ds / DATA).is_file() or not (ort / "model.onnx").is_file():
        return None
    where = _offsets(ds)
    model = onnx.load(str(ort / "model.onnx"), load_external_data=False)  # weights stay on disk
    plan, inline, kept = [], [], 0
    with open(ort / DATA, "rb") if (ort / DATA).is_file() else open(os.devnull, "rb") as data:
        tensors = [*((t, True) for t in model.graph.initializer), *((t, False) for t in attribute_tensors(model.graph))]
        for tensor, initializer in tensors:  # every tensor that reads ort/DATA must read the new file right
            ext = _external(tensor)
            if ext and ext.get("location") != DATA:  # a file of its own: the hard link does not touch it
                kept += int(ext["length"])
                continue
            if not ext and not initializer:
                continue  # an inline attribute (a Constant's small value) stays as it is
            if ext:
                data.seek(int(ext.get("offset", 0)))
                raw = data.read(int(ext["length"]))
            else:
                raw = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
            spot = where.get(hashlib.sha256(raw).hexdigest())
            if spot is None or spot[1] != len(raw):
                if ext and len(raw) > INLINE_MAX:  # its bytes live only in the file the hard link replaces
                    log.info("onnxruntime graph keeps its own weights: %s is not in the DeepSparse graph's data",
                             tensor.name)
                    return {"shared_bytes": 0, "hard_link": False,
                            "why_not": f"{tensor.name} ({len(raw)} bytes) is not in deepsparse/{DATA}"}
                if ext:  # a small constant of this graph alone (a rotary table the exporters fold apart)
                    inline.append((tensor, raw))
                kept += len(raw)
            else:
                plan.append((tensor, spot))
    moved = 0
    for tensor, (offset, length) in plan:
        point_at(tensor, DATA, offset, length)
        moved += length
    for tensor, raw in inline:
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = raw
    if not moved:
        return {"shared_bytes": 0, "inline_bytes": kept, "hard_link": False, "why_not": "no tensor in common"}
    before = (ort / DATA).stat().st_size if (ort / DATA).is_file() else 0
    tmp = ort / "model.onnx.sharing"
    onnx.save(model, str(tmp))
    (ort / DATA).unlink(missing_ok=True)
    os.link(ds / DATA, ort / DATA)
    os.replace(tmp, ort / "model.onnx")
    log.info("onnxruntime graph: %.1f MiB of weights now read from the DeepSparse graph's %s (hard link)",
             moved / 2**20, DATA)
    return {"shared_bytes": moved, "inline_bytes": kept, "hard_link": True, "replaced_data_bytes": before}
