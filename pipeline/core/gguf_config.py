"""A GGUF file's model shapes as config attributes, read from its header alone (gguf's reader: no torch, no weights
dequantized), for the checks that run before a model loads: `pipeline validate` and a Ray sweep's memory request,
where the source (a `pipeline fetch`ed model) has no config.json."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from pipeline.common.errors import PipelineError


def gguf_config(path: Path) -> SimpleNamespace:
    """``hidden_size``, ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
    ``head_dim``, ``vocab_size``, ``tie_word_embeddings`` and ``model_type`` (llama.cpp's architecture name) of the
    GGUF at ``path``. Read once per file version (the reader walks the whole vocabulary: seconds for 150k tokens)."""
    path = Path(path)
    stat = path.stat()
    return _read(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int) -> SimpleNamespace:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise PipelineError(f"{path} is not a readable GGUF file: {exc}",
                            "check model.gguf_file names the model's .gguf file (fetch it again if it was cut short)")

    def value(key: str):
        field = reader.fields.get(key)
        if field is None:
            return None
        content = field.contents()
        return max(content) if isinstance(content, list) else content  # per-layer counts: the largest layer

    arch = value("general.architecture")
    required = {"hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
                "num_hidden_layers": "block_count", "num_attention_heads": "attention.head_count"}
    shapes = {name: value(f"{arch}.{key}") for name, key in required.items()}
    missing = ["general.architecture"] if arch is None else [
        f"{arch}.{required[name]}" for name, found in shapes.items() if found is None]
    if missing:
        raise PipelineError(f"{path} does not give the model's shapes (missing: {', '.join(missing)})",
                            "use a GGUF written by llama.cpp's converter or `pipeline fetch`, or a checkpoint "
                            "folder with a config.json")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    embedding = tensors.get("token_embd.weight")  # ggml's order: (hidden, vocab)
    vocab = value(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None) or (
        int(embedding.shape[-1]) if embedding is not None else None)
    if vocab is None:
        raise PipelineError(f"{path} gives no vocabulary size (no {arch}.vocab_size, tokenizer.ggml.tokens or "
                            "token_embd.weight)", "use a GGUF written by llama.cpp's converter or `pipeline fetch`")
    return SimpleNamespace(
        model_type=arch, **shapes,
        num_key_value_heads=value(f"{arch}.attention.head_count_kv") or shapes["num_attention_heads"],
        head_dim=value(f"{arch}.attention.key_length"),
        vocab_size=vocab,
        tie_word_embeddings="output.weight" not in tensors)  # llama.cpp stores no head that is the embedding
