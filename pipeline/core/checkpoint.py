"""A Hugging Face safetensors checkpoint read tensor by tensor, and a pruned copy written layer by layer.

``Checkpoint`` opens a folder's ``model.safetensors`` or its sharded form (``model.safetensors.index.json``
and the shards it names) without reading any weights, and checks it against the model's config before
anything runs: every shard present and complete (safetensors' header covers the whole file), every tensor
the model needs present with the shape the config implies. ``skeleton`` builds the model with its
parameters on the meta device (buffers such as rotary frequencies are real), so a decoder layer can be
brought in from the shards, pruned and written out alone (pipeline/core/prune/sequential.py).
``ShardWriter`` writes each layer as one shard and the index last, as ``save_pretrained`` would name them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.common.errors import PipelineError
from pipeline.core.models import DTYPES, decoder_layers

log = logging.getLogger(__name__)

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def is_safetensors_folder(location: str | Path) -> bool:
    folder = Path(location).expanduser()
    return folder.is_dir() and ((folder / SINGLE).is_file() or (folder / INDEX).is_file())


def safetensors_folder(source: str, gguf_file: str | None = None, revision: str | None = None) -> Path | None:
    """The local folder holding ``source``'s safetensors weights (a hub id: its snapshot, fetched or cached), or
    None when the source is a GGUF file or has no safetensors weights (then the model loads whole)."""
    from pipeline.core.models import resolve_source

    if gguf_file:
        return None
    location = resolve_source(source)
    if Path(location).expanduser().exists():
        return Path(location).expanduser() if is_safetensors_folder(location) else None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, revision=revision, allow_patterns=["*.json", "model*.safetensors"]))
    except Exception as exc:  # offline and not cached, gated, no such repo: the whole-model loader says why
        log.debug("no safetensors snapshot of %s (%s); the model loads whole", source, exc)
        return None
    return folder if is_safetensors_folder(folder) else None


class Checkpoint:
    """The tensors of a safetensors folder by name; opening it checks that every shard is there and whole."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder).expanduser()
        if (self.folder / INDEX).is_file():
            try:
                weight_map: dict[str, str] = json.loads((self.folder / INDEX).read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise PipelineError(f"{self.folder / INDEX} is not a safetensors index ({exc})",
                                    "re-download the checkpoint's index file") from exc
            shards = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE).is_file():
            shards, weight_map = [SINGLE], None
        else:
            raise PipelineError(f"{self.folder} has no {SINGLE} or {INDEX}",
                                "point model.source at a Hugging Face folder with safetensors weights")
        self.location: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for shard in shards:
            path = self.folder / shard
            if not path.is_file():
                raise PipelineError(f"checkpoint shard {path} is missing (named in {INDEX})",
                                    "download the checkpoint again (all shards)")
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for name in handle.keys():
                        self.location[name] = shard
                        self.shapes[name] = tuple(handle.get_slice(name).get_shape())
            except Exception as exc:  # safetensors raises its own error type for a short or corrupt header
                raise PipelineError(f"checkpoint shard {path} is truncated or corrupt ({exc})",
                                    "download that shard again") from exc
        if weight_map is not None:
            absent = sorted(n for n, s in weight_map.items() if self.location.get(n) != s)
            if absent:
                raise PipelineError(f"checkpoint shard {self.folder / weight_map[absent[0]]} lacks {absent[0]} "
                                    f"(and {len(absent) - 1} more tensors the index names)",
                                    "download that shard again")

    def read(self, names: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The named tensors as ``dtype``, in memory of their own: each shard is mapped only while it is read,
        so the pages read do not stay resident (a whole 7B checkpoint would otherwise count in the RSS)."""
        from safetensors import safe_open

        found: dict[str, torch.Tensor] = {}
        for shard in sorted({self.location[n] for n in names}):
            with safe_open(str(self.folder / shard), framework="pt") as handle:
                for name in names:
                    if self.location[name] == shard:
                        found[name] = handle.get_tensor(name).to(dtype, copy=True)
        return found

    def check_against(self, model: nn.Module, tied: set[str]) -> None:
        """Every parameter of ``model`` (a skeleton from the config) is in the checkpoint with its shape."""
        for name, param in model.named_parameters(remove_duplicate=False):
            if name in tied:
                continue
            if name not in self.shapes:
                raise PipelineError(f"checkpoint {self.folder} has no tensor {name}, which its config.json implies",
                                    "check that config.json belongs to these weights, or download the checkpoint "
                                    "again")
            if self.shapes[name] != tuple(param.shape):
                raise PipelineError(
                    f"checkpoint shard {self.folder / self.location[name]}: {name} has shape "
                    f"{list(self.shapes[name])} but config.json implies {list(param.shape)}",
                    "use the config.json that belongs to these weights (or the weights that belong to it)")


def tied_names(model: nn.Module) -> set[str]:
    """Parameter names that share another's storage when the config ties them (lm_head to the embedding)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    return set(getattr(model, "_tied_weights_keys", None) or [])


def skeleton(config, dtype: str) -> nn.Module:
    """The model of ``config`` with every parameter on the meta device (no weight memory); buffers real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.eval()
    model.config.use_cache = False
    model.config.dtype = DTYPES[dtype]  # what from_pretrained(dtype=...) records, and save_pretrained writes
    return model


def layer_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the decoder layer stack, e.g. ``model.layers``."""
    layers = decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def assign_parameter(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def load_outside_layers(model: nn.Module, checkpoint: Checkpoint, dtype: torch.dtype) -> None:
    """Materialise every parameter outside the decoder layers (embedding, final norm, lm_head), then re-tie."""
    prefix = layer_prefix(model) + "."
    tied = tied_names(model)
    names = [n for n, _ in model.named_parameters(remove_duplicate=False) if not n.startswith(prefix) and n not in tied]
    for name, tensor in checkpoint.read(names, dtype).items():
        assign_parameter(model, name, tensor)
    if tied:
        model.tie_weights()


def load_layer(model: nn.Module, index: int, checkpoint: Checkpoint, dtype: torch.dtype) -> None:
    """Bring decoder layer ``index`` in from the shards, in ``dtype`` (the model's load dtype)."""
    layer = decoder_layers(model)[index]
    base = f"{layer_prefix(model)}.{index}."
    tensors = checkpoint.read([base + name for name, _ in layer.named_parameters()], dtype)
    for name, tensor in tensors.items():
        assign_parameter(layer, name[len(base):], tensor)


def unload_layer(model: nn.Module, index: int) -> None:
    decoder_layers(model)[index].to("meta")


class ShardWriter:
    """Writes a model shard by shard: the parts outside the layers first, then one shard per decoder layer,
    the index last (``model-XXXXX-of-YYYYY.safetensors``, as ``save_pretrained`` names shards)."""

    def __init__(self, folder: Path, model: nn.Module):
        self.folder, self.model = Path(folder), model
        self.count = len(decoder_layers(model)) + 1
        self.weight_map: dict[str, str] = {}
        self.total = 0

    def _write(self, number: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        shard = f"model-{number:05d}-of-{self.count:05d}.safetensors"
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(self.folder / shard), metadata={"format": "pt"})
        for name, tensor in tensors.items():
            self.weight_map[name] = shard
            self.total += tensor.numel() * tensor.element_size()

    def write_outside_layers(self) -> None:
        prefix = layer_prefix(self.model) + "."
        tied = tied_names(self.model)
        self._write(1, {n: p for n, p in self.model.named_parameters(remove_duplicate=False)
                        if not n.startswith(prefix) and n not in tied})

    def write_layer(self, index: int) -> None:
        base = f"{layer_prefix(self.model)}.{index}."
        layer = decoder_layers(self.model)[index]
        self._write(index + 2, {base + n: p for n, p in layer.named_parameters()})

    def finish(self) -> None:
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        self.model.config.save_pretrained(self.folder)
        if getattr(self.model, "generation_config", None) is not None and self.model.can_generate():
            self.model.generation_config.save_pretrained(self.folder)
