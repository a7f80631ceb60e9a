"""llama.cpp as a peer engine: the GGUF writer (export/gguf_writer.py), the runner
(benchmarks/engines/llamacpp_runner.py), the GGUF perplexity and the comparison rows of the report.

Tests that run llama.cpp skip, naming the extra, where llama-cpp-python is not installed."""

from __future__ import annotations

import importlib.util
import math
import platform

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.common.errors import PipelineError

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed: "
                                                               "pip install 'dass-pipeline[llamacpp]'")
TYPES = ("f32", "f16", "q8_0", "q4_0")


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (the SmolLM2 / LLaMA-3 kind) trained offline on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 10, "pruned sparse models run fast"],
                            trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def tiny_llama(vocab: int, tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """Rows of 64 and 128 values: whole 32-value quantization blocks. 4 query heads, 2 KV heads (GQA)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, rope_theta=10000.0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init, so that the logits differ across tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(model, tokenizer, {type: GGUF folder})."""
    from export.gguf_writer import write_gguf

    tokenizer = bpe_tokenizer()
    model = tiny_llama(len(tokenizer))
    root = tmp_path_factory.mktemp("gguf")
    folders = {t: root / t for t in TYPES}
    for t, folder in folders.items():
        write_gguf(model, tokenizer, folder, t, "tiny", source="test")
    return model, tokenizer, folders


def ids(n: int = 12, vocab: int = 300, seed: int = 3) -> list[int]:
    return torch.randint(2, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_writer_round_trips_through_gguf_reader(written):
    from gguf import GGUFReader

    model, tokenizer, folders = written
    expected_type = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
    for t, folder in folders.items():
        reader = GGUFReader(folder / "llamacpp" / "model.gguf")
        tensors = {x.name: x for x in reader.tensors}
        names = {"token_embd.weight", "output_norm.weight", "output.weight"}
        names |= {f"blk.{i}.{n}.weight" for i in range(2) for n in
                  ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
        assert set(tensors) == names
        # GGUF lists shapes innermost first: [in_features, out_features]
        assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]
        assert list(tensors["blk.1.ffn_down.weight"].shape) == [128, 64]
        assert list(tensors["token_embd.weight"].shape) == [64, len(tokenizer)]
        for name, x in tensors.items():
            want = "F32" if name.endswith("norm.weight") else expected_type[t]
            assert x.tensor_type.name == want, (t, name)
        fields = reader.fields
        assert fields["general.architecture"].contents() == "llama"
        assert fields["llama.block_count"].contents() == 2
        assert fields["llama.attention.head_count"].contents() == 4
        assert fields["llama.attention.head_count_kv"].contents() == 2
        assert fields["tokenizer.ggml.model"].contents() == "gpt2"
        assert len(fields["tokenizer.ggml.tokens"].contents()) == len(tokenizer)
        assert fields["tokenizer.ggml.bos_token_id"].contents() == tokenizer.bos_token_id


def test_tied_head_is_not_written(tmp_path):
    from gguf import GGUFReader

    from export.gguf_writer import write_gguf

    tokenizer = bpe_tokenizer()
    write_gguf(tiny_llama(len(tokenizer), tied=True), tokenizer, tmp_path / "g", "q8_0", "tiny")
    names = {x.name for x in GGUFReader(tmp_path / "g" / "llamacpp" / "model.gguf").tensors}
    assert "output.weight" not in names and "token_embd.weight" in names


def test_f32_gguf_reads_back_as_the_same_model(written):
    """transformers' GGUF loader undoes llama.cpp's q/k order: a wrong permutation changes the logits."""
    from transformers import AutoModelForCausalLM

    model, _, folders = written
    back = AutoModelForCausalLM.from_pretrained(folders["f32"] / "llamacpp", gguf_file="model.gguf",
                                                dtype=torch.float32).eval()
    x = torch.tensor([ids()])
    with torch.no_grad():
        assert torch.allclose(back(x).logits, model(x).logits, atol=1e-5)


def test_tokenizer_metadata_copied_from_a_source_gguf(written, tmp_path):
    from gguf import GGUFReader

    from export.gguf_writer import write_gguf

    model, tokenizer, folders = written
    source = folders["f32"] / "llamacpp" / "model.gguf"
    write_gguf(model, None, tmp_path / "copy", "q4_0", "tiny", source_gguf=source)
    a, b = GGUFReader(source).fields, GGUFReader(tmp_path / "copy" / "llamacpp" / "model.gguf").fields
    keys = [k for k in a if k.startswith("tokenizer.")]
    assert keys and all(a[k].contents() == b[k].contents() for k in keys)


def test_writer_refuses_what_it_cannot_write(tmp_path):
    from transformers import GemmaConfig

    from export.gguf_writer import check_gguf_config

    with pytest.raises(PipelineError, match="'gemma' models as GGUF is not supported"):
        check_gguf_config(GemmaConfig(), ["q4_0"])
    with pytest.raises(PipelineError, match="not supported"):
        check_gguf_config(LlamaConfig(), ["q5_k"])
    with pytest.raises(PipelineError, match="rope_scaling"):
        check_gguf_config(LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}), ["f32"])


def test_runner_refuses_without_the_binding(monkeypatch):
    import sys

    from benchmarks.engines import llamacpp_runner

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(PipelineError) as err:
        llamacpp_runner.binding()
    assert "dass-pipeline[llamacpp]" in err.value.fix


def test_recipe_accepts_llamacpp_without_an_onnx_graph_and_checks_types():
    from pipeline.recipe import Recipe

    base = {"name": "r", "model": {"source": "x"}, "export": {"enabled": True, "engines": ["onnxruntime"]}}
    r = Recipe(**base, benchmark={"enabled": True, "engines": ["onnxruntime", "llamacpp"], "gguf_types": ["q8_0"]})
    assert r.benchmark.gguf_types == ["q8_0"]
    with pytest.raises(Exception, match="gguf_types"):
        Recipe(**base, benchmark={"enabled": True, "engines": ["llamacpp"], "gguf_types": ["q3_k"]})


def _results(rows):
    artifacts = [{"key": "pruned", "name": "pruned", "layers": 2, "method": "dass", "sparsity": 0.5,
                  "requested_sparsity": 0.5, "graphs": ["deepsparse"]},
                 {"key": "g-q4_0", "name": "g-q4_0", "layers": 2, "method": "gguf-q4_0", "sparsity": 0.0,
                  "requested_sparsity": None, "graphs": ["llamacpp"], "gguf_type": "q4_0", "bytes": 1,
                  "perplexity": {"perplexity": 12.5}}]
    measurements = [{"artifact": a, "engine": e, "mode": "decode", "round": r, "tokens_per_s": tps,
                     "ms_median": 1000 / tps} for a, e, r, tps in rows]
    return {"artifacts": artifacts, "measurements": measurements, "settings": {}}


def test_flash_attention_reaches_llama_cpp_in_the_modes_asked_only():
    """benchmark.llamacpp_flash_attention: each llama.cpp measurement carries it for its mode; other engines never;
    the report says where it was on (and that results made before the setting did not record it)."""
    from benchmarks.engines import MeasureSpec
    from benchmarks.report import _flash_attention_lines
    from benchmarks.settings import BenchmarkSettings

    settings = BenchmarkSettings(engines=["deepsparse", "llamacpp"], modes=["decode", "prefill", "batch"],
                                 llamacpp_flash_attention=["prefill"])
    on = {mode: MeasureSpec.of("llamacpp", "a", mode, settings, size=4).flash_attention
          for mode in ("decode", "prefill", "batch")}
    assert on == {"decode": False, "prefill": True, "batch": False}
    assert not MeasureSpec.of("deepsparse", "a", "prefill", settings).flash_attention
    st = settings.model_dump()
    assert _flash_attention_lines(st) == ["- llama.cpp flash attention: on in prefill; off in decode, batch "
                                          "(benchmark.llamacpp_flash_attention: the peer at its best per mode)"]
    assert _flash_attention_lines({**st, "engines": ["deepsparse"]}) == []
    del st["llamacpp_flash_attention"]
    assert "not recorded" in _flash_attention_lines(st)[0]


def test_vs_llamacpp_pairs_rounds_and_the_report_shows_it():
    from benchmarks.peers import llamacpp_table as _llamacpp_table
    from benchmarks.stats import summarize

    results = _results([("pruned", "deepsparse", 1, 30.0), ("g-q4_0", "llamacpp", 1, 20.0),
                        ("pruned", "deepsparse", 2, 33.0), ("g-q4_0", "llamacpp", 2, 30.0)])
    results["summary"] = summarize(results)
    (row,) = results["summary"]["vs_llamacpp"]
    assert row["engine"] == "deepsparse" and row["gguf_type"] == "q4_0"
    assert row["ratio"] == pytest.approx(31.5 / 25.0)
    assert row["per_round"]["min"] == pytest.approx(1.1) and row["per_round"]["max"] == pytest.approx(1.5)
    table = "\n".join(_llamacpp_table(results))
    assert "12.500" in table and "1.26x" in table


# ---- llama.cpp itself ----

def _llama_cpp_logits(folder, tokens) -> np.ndarray:
    from benchmarks.engines.llamacpp_runner import open_gguf

    llm = open_gguf(folder / "llamacpp" / "model.gguf", 64, 1, logits_all=True, f32_cache=True)
    llm.eval(tokens)
    return np.asarray(llm.scores[: len(tokens)])


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@needs_llama_cpp
@pytest.mark.parametrize("gguf_type,rtol", [("f32", 1e-4), ("f16", 5e-3)])
def test_llama_cpp_logits_match_pytorch(written, gguf_type, rtol):
    """Logits at every position of a few tokens, relative to the largest PyTorch logit (a float32 KV cache, so
    that the figure is the file's: llama.cpp's default float16 cache alone costs about 1e-4 here)."""
    model, _, folders = written
    tokens = ids()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    assert _relative(_llama_cpp_logits(folders[gguf_type], tokens), want) < rtol


@needs_llama_cpp
@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_0"])
def test_llama_cpp_quantized_logits_match_the_dequantized_model(written, gguf_type):
    """A quantized GGUF in llama.cpp against PyTorch running the same file's weights dequantized (transformers'
    GGUF loader): what is left is llama.cpp's 8-bit activations (measured 2.9% for q8_0, 4.2% for q4_0 of the
    largest logit on this model), never a layout error (the f32 file matches to 1e-6); the top-1 token agrees at
    every position. Against the float32 model, q8_0 stays within 8% (measured 5.3%; this tiny model's weights are
    10x the usual initialisation, so quantization errors are larger than on a trained model)."""
    from transformers import AutoModelForCausalLM

    model, _, folders = written
    tokens = ids()
    got = _llama_cpp_logits(folders[gguf_type], tokens)
    same_weights = AutoModelForCausalLM.from_pretrained(folders[gguf_type] / "llamacpp", gguf_file="model.gguf",
                                                        dtype=torch.float32).eval()
    with torch.no_grad():
        want = same_weights(torch.tensor([tokens])).logits[0].numpy()
        full = model(torch.tensor([tokens])).logits[0].numpy()
    assert _relative(got, want) < 0.06
    assert (got.argmax(1) == want.argmax(1)).all()
    if gguf_type == "q8_0":
        assert _relative(got, full) < 0.08


@needs_llama_cpp
def test_llama_cpp_perplexity_matches_pytorch(written):
    from benchmarks.llamacpp import gguf_perplexity
    from pipeline.core.evaluate import perplexity

    model, _, folders = written
    tokens = torch.tensor(ids(200, seed=5))
    want = perplexity(model, tokens, 32, max_windows=4, progress=False)
    got = gguf_perplexity(folders["f32"], tokens, 32, max_windows=4)
    assert got["windows"] == want["windows"] == 4 and got["tokens"] == want["tokens"]
    # llama.cpp's float16 KV cache (kept: it is what the benchmark times) moves it by about 1e-4
    assert math.isclose(got["perplexity"], want["perplexity"], rel_tol=1e-3)
    q4 = gguf_perplexity(folders["q4_0"], tokens, 32, max_windows=4)
    assert q4["perplexity"] != got["perplexity"]  # a different model, measured as such


@needs_llama_cpp
@pytest.mark.parametrize("flash_attention", [False, True])
def test_batched_decode_gives_each_sequence_its_own_next_token(written, flash_attention):
    """The batch mode's llama.cpp step: N sequences with the same cached prefix, a different token each; each row's
    logits are those of one sequence decoding its token alone, and the step can be repeated (its cells are removed).
    With flash attention on or off (benchmark.llamacpp_flash_attention), against a single sequence with it off."""
    from benchmarks.engines.llamacpp_batch import BatchedDecoder
    from benchmarks.engines.llamacpp_runner import open_gguf

    _, _, folders = written
    path = folders["f32"] / "llamacpp" / "model.gguf"
    decoder = BatchedDecoder(path, 3, 16, 1, flash_attention=flash_attention)
    tokens = [5, 17, 42]
    try:
        decoder.step(tokens)
        first = [decoder.logits(i) for i in range(3)]
        decoder.step(tokens)
        again = [decoder.logits(i) for i in range(3)]
        prefix = decoder.prefix
    finally:
        decoder.close()
    assert len(prefix) == 15
    llm = open_gguf(path, 16, 1, logits_all=True)
    for row, token in enumerate(tokens):
        llm.reset()
        llm.eval(prefix + [token])
        alone = np.asarray(llm.scores[len(prefix)])
        assert _relative(first[row], alone) < 5e-3  # float16 cache, other kernel paths: measured 1.1e-3
        assert first[row].argmax() == alone.argmax()
        assert _relative(again[row], first[row]) < 1e-5
    assert _relative(first[0], first[1]) > 1e-2  # different tokens, different rows


@needs_llama_cpp
@pytest.mark.parametrize("mode", ["decode", "prefill", "batch"])
def test_runner_returns_tokens_per_s_like_the_other_engines(written, mode):
    from benchmarks.engines import MeasureSpec, measure
    from benchmarks.runner import find_artifact
    from benchmarks.settings import BenchmarkSettings

    _, _, folders = written
    described = find_artifact(folders["q8_0"])
    assert described["graphs"] == ["llamacpp"] and described["method"] == "gguf-q8_0"
    settings = BenchmarkSettings(engines=["llamacpp"], sequence_length=64, prefill_length=16, threads=1,
                                 warmup_seconds=0.1, seconds=0.3)
    result = measure(MeasureSpec.of("llamacpp", described["path"], mode, settings, size=4 if mode == "batch" else None))
    for key in ("ms_median", "ms_mean", "ms_min", "iterations", "load_seconds", "threads", "engine_version", "kv_cache"):
        assert key in result
    assert result["gguf_type"] == "q8_0" and result["iterations"] >= 3
    assert result["flash_attention"] is (mode in settings.llamacpp_flash_attention)  # the default: prefill
    step = {"decode": 1, "prefill": 16, "batch": 4}[mode]
    assert result["tokens_per_s"] == pytest.approx(step * 1000.0 / result["ms_median"])
    machine = result["machine"]  # what llama.cpp was compiled for, and how it fits this CPU (the report shows it)
    assert machine["system_info"].startswith("CPU : ") and machine["build"] in ("native", "portable", "unrecorded")
    assert machine["features"] or platform.machine() != "x86_64"
    assert all(f"{f} = 1" in machine["system_info"] for f in machine["features"])
    assert machine["cpu_lacks"] == []  # it just ran here



#: the tiny models of the families the registry says the GGUF writer writes (pipeline/core/families.py: gguf)
GGUF_FAMILY_MODELS = [tiny for f in __import__("pipeline.core.families", fromlist=["FAMILIES"]).FAMILIES.values()
                      if f.gguf for tiny in f.tested_as]
#: of those, the configs llama.cpp's llama graph cannot express, refused up front with the reason
GGUF_REFUSED = {"reglu": "hidden_act=relu", "llama3": "rope_scaling"}


@needs_llama_cpp
@pytest.mark.parametrize("tiny", GGUF_FAMILY_MODELS)
def test_gguf_writer_covers_the_registrys_families(tiny, tmp_path):
    """Each family the registry marks gguf: its f32 file gives PyTorch's logits in llama.cpp, or (a config the
    llama graph cannot express) it is refused before any weight is read, naming what."""
    from conftest import tiny_model

    from export.gguf_writer import check_gguf_config, write_gguf

    tokenizer = bpe_tokenizer()
    config = tiny_model(tiny).config
    config.vocab_size = len(tokenizer)
    torch.manual_seed(1)
    model = type(tiny_model(tiny))(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or name.endswith(".bias"):  # Qwen2's q/k/v biases too (zeros when initialized)
                p.normal_(0, 0.2)
    if tiny in GGUF_REFUSED:
        with pytest.raises(PipelineError, match=GGUF_REFUSED[tiny]):
            check_gguf_config(config, ["f32"])
        return
    write_gguf(model, tokenizer, tmp_path / "f32", "f32", f"tiny-{tiny}", source="test")
    tokens = ids()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    assert _relative(_llama_cpp_logits(tmp_path / "f32", tokens), want) < 1e-4
