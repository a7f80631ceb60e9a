"""A LLaMA-family or Qwen2 model (transformers) written as a GGUF file llama.cpp loads, with the ``gguf`` package.

    GGUF_FOLDER/
      gguf.json               what was written: type, source, tensors by type, sha256, size
      llamacpp/model.gguf     the model (llama.cpp tensor names and metadata)
      llamacpp/config.json    the transformers config (depth and shapes for the benchmark report)

Types (``GGUF_TYPES``): ``f32``, ``f16``, ``q8_0``, ``q4_0``. Every 2-D weight (the embedding included)
takes the type; 1-D tensors (RMSNorm weights) stay float32, as llama.cpp keeps them. A weight whose row
length is not a multiple of the 32-value quantization block falls back to f16. A tied LM head is not
written: llama.cpp reads the embedding for it, so with q4_0 the head is q4_0 too (llama.cpp's own
``llama-quantize`` would give it a 6-bit k-quant, which the ``gguf`` package cannot write).

Tensor names and metadata follow the llama.cpp architecture the family registry names (pipeline/core/families.py:
``gguf``): ``llama`` (LLaMA, Mistral) or ``qwen2``. For ``llama`` query and key weights are permuted: transformers'
rotary embedding rotates the two halves of each head, llama.cpp's ``llama`` rotary rotates adjacent pairs, so each
head's rows are reordered from (half, i) to (i, half); ``qwen2`` rotates halves (no permutation) and its q/k/v
biases are written as ``attn_{q,k,v}.bias``.

Tokenizer metadata (llama.cpp refuses a file without it): copied from the source GGUF when the model
came from one (its ``tokenizer.*`` keys, exact), else built from the Hugging Face tokenizer's
``tokenizer.json`` with the ``gguf`` package's vocab readers: byte-level BPE -> ``gpt2``, BPE with byte
fallback (LLaMA-2) -> ``llama``. The benchmark and the perplexity feed llama.cpp token ids from the
Hugging Face tokenizer, so llama.cpp's own text tokenization (``tokenizer.ggml.pre``) never enters a
figure.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline.common.errors import PipelineError
from pipeline.core.families import gguf_graph, gguf_model_types
from pipeline.common.outputs import StagingDir, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
SOURCE = "source"  # not written: the GGUF file the model was loaded from, as it came (its own quantization)
ARCHITECTURES = gguf_model_types()  # model_type values the writer writes (pipeline/core/families.py: gguf)
GRAPH = "llamacpp"  # the folder (and engine) name
MODEL_FILE = "model.gguf"
DESCRIPTION = "gguf.json"
BLOCK = 32  # values per quantization block of q8_0 and q4_0


def check_gguf_config(config, types) -> None:
    """Refuse, before any weight is read, a model or type this writer cannot express."""
    bad = sorted(set(types) - set(GGUF_TYPES) - {SOURCE})
    if bad:
        raise PipelineError(f"GGUF type(s) {bad} not supported", f"choose from {', '.join(GGUF_TYPES + (SOURCE,))}")
    types = [t for t in types if t != SOURCE]
    if not types:
        return  # the source file is llama.cpp's own: nothing is written
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise PipelineError(f"writing {kind!r} models as GGUF is not supported (only "
                            f"{', '.join(ARCHITECTURES)})", "drop llamacpp from benchmark.engines for this model")
    problems = []
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.hidden_act} (llama.cpp's llama graph is SwiGLU)")
    if (getattr(config, "attention_bias", False) and not gguf_graph(kind).qkv_bias) or getattr(config, "mlp_bias", False):
        problems.append("biases on the projections")
    if getattr(config, "rope_scaling", None):
        problems.append(f"rope_scaling={config.rope_scaling}")
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        problems.append(f"sliding_window={config.sliding_window}")
    if problems:
        raise PipelineError(f"this {kind} model has {', '.join(problems)}, which the GGUF writer does not write",
                            "drop llamacpp from benchmark.engines for this model")


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from transformers' rotate-half order to llama.cpp's adjacent-pair order."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _tensors(model) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) of every tensor, in llama.cpp's order."""
    config = model.config
    graph = gguf_graph(config.model_type)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    out = [("token_embd.weight", state["model.embed_tokens.weight"])]
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(config.num_hidden_layers):
        for hf, name in per_layer.items():
            w = state[f"model.layers.{i}.{hf}.weight"]
            if graph.permute_qk and name == "attn_q":
                w = _permute(w, heads)
            elif graph.permute_qk and name == "attn_k":
                w = _permute(w, kv_heads)
            out.append((f"blk.{i}.{name}.weight", w))
            bias = state.get(f"model.layers.{i}.{hf}.bias")
            if graph.qkv_bias and name in ("attn_q", "attn_k", "attn_v") and bias is not None:
                out.append((f"blk.{i}.{name}.bias", bias))
    out.append(("output_norm.weight", state["model.norm.weight"]))
    if not getattr(config, "tie_word_embeddings", False):
        out.append(("output.weight", state["lm_head.weight"]))
    return out


def _encode(array: np.ndarray, gguf_type: str):
    """(data, ggml type name) of one tensor in the requested type (see the module docstring)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if array.ndim == 1 or gguf_type == "f32":
        return array.astype(np.float32), "F32"
    if gguf_type == "f16" or array.shape[-1] % BLOCK:
        return array.astype(np.float16), "F16"
    qtype = GGMLQuantizationType[gguf_type.upper()]
    return quantize(array.astype(np.float32), qtype), qtype.name


def _add_hparams(writer, config, gguf_type: str, name: str) -> None:
    from gguf import LlamaFileType

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                          "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}[gguf_type])


def _copy_tokenizer_from_gguf(writer, source_gguf: Path) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(source_gguf)
    fields = [f for f in reader.fields.values() if f.name.startswith("tokenizer.")]
    if not any(f.name == "tokenizer.ggml.model" for f in fields):
        raise PipelineError(f"the source GGUF {source_gguf} holds no tokenizer metadata",
                            "use a source with a tokenizer (a Hugging Face folder or a complete GGUF)")
    for field in fields:
        kind = field.types[0]
        value = field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)


def _tokenizer_from_hf(writer, tokenizer, vocab_size: int) -> None:
    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

    with tempfile.TemporaryDirectory(prefix="gguf-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        if not path.is_file():
            raise PipelineError(f"the tokenizer ({type(tokenizer).__name__}) has no tokenizer.json to write as GGUF "
                                "metadata", "use a model with a fast (tokenizers) tokenizer")
        spec = json.loads(path.read_text())["model"]
        if spec.get("type") != "BPE":
            raise PipelineError(f"a {spec.get('type')} tokenizer cannot be written as GGUF metadata (BPE only)",
                                "use a BPE tokenizer (LLaMA, Mistral, SmolLM, Qwen)")
        vocab = LlamaHfVocab(Path(tmp)) if spec.get("byte_fallback") else BpeVocab(Path(tmp))
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        if len(tokens) > vocab_size:
            raise PipelineError(f"the tokenizer has {len(tokens)} tokens but the model's vocab_size is {vocab_size}",
                                "use the model's own tokenizer")
        for i in range(len(tokens), vocab_size):  # embedding rows past the tokenizer's (padding)
            tokens.append(f"[PAD{i}]".encode())
            scores.append(0.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama" if spec.get("byte_fallback") else "gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        if spec.get("byte_fallback"):
            writer.add_token_scores(scores)
        writer.add_token_types(types)
        SpecialVocab(Path(tmp), load_merges=not spec.get("byte_fallback"), n_vocab=vocab_size).add_to_gguf(writer,
                                                                                                           quiet=True)


def write_gguf(model, tokenizer, folder: Path, gguf_type: str, name: str, source_gguf: Path | None = None,
               source: str | None = None) -> dict:
    """Write ``model`` as ``folder/llamacpp/model.gguf`` of ``gguf_type`` (atomically: the folder appears complete
    or not at all); returns what ``folder/gguf.json`` records."""
    import gguf

    check_gguf_config(model.config, [gguf_type])
    folder = Path(folder)
    with StagingDir(folder) as tmp:
        (tmp / GRAPH).mkdir()
        path = tmp / GRAPH / MODEL_FILE
        writer = gguf.GGUFWriter(path, arch=gguf_graph(model.config.model_type).arch)
        _add_hparams(writer, model.config, gguf_type, name)
        if source_gguf is not None:
            _copy_tokenizer_from_gguf(writer, Path(source_gguf))
        else:
            _tokenizer_from_hf(writer, tokenizer, model.config.vocab_size)
        counts: dict[str, int] = {}
        for tensor_name, array in _tensors(model):
            data, kind = _encode(array, gguf_type)
            raw = None if kind in ("F32", "F16") else gguf.GGMLQuantizationType[kind]
            writer.add_tensor(tensor_name, data, raw_dtype=raw)
            counts[kind] = counts.get(kind, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        model.config.to_json_file(tmp / GRAPH / "config.json")
        description = {"format": 1, "type": gguf_type, "name": name, "source": source,
                       "tokenizer": "copied from the source GGUF" if source_gguf else "from the Hugging Face tokenizer",
                       "tensors_by_type": counts, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                       "gguf_package": _version("gguf")}
        write_json_atomic(tmp / DESCRIPTION, description)
    log.info("wrote %s (%s, %.1f MB)", folder / GRAPH / MODEL_FILE, gguf_type, description["bytes"] / 1e6)
    return description


def link_source_gguf(config, source_gguf: Path, folder: Path, name: str, source: str | None = None) -> dict:
    """``folder/llamacpp/model.gguf`` as a hard link to (or, across file systems, a copy of) the GGUF the model was
    loaded from: llama.cpp runs the original file with its own quantization. Returns what ``gguf.json`` records."""
    import os
    import shutil

    from gguf import GGUFReader, LlamaFileType

    source_gguf = Path(source_gguf)
    reader = GGUFReader(source_gguf)
    field = reader.fields.get("general.file_type")
    file_type = LlamaFileType(int(field.contents())).name if field is not None else "unknown"
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    folder = Path(folder)
    with StagingDir(folder) as tmp:
        (tmp / GRAPH).mkdir()
        path = tmp / GRAPH / MODEL_FILE
        try:
            os.link(source_gguf, path)
        except OSError:
            shutil.copyfile(source_gguf, path)
        config.to_json_file(tmp / GRAPH / "config.json")
        description = {"format": 1, "type": SOURCE, "file_type": file_type.removeprefix("MOSTLY_"), "name": name,
                       "source": source, "source_file": source_gguf.name, "tokenizer": "the source GGUF's own",
                       "tensors_by_type": counts, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                       "gguf_package": _version("gguf")}
        write_json_atomic(tmp / DESCRIPTION, description)
    log.info("linked the source GGUF %s (%s) as %s", source_gguf.name, description["file_type"], folder / GRAPH / MODEL_FILE)
    return description


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
