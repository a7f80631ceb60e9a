"""The weights of an ONNX graph one tensor at a time: read from its external-data file, changed lazily,
written one by one. Memory is that of the largest tensor (and what is computed from it), not the model's.

    store = GraphTensors.open(folder / "model.onnx")   # the graph's structure; no weight is read
    store.array(name)                                  # one tensor, with the changes registered for it
    store.update(name, fn)                             # from now on the tensor is fn(tensor), computed when read
    store.add(name, dtype, shape, make)                # a new initializer, made when read (or written)
    store.save(target / "model.onnx")                  # each tensor read, changed and written in turn

A change is a function of the tensor's value, so a graph rewrite (export/quantize.py, export/smooth.py) is
planned on the structure alone and each weight is computed once, at save, from the bytes on disk. The same
code serves a graph held in memory (``GraphTensors(model)``: nothing is external, tensors come from the
protobuf), which is how the unit tests build small graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export.shared_weights import DATA, attribute_tensors, point_at

log = logging.getLogger(__name__)

#: offsets in the written data file are multiples of this (a page: engines can map each tensor)
ALIGN = 4096
#: tensors smaller than this that the store made or changed are written inline, as onnx.save would
INLINE_BELOW = 1024


#: rows per block in :func:`by_rows`
BLOCK_ROWS = 1024


def by_rows(value: np.ndarray, fn: Callable[[np.ndarray, slice], np.ndarray], dtype) -> np.ndarray:
    """``fn(value, all rows)`` cast to ``dtype``, computed a block of rows at a time: the same numbers (``fn`` is
    elementwise within a row), without a whole-tensor temporary in fn's precision (float64 for a 500 MB head)."""
    if value.ndim < 2:
        return np.asarray(fn(value, slice(None))).astype(dtype)
    out = np.empty(value.shape, dtype)
    for start in range(0, value.shape[0], BLOCK_ROWS):
        rows = slice(start, start + BLOCK_ROWS)
        out[rows] = fn(value[rows], rows)
    return out


def _external(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


class GraphTensors:
    """The initializers (and Constant values) of ``model``, read on demand from ``base`` (its folder)."""

    def __init__(self, model, base: Path | None = None):
        self.model, self.base = model, Path(base) if base is not None else None
        self.tensors = {t.name: t for t in model.graph.initializer}  # removed ones stay readable
        self._changes: dict[str, list[Callable[[np.ndarray], np.ndarray]]] = {}
        self._made: dict[str, Callable[[], np.ndarray]] = {}

    @classmethod
    def open(cls, graph: Path) -> "GraphTensors":
        """The graph at ``graph`` with its weights left on disk."""
        import onnx

        return cls(onnx.load(str(graph), load_external_data=False), Path(graph).parent)

    # reading -------------------------------------------------------------------------------------------
    def _stored(self, tensor) -> np.ndarray:
        """The value ``tensor`` holds (in the protobuf or at its place in the external-data file)."""
        from onnx import helper, numpy_helper

        ext = _external(tensor)
        if not ext:
            return numpy_helper.to_array(tensor)
        if self.base is None:
            raise ValueError(f"tensor {tensor.name!r} is external but the graph's folder is unknown")
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        count = int(np.prod(tensor.dims, dtype=np.int64))
        value = np.fromfile(self.base / ext["location"], dtype=dtype, count=count, offset=int(ext.get("offset", 0)))
        if value.size != count:
            raise ValueError(f"{self.base / ext['location']} is shorter than tensor {tensor.name!r} needs")
        return value.reshape(tuple(tensor.dims))

    def array(self, name: str) -> np.ndarray:
        """The current value of initializer ``name``: as stored (or as made), then each registered change."""
        value = self._made[name]() if name in self._made else self._stored(self.tensors[name])
        for change in self._changes.get(name, ()):
            value = change(value)
        return value

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].dims)

    # changing ------------------------------------------------------------------------------------------
    def update(self, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
        """From now on ``name`` is ``change(value)`` (computed when read; changes apply in the order given)."""
        self._changes.setdefault(name, []).append(change)

    def add(self, name: str, dtype, shape, make: Callable[[], np.ndarray]) -> None:
        """A new initializer ``name`` of ``dtype`` and ``shape``, whose value ``make()`` computes when needed."""
        from onnx import TensorProto, helper

        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=list(shape))
        self.model.graph.initializer.append(tensor)  # a placeholder: its value is written by save()
        self.tensors[name] = self.model.graph.initializer[-1]
        self._made[name] = make

    def add_array(self, value: np.ndarray, name: str) -> None:
        """A new initializer holding ``value`` now (for small tensors: scales, zero points)."""
        from onnx import numpy_helper

        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        self.tensors[name] = self.model.graph.initializer[-1]

    def remove(self, names: set[str]) -> None:
        """Drop initializers from the graph (their values stay readable for what is made from them)."""
        kept = [t for t in self.model.graph.initializer if t.name not in names]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(kept)

    # writing -------------------------------------------------------------------------------------------
    def save(self, graph: Path) -> int:
        """Write the graph to ``graph`` and its weights to ``model.onnx_data`` beside it, one tensor at a time
        (page-aligned offsets). Returns the bytes written to the data file. ``graph`` must not be the source."""
        import onnx
        from onnx import helper, numpy_helper

        graph = Path(graph)
        if self.base is not None and graph.parent.resolve() == self.base.resolve():
            raise ValueError(f"{graph} would overwrite the weights it is read from")
        tensors = [*((t, True) for t in self.model.graph.initializer),
                   *((t, False) for t in attribute_tensors(self.model.graph))]
        written = 0
        with open(graph.parent / DATA, "wb") as out:
            for tensor, is_init in tensors:
                name = tensor.name
                changed = is_init and (name in self._made or name in self._changes)
                if not changed and not _external(tensor):
                    continue  # inline and untouched
                value = self.array(name) if is_init else self._stored(tensor)
                dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                value = np.ascontiguousarray(value, dtype=dtype)
                if tuple(value.shape) != tuple(tensor.dims):
                    raise ValueError(f"tensor {name!r} became {value.shape}, the graph says {tuple(tensor.dims)}")
                if value.nbytes < INLINE_BELOW:
                    tensor.CopyFrom(numpy_helper.from_array(value, name))
                    continue
                offset = -(-out.tell() // ALIGN) * ALIGN
                out.seek(offset)
                out.write(value.data)  # the array's own buffer, no bytes copy
                point_at(tensor, DATA, offset, value.nbytes)
                written = out.tell()
                del value
        if not written:
            (graph.parent / DATA).unlink()
        onnx.save_model(self.model, str(graph))
        self.base, self._changes, self._made = graph.parent, {}, {}  # the store now reads what it wrote
        self.tensors = {t.name: t for t in self.model.graph.initializer}
        log.debug("wrote %s (%.1f MiB of weights)", graph, written / 2**20)
        return written
