"""BOS per window (pipeline/core/window_protocol.py): the Gemma family gets a BOS at the start of every perplexity
and calibration window; other families keep the Wanda / SparseGPT stream protocol, unchanged; the recipe overrides."""

import json
import math
import random

import pytest
import torch
from tokenizers import processors

from conftest import TEXT, save_checkpoint, tiny_model, tiny_tokenizer
from pipeline.common.errors import PipelineError
from pipeline.core import data, evaluate
from pipeline.core.data import calibration_windows, evaluation_tokens
from pipeline.core.evaluate import evaluation_windows, perplexity
from pipeline.core.window_protocol import bos_per_window
from pipeline.recipe import parse_recipe
from pipeline.runner import run_recipe

BOS = 1


def bos_adding_tokenizer():
    """The tiny tokenizer, but adding "<s>" before a text as the LLaMA and Gemma tokenizers do."""
    tok = tiny_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    assert tok("ab").input_ids[0] == BOS and tok("ab", add_special_tokens=False).input_ids[0] != BOS
    return tok


def recipe_data(tmp_path, arch, **changes):
    folder = tmp_path / f"tiny-{arch}"
    if not folder.exists():
        save_checkpoint(folder, tiny_model(arch))
        (tmp_path / "text.txt").write_text(TEXT)
    data = {"name": f"bos-{arch}", "output_dir": str(tmp_path / f"run-{arch}"),
            "model": {"source": str(folder), "dtype": "float32"},
            "calibration": {"dataset": "file", "path": str(tmp_path / "text.txt"), "num_samples": 4, "seq_len": 32},
            "prune": {"method": "wanda", "sparsity": "2:4", "scope": "mlp"},
            "evaluation": {"dataset": "file", "path": str(tmp_path / "text.txt"), "context_length": 64,
                           "max_windows": 3}}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return data


def run_and_record(data, monkeypatch):
    """Run the recipe; return (calibration windows handed to pruning, every input_ids the perplexity model saw)."""
    seen = {"calibration": [], "perplexity": []}
    original_windows, original_ppl = data.calibration_windows, evaluate.perplexity

    def recording_windows(*args, **kwargs):
        out = original_windows(*args, **kwargs)
        seen["calibration"].append(out.clone())
        return out

    def recording_ppl(model, *args, **kwargs):
        hook = model.register_forward_pre_hook(lambda m, a, kw: seen["perplexity"].append(kw["input_ids"].clone()),
                                               with_kwargs=True)
        try:
            return original_ppl(model, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(data, "calibration_windows", recording_windows)
    monkeypatch.setattr(evaluate, "perplexity", recording_ppl)
    return seen


@pytest.mark.parametrize("setting, model_type, expected", [
    ("auto", "gemma", True), ("auto", "gemma2", True), ("auto", "gemma3", True), ("auto", "gemma3_text", True),
    ("auto", "llama", False), ("auto", "mistral", False), ("auto", None, False),
    (True, "llama", True), (False, "gemma3_text", False)])
def test_auto_decides_by_model_type(setting, model_type, expected):
    assert bos_per_window(setting, model_type) is expected


def test_every_gemma_window_starts_with_bos(tmp_path, monkeypatch):
    """The whole run on a tiny Gemma: each calibration window and each window perplexity feeds the model is
    BOS + text; summary.json and report.md say so."""
    seen = run_and_record(data, monkeypatch)
    summary = run_recipe(parse_recipe(recipe_data(tmp_path, "gemma")), progress=False)
    assert seen["calibration"] and seen["perplexity"]
    for windows in seen["calibration"]:
        assert windows.shape == (4, 32) and (windows[:, 0] == BOS).all(), windows[:, 0]
    for ids in seen["perplexity"]:  # dense (baseline) and pruned (evaluate): 3 windows each
        assert ids.shape == (1, 64) and ids[0, 0] == BOS, ids[0, :4]
    assert len(seen["perplexity"]) == 6
    saved = json.loads((tmp_path / "run-gemma" / "summary.json").read_text())
    assert saved["perplexity"]["bos_per_window"] is True and saved["calibration"]["bos_per_window"] is True
    assert saved["perplexity"]["pruned"]["bos_per_window"] is True and saved["perplexity"]["dense"]["bos_per_window"]
    report = (tmp_path / "run-gemma" / "report.md").read_text()
    assert "BOS per window (BOS + 63 text tokens" in report and "BOS per window (BOS + 31 text tokens" in report
    assert summary["perplexity"]["bos_per_window"] is True


def test_the_override_turns_it_off_for_gemma_and_on_for_llama(tmp_path, monkeypatch):
    seen = run_and_record(data, monkeypatch)
    off = recipe_data(tmp_path, "gemma", calibration__bos_per_window=False, evaluation__bos_per_window=False)
    run_recipe(parse_recipe(off), progress=False)
    assert not any((w[:, 0] == BOS).any() for w in seen["calibration"])  # the tiny tokenizer adds no BOS itself
    assert not any(ids[0, 0] == BOS for ids in seen["perplexity"])
    assert json.loads((tmp_path / "run-gemma" / "summary.json").read_text())["perplexity"]["bos_per_window"] is False

    seen["calibration"].clear(), seen["perplexity"].clear()
    on = recipe_data(tmp_path, "llama", calibration__bos_per_window=True, evaluation__bos_per_window=True)
    run_recipe(parse_recipe(on), progress=False)
    assert all((w[:, 0] == BOS).all() for w in seen["calibration"])
    assert seen["perplexity"] and all(ids[0, 0] == BOS for ids in seen["perplexity"])
    assert "one token stream cut into windows" not in (tmp_path / "run-llama" / "report.md").read_text()


def test_llama_keeps_the_stream_protocol(tmp_path, monkeypatch):
    seen = run_and_record(data, monkeypatch)
    run_recipe(parse_recipe(recipe_data(tmp_path, "llama")), progress=False)
    assert not any((w[:, 0] == BOS).any() for w in seen["calibration"])
    assert "one token stream cut into windows" in (tmp_path / "run-llama" / "report.md").read_text()
    assert json.loads((tmp_path / "run-llama" / "summary.json").read_text())["perplexity"]["bos_per_window"] is False


# --- the stream protocol, byte for byte what it was before the BOS option existed ---

def old_calibration_windows(tokenizer, text, num_samples, seq_len, seed):
    """The single-text branch of data.calibration_windows as it was before the BOS option."""
    rng = random.Random(seed)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    starts = [rng.randint(0, ids.numel() - seq_len - 1) for _ in range(num_samples)]
    return torch.stack([ids[s: s + seq_len] for s in starts])


@torch.no_grad()
def old_perplexity(model, tokens, context_length, max_windows):
    """data/evaluate.py's loop as it was before the BOS option."""
    windows = min(tokens.numel() // context_length, max_windows)
    total = 0.0
    for w in range(windows):
        ids = tokens[w * context_length: (w + 1) * context_length].unsqueeze(0)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        total += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item() * (context_length - 1)
    return math.exp(total / (windows * (context_length - 1)))


def test_stream_windows_and_perplexity_are_unchanged(tmp_path):
    tok, model = bos_adding_tokenizer(), tiny_model("llama")
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    got = calibration_windows(tok, "file", 6, 40, seed=3, path=str(path))
    assert torch.equal(got, old_calibration_windows(tok, TEXT, 6, 40, 3))
    tokens = evaluation_tokens(tok, "file", str(path))
    assert tokens[0] == BOS and (tokens == BOS).sum() == 1  # one BOS, at the stream's start
    new = perplexity(model, tokens, 64, max_windows=4, progress=False)
    assert new["perplexity"] == old_perplexity(model, tokens, 64, 4) and new["bos_per_window"] is False


def test_bos_windows_tile_the_text_with_one_bos_each(tmp_path):
    tok = bos_adding_tokenizer()
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    tokens = evaluation_tokens(tok, "file", str(path), bos_per_window=True)
    assert (tokens == BOS).sum() == 0  # the text alone: the windows carry the BOS
    windows = evaluation_windows(tokens, 64, bos_token_id=BOS)
    assert windows.shape == (tokens.numel() // 63, 64)
    assert (windows[:, 0] == BOS).all() and ((windows == BOS).sum(1) == 1).all()
    assert torch.equal(windows[:, 1:].reshape(-1), tokens[: windows.shape[0] * 63])  # no gaps, no overlaps
    cal = calibration_windows(tok, "file", 6, 40, seed=3, path=str(path), bos_token_id=BOS)
    assert cal.shape == (6, 40) and (cal[:, 0] == BOS).all() and ((cal == BOS).sum(1) == 1).all()


def test_bos_position_is_not_scored():
    """Perplexity with a BOS per window is the mean loss over the text tokens only (targets 1..L-1)."""
    model, tokens = tiny_model("gemma"), torch.randint(2, 90, (200,), generator=torch.Generator().manual_seed(0))
    got = perplexity(model, tokens, 32, max_windows=2, progress=False, bos_token_id=BOS)
    with torch.no_grad():
        nll = []
        for w in range(2):
            ids = torch.cat([torch.tensor([BOS]), tokens[w * 31: (w + 1) * 31]]).unsqueeze(0)
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            nll += [-logp[i, ids[0, i + 1]].item() for i in range(31)]
    assert got["windows"] == 2 and math.isclose(got["perplexity"], math.exp(sum(nll) / len(nll)), rel_tol=1e-5)


def test_bos_needs_a_tokenizer_with_one(tmp_path):
    class NoBos:
        bos_token_id = None

    with pytest.raises(PipelineError, match="has no BOS token"):
        data.bos_id(NoBos())


@pytest.mark.parametrize("value, ok", [("auto", True), (True, True), (False, True), ("sometimes", False)])
def test_recipe_accepts_auto_true_false(tmp_path, value, ok):
    d = recipe_data(tmp_path, "llama", evaluation__bos_per_window=value, calibration__bos_per_window=value)
    if ok:
        recipe = parse_recipe(d)
        assert recipe.evaluation.bos_per_window == value and recipe.calibration.bos_per_window == value
    else:
        with pytest.raises(PipelineError, match="bos_per_window"):
            parse_recipe(d)
