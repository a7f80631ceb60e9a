"""The recipe: one YAML file that says what a run does. Validated before any heavy work.

Unknown keys are errors (a typo must not silently fall back to a default). Every error is
reported as ``recipe FILE: section.key: what is wrong — fix: ...``. The sections are in pipeline/recipe_sections.py;
this module holds the whole recipe, the checks across its sections, and reading it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.common.errors import PipelineError
from pipeline.recipe_sections import (AccuracySection, BenchmarkSection, CalibrationSection, EvaluationSection,
                                      ExportSection, ModelSection, PruneSection, QuantizeSection, StrictSection,
                                      exported_graph)


class Recipe(StrictSection):
    """A whole recipe: its name, the model, and one section per concern."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the run's name (letters, digits, . _ -); "
                                                                        "the default run folder is runs/<name>")
    description: str = Field("", description="free text for the reader of the recipe; the run does not use it")
    output_dir: Optional[str] = Field(None, description="run folder; default runs/<name>")
    model: ModelSection
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    prune: PruneSection = Field(default_factory=PruneSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    accuracy: AccuracySection = Field(default_factory=AccuracySection)
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    export: ExportSection = Field(default_factory=ExportSection)
    benchmark: BenchmarkSection = Field(default_factory=BenchmarkSection)

    @model_validator(mode="after")
    def _cross_checks(self):
        for section in (self.calibration, self.evaluation):
            if section.dataset == "file" and not section.path:
                raise ValueError("dataset 'file' needs path: (a .txt, .jsonl or .json file)")
        if self.quantize.enabled and not self.export.enabled:
            raise ValueError("quantize works on the exported ONNX artifact, and this recipe does not export: "
                             "set export.enabled: true")
        block = self.prune.block
        if "block" in self.prune.reconstruct:
            if block.batch_windows > self.calibration.num_samples:
                raise ValueError(f"prune.block.batch_windows {block.batch_windows} exceeds calibration.num_samples "
                                 f"{self.calibration.num_samples}: lower it or calibrate on more windows")
        bench = self.benchmark
        if bench.enabled:
            if not self.export.enabled:
                raise ValueError("benchmark measures the exported artifact: set export.enabled: true")
            if bench.sequence_length > self.export.max_sequence_length:
                raise ValueError(f"benchmark.sequence_length {bench.sequence_length} exceeds export.max_sequence_length "
                                 f"{self.export.max_sequence_length}, the longest sequence the exported graph holds — "
                                 f"fix: lower benchmark.sequence_length (with every prefill length below it) or raise "
                                 f"export.max_sequence_length to {bench.sequence_length} or more")
            missing = sorted(e for e in set(bench.engines)
                             if exported_graph(e) and exported_graph(e) not in self.export.engines)
            if missing:
                graphs = sorted({exported_graph(e) for e in missing})
                raise ValueError(f"benchmark.engines has {missing} but export.engines does not export the graph it "
                                 f"runs ({', '.join(graphs)}): add {', '.join(graphs)} to export.engines or drop "
                                 f"{', '.join(missing)} from benchmark.engines")
            from benchmarks.engines import asks_ggufs

            if asks_ggufs(bench.engines) and "source" in bench.gguf_types and not self.model.gguf_file:
                raise ValueError("benchmark.gguf_types has source (the GGUF file the model came from), but "
                                 "model.gguf_file is not set: drop source or load the model from its GGUF file")
        return self

    def advisories(self) -> list[str]:
        """Settings that are valid but probably not what the user meant: printed by ``pipeline validate`` and
        logged as warnings when a run starts."""
        notes = []
        block = self.prune.block
        seen = block.steps * block.batch_windows
        if "block" in self.prune.reconstruct and seen < self.calibration.num_samples:
            notes.append(f"prune.block trains on {seen} windows per layer (steps {block.steps} x batch_windows "
                         f"{block.batch_windows}) of the {self.calibration.num_samples} calibration windows, so "
                         f"{self.calibration.num_samples - seen} are never trained on (they still shape the masks and "
                         f"obs): raise prune.block.steps to {-(-self.calibration.num_samples // block.batch_windows)} "
                         f"for one pass over every window")
        return notes

    def run_dir(self, base: Path | None = None) -> Path:
        out = Path(self.output_dir) if self.output_dir else Path("runs") / self.name
        return out if out.is_absolute() or base is None else base / out

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(path: Path, exc: ValidationError) -> PipelineError:
    """One PipelineError for every problem pydantic found; a message's own fix is kept, not doubled."""
    problems, fixes = [], []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; `pipeline validate --help` lists the keys)"
        elif err["type"] == "missing":
            message = "required key is missing"
        message, _, fix = message.partition(" — fix: ")
        problems.append(f"{where}: {message}")
        if fix:
            fixes.append(fix)
    return PipelineError(f"recipe {path}: " + "; ".join(problems),
                         "; ".join(fixes) or "edit the recipe as the message says; recipes/ has examples")


def _check_mapping(data, path: Path) -> dict:
    if not isinstance(data, dict):
        raise PipelineError(f"recipe {path} is not a YAML mapping", "start from one of the files in recipes/")
    return data


def parse_recipe(data: dict, path: Path | str = "<recipe>") -> Recipe:
    path = Path(path)
    _check_mapping(data, path)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(path, exc) from None


def read_recipe_data(path: str | Path) -> dict:
    """The recipe file's YAML mapping, not yet validated (pipeline/overrides.py changes it first)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"recipe {path} does not exist", "give the path of a YAML recipe, e.g. recipes/smollm2-embedded.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PipelineError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}", "fix the YAML syntax") from None
    return _check_mapping(data, path)


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_recipe_data(path), path)
