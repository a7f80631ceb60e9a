"""Streaming prune (one decoder layer in memory at a time) against the in-memory path, and bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import calibration_ids, tiny_model, tiny_tokenizer
from pipeline.common.errors import PipelineError
from pipeline.core.checkpoint import Checkpoint, skeleton, tied_names
from pipeline.core.models import load_model
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.sequential import prune_model
from pipeline.core.prune.sparsity import SparsitySpec
from pipeline.core.prune.streaming import open_streamed, prune_streaming


def _tensors(folder) -> dict[str, bytes]:
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                found[name] = (t.dtype, tuple(t.shape), t.contiguous().view(torch.uint8).numpy().tobytes())
    return found


def _source(tmp_path, arch="llama", tie=False, shard="20KB"):
    model = tiny_model(arch)
    if tie:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    folder = tmp_path / "source"
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch,method,pattern,tie", [
    ("llama", "dass", "0.5", False),
    ("llama", "sparsegpt", "2:4", False),
    ("gemma", "wanda", "4:8", True),
    ("qwen2", "magnitude", "0.6", False),
])
def test_streaming_prune_writes_the_same_tensors_as_in_memory(tmp_path, arch, method, pattern, tie):
    """Same semantics, same bytes: a bfloat16 sharded checkpoint loaded as float16, pruned both ways."""
    source = _source(tmp_path, arch, tie)
    assert len(list(source.glob("*.safetensors"))) > 1  # the source itself is sharded
    spec, ids = SparsitySpec.parse(pattern), calibration_ids()
    options = dict(scope="attention+mlp", progress=False)

    model, _ = load_model(str(source), dtype="float16")
    memory = prune_model(model, make_method(method), spec, ids, **options)
    model.save_pretrained(tmp_path / "memory", safe_serialization=True)

    out = tmp_path / "streamed"
    out.mkdir()
    config = AutoConfig.from_pretrained(source)
    streamed = prune_streaming(source, config, "float16", out, make_method(method), spec, ids, **options)

    assert streamed.layers == memory.layers
    expected, got = _tensors(tmp_path / "memory"), _tensors(out)
    assert got.keys() == expected.keys()
    assert all(got[k] == expected[k] for k in expected), [k for k in expected if got[k] != expected[k]]
    # an ordinary Hugging Face folder: loads and gives the in-memory model's logits exactly
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16)
    assert torch.equal(reloaded(ids[:1]).logits, model(ids[:1]).logits)
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert json.loads((out / "config.json").read_text()) == json.loads((tmp_path / "memory" / "config.json").read_text())


def test_streaming_holds_one_layer_at_a_time(tmp_path):
    """While layer i is pruned, no other decoder layer has real parameters."""
    source = _source(tmp_path)
    model, checkpoint = open_streamed(source, AutoConfig.from_pretrained(source), "float32")
    from pipeline.core.prune.streaming import StreamedLayers
    from pipeline.core.checkpoint import ShardWriter
    from pipeline.core.models import decoder_layers

    (tmp_path / "out").mkdir()
    seen = []

    class Watching(StreamedLayers):
        def load(self, index):
            super().load(index)
            seen.append([not next(layer.parameters()).is_meta for layer in decoder_layers(self.model)])

    prune_model(model, make_method("wanda"), SparsitySpec.parse("0.5"), calibration_ids(), progress=False,
                store=Watching(model, checkpoint, ShardWriter(tmp_path / "out", model), torch.float32))
    assert seen == [[True, False], [False, True]]
    assert all(p.is_meta for layer in decoder_layers(model) for p in layer.parameters())


def _index(folder):
    return json.loads((folder / "model.safetensors.index.json").read_text())


def test_missing_shard_is_named(tmp_path):
    source = _source(tmp_path)
    shard = sorted(source.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(PipelineError, match=f"shard .*{shard.name} is missing.*download"):
        Checkpoint(source)


def test_truncated_shard_is_named(tmp_path):
    source = _source(tmp_path)
    shard = sorted(source.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(PipelineError, match=f"shard .*{shard.name} is truncated or corrupt.*download that shard"):
        Checkpoint(source)


def test_shape_disagreeing_with_config_is_named(tmp_path):
    source = _source(tmp_path)
    config = AutoConfig.from_pretrained(source)
    config.intermediate_size = 96  # the shards hold 128
    model = skeleton(config, "float32")
    with pytest.raises(PipelineError, match=r"shard .*safetensors: model\.layers\.0\.mlp\.\w+_proj\.weight has shape"):
        Checkpoint(source).check_against(model, tied_names(model))


def test_skeleton_holds_no_weights_but_real_rotary_buffers(tmp_path):
    source = _source(tmp_path)
    model = skeleton(AutoConfig.from_pretrained(source), "float16")
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
