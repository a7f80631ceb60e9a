"""Calibration and evaluation data: hub loaders tested on local stand-in files, seeded sampling."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_tokenizer
from pipeline.core.data import C4_FILES, WIKITEXT_FILES, calibration_windows, embedded_text, evaluation_tokens, load_texts
from pipeline.common.errors import PipelineError

WORDS = "the quick brown fox jumps over the lazy dog and keeps running far away ".split()


def _doc(i: int, words: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))


@pytest.fixture
def c4_mirror(tmp_path):
    """A folder with the same layout as allenai/c4's en shards."""
    for part, (split, name) in C4_FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for i in range(30):
                f.write(json.dumps({"text": f"{split} {i} " + _doc(i, 10 + 7 * i), "timestamp": "x", "url": "u"}) + "\n")
    return tmp_path


@pytest.fixture
def wikitext_mirror(tmp_path):
    for part, (split, pattern) in WIKITEXT_FILES.items():
        path = tmp_path / pattern.replace("*", "00000-of-00001")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": [f" = {split} = \n", _doc(1, 300), "", _doc(2, 300)]}), path)
    return tmp_path


def test_c4_loader_reads_the_wanda_shards(c4_mirror):
    train = load_texts("c4", "calibration", str(c4_mirror))
    val = load_texts("c4", "evaluation", str(c4_mirror))
    assert len(train) == 30 and train[0].startswith("train 0")
    assert val[0].startswith("validation 0")


def test_c4_calibration_windows_are_seeded_and_long_enough(c4_mirror):
    tok = tiny_tokenizer()
    a = calibration_windows(tok, "c4", 6, 64, seed=3, path=str(c4_mirror))
    b = calibration_windows(tok, "c4", 6, 64, seed=3, path=str(c4_mirror))
    c = calibration_windows(tok, "c4", 6, 64, seed=4, path=str(c4_mirror))
    assert a.shape == (6, 64) and torch.equal(a, b) and not torch.equal(a, c)


def test_c4_with_no_document_long_enough(c4_mirror):
    with pytest.raises(PipelineError, match="longer than 100000 tokens"):
        calibration_windows(tiny_tokenizer(), "c4", 2, 100000, path=str(c4_mirror))


def test_wikitext2_loader_and_eval_stream(wikitext_mirror):
    tok = tiny_tokenizer()
    test = load_texts("wikitext2", "evaluation", str(wikitext_mirror))
    assert test[0] == " = test = \n"
    ids = evaluation_tokens(tok, "wikitext2", str(wikitext_mirror))
    assert ids.numel() == len(tok("\n\n".join(test)).input_ids)
    windows = calibration_windows(tok, "wikitext2", 3, 32, path=str(wikitext_mirror))
    assert windows.shape == (3, 32)


def test_missing_mirror_and_unreachable_hub(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        load_texts("c4", "calibration", str(tmp_path / "nope"))
    with pytest.raises(PipelineError, match="cannot load"):  # HF_DATASETS_OFFLINE=1 in the tests
        load_texts("c4", "calibration")


def test_file_sources(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text(_doc(0, 200))
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": _doc(i, 80)}) for i in range(5)) + "\n")
    tok = tiny_tokenizer()
    assert calibration_windows(tok, "file", 4, 50, path=str(txt)).shape == (4, 50)
    assert calibration_windows(tok, "file", 4, 50, path=str(jsonl)).shape == (4, 50)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(PipelineError, match="bad.jsonl:1"):
        load_texts("file", "calibration", str(bad))


def test_empty_and_too_short_text(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(PipelineError, match="empty"):
        calibration_windows(tiny_tokenizer(), "file", 2, 16, path=str(empty))
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(PipelineError, match="not more than seq_len=64"):
        calibration_windows(tiny_tokenizer(), "file", 2, 64, path=str(short))


def test_embedded_text_halves_do_not_overlap():
    text = embedded_text()
    assert len(text) > 300_000
    tok = tiny_tokenizer()
    full = tok(text, return_tensors="pt").input_ids[0]
    evals = evaluation_tokens(tok, "embedded")
    assert torch.equal(evals, full[full.numel() // 2 :])
    windows = calibration_windows(tok, "embedded", 8, 128, seed=0)
    half = full.numel() // 2
    starts = []
    for w in windows:  # every calibration window lies in the first half
        found = [s for s in range(0, half - 127) if torch.equal(full[s : s + 128], w)][:1]
        assert found, "window not from the first half"
        starts.append(found[0])


def test_stdlib_text_is_python_source_split_in_halves():
    from pipeline.core.data import STDLIB_CHARACTERS, stdlib_text

    text = stdlib_text()
    assert 100_000 < len(text) <= STDLIB_CHARACTERS
    assert "def " in text and "import " in text
    assert load_texts("stdlib", "evaluation") == [text]
    tok = tiny_tokenizer()
    full = tok(text, return_tensors="pt").input_ids[0]
    assert torch.equal(evaluation_tokens(tok, "stdlib"), full[full.numel() // 2 :])


def test_a_calibration_mix_splits_the_windows_between_its_texts_each_from_its_calibration_half():
    from pipeline.core.data import mixed_calibration_windows

    tok = tiny_tokenizer()
    mixed = mixed_calibration_windows(tok, ["embedded", "stdlib"], 5, 64, seed=3)
    assert mixed.shape == (5, 64)
    # the first text takes the odd window; each share is exactly what that text alone draws with the seed
    assert torch.equal(mixed[:3], calibration_windows(tok, "embedded", 3, 64, seed=3))
    assert torch.equal(mixed[3:], calibration_windows(tok, "stdlib", 2, 64, seed=3))
    code = tok(load_texts("stdlib", "calibration")[0], return_tensors="pt").input_ids[0]
    half = code[: code.numel() // 2]
    for w in mixed[3:]:  # the code windows come from the calibration half of the standard-library text
        assert any(torch.equal(half[s : s + 64], w) for s in range(half.numel() - 63))


def test_a_calibration_mix_is_validated_with_the_recipe():
    from pipeline.recipe_sections import CalibrationSection

    assert CalibrationSection(dataset="embedded", also=["stdlib"]).label() == "embedded+stdlib"
    with pytest.raises(ValueError, match="repeats a text"):
        CalibrationSection(dataset="stdlib", also=["stdlib"])
    with pytest.raises(ValueError, match="fewer than the 2 calibration texts"):
        CalibrationSection(dataset="embedded", also=["stdlib"], num_samples=1)
