"""Pruning a safetensors checkpoint one decoder layer at a time, in memory flat in depth.

The model is built from its config with parameters on the meta device; the embedding, final norm and
lm_head come in from the shards (the calibration windows need them to reach the first layer); then the
sequential loop (pipeline/core/prune/sequential.py) brings each decoder layer in from the shards just
before pruning it and writes it out as its own shard just after. Peak memory: the parts outside the
layers + one layer in float32 (and its work) + the calibration activation buffer. The semantics are those
of the in-memory path (each layer calibrated on the pruned outputs of the layers before it), and the
tensors written are the same bytes (tests/test_streaming.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.core.checkpoint import (Checkpoint, ShardWriter, load_layer, load_outside_layers, skeleton, tied_names,
                                      unload_layer)
from pipeline.core.models import DTYPES
from pipeline.core.prune.base import PruningMethod
from pipeline.core.prune.sequential import PruneResult, prune_model
from pipeline.core.prune.sparsity import SparsitySpec

log = logging.getLogger(__name__)


class StreamedLayers:
    """The LayerStore of a checkpoint being pruned into ``writer``."""

    def __init__(self, model, checkpoint: Checkpoint, writer: ShardWriter, dtype: torch.dtype):
        self.model, self.checkpoint, self.writer, self.dtype = model, checkpoint, writer, dtype

    def load(self, index: int) -> None:
        load_layer(self.model, index, self.checkpoint, self.dtype)

    def store(self, index: int) -> None:
        self.writer.write_layer(index)
        unload_layer(self.model, index)


def open_streamed(folder: str | Path, config, dtype: str):
    """(skeleton model with the parts outside the layers loaded, checkpoint), the checkpoint checked against
    the config first (missing / truncated shards, shapes)."""
    checkpoint = Checkpoint(folder)
    model = skeleton(config, dtype)
    checkpoint.check_against(model, tied_names(model))
    load_outside_layers(model, checkpoint, DTYPES[dtype])
    return model, checkpoint


def prune_streaming(folder: str | Path, config, dtype: str, out: Path, method: PruningMethod, sparsity: SparsitySpec,
                    calibration_ids: torch.Tensor | None, **options) -> PruneResult:
    """Prune the checkpoint in ``folder`` into ``out`` (shards + index + config); ``options`` as ``prune_model``."""
    model, checkpoint = open_streamed(folder, config, dtype)
    writer = ShardWriter(out, model)
    writer.write_outside_layers()
    result = prune_model(model, method, sparsity, calibration_ids,
                         store=StreamedLayers(model, checkpoint, writer, DTYPES[dtype]), **options)
    writer.finish()
    return result
