"""A GGUF source's shapes from its header (pipeline/core/gguf_config.py): what `pipeline validate` and a Ray sweep's
memory request estimate from equals what the run's own preflight reads through transformers' GGUF loader."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from pipeline.common.errors import PipelineError
from pipeline.core.gguf_config import gguf_config
from pipeline.resources import Shapes


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_shapes_equal_the_models_and_transformers_reading_of_the_file(tmp_path, tied):
    from test_llamacpp import bpe_tokenizer, tiny_llama

    from export.gguf_writer import write_gguf

    tokenizer = bpe_tokenizer()
    model = tiny_llama(len(tokenizer), tied=tied)
    write_gguf(model, tokenizer, tmp_path / "g", "f32", "tiny")
    folder = tmp_path / "g" / "llamacpp"
    read = gguf_config(folder / "model.gguf")
    loaded = AutoConfig.from_pretrained(folder, gguf_file="model.gguf")  # what the run's preflight reads
    ours, theirs = Shapes.from_config(read), Shapes.from_config(loaded)
    assert ours == theirs == Shapes.from_config(model.config)
    assert ours.params == sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2)
    assert read.tie_word_embeddings is tied and read.model_type == "llama"


def test_a_file_that_is_not_gguf_is_named_with_the_fix(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(PipelineError, match=r"is not a readable GGUF file.*model.gguf_file"):
        gguf_config(path)
