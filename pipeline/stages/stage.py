"""What a stage is (one declarative object per stage module) and what its functions receive.

A stage module under pipeline/stages/ defines ``STAGE = Stage(...)``; pipeline/stages/__init__.py lists
them in run order, and the runner (pipeline/runner.py), the resume bookkeeping (pipeline/resume.py), the
resource preflight (pipeline/resources.py), summary.json and report.md all read that table. Nothing
else names a stage. A stage module imports its heavy libraries inside its functions, so that the
table (and with it ``pipeline validate``) loads nothing heavy.
"""

from __future__ import annotations

import copy
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)


def _nothing(*_) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    name: str
    about: str
    #: recipe sections (top-level keys) its output depends on, those of the stages it reads included
    sections: tuple[str, ...]
    #: files or folders it writes under the run folder
    outputs: tuple[str, ...]
    #: earlier stages whose outputs it reads: when one of them runs again, so does this one
    reads: tuple[str, ...]
    #: whether the recipe asks for it
    applies: Callable[[Any], bool]
    #: the body: reads what it needs, writes its outputs atomically
    run: Callable[["Context"], None]
    #: (peak RAM, disk written) in bytes, from the model's shapes (pipeline/resources.py) and the recipe
    estimate: Callable[[Any, Any], tuple[int, int]]
    #: the model its body works on: "dense" (the recipe's source), "saved" (RUN/pruned, or the source
    #: when nothing is pruned) or None; its check runs after that model is loaded (None: before)
    model: Literal["dense", "saved"] | None = None
    #: up-front checks that need only the source's config (config.json, no weights): run as soon as it is read,
    #: before any model loads or calibration text is tokenized
    check_config: Callable[["Context", Any], None] = _nothing
    #: up-front checks, before anything is written; what it returns is kept in ``ctx.prepared[name]``
    check: Callable[["Context"], Any] = _nothing
    #: its part of summary.json, from the files it wrote (None: nothing)
    summary: Callable[[Any, Path], dict | None] = _nothing
    #: its section of report.md, from summary.json (empty: none)
    report: Callable[[dict], list[str]] = lambda summary: []

    @property
    def reads_config(self) -> bool:
        """Whether its up-front checks look at the source (its config, or the model itself)."""
        return self.model is not None or self.check_config is not _nothing


class Models:
    """The one model in memory: the recipe's source (dense) or the run's pruned/ folder, loaded on demand."""

    def __init__(self, recipe, run_dir: Path):
        self.recipe, self.run_dir = recipe, run_dir
        self.model = self.tokenizer = None
        self.state: str | None = None  # "dense" | "saved" | None
        self.source_config = None  # the source's config once the resource preflight has read it
        self._cached: dict[str, Any] = {}  # the stream folder and the skeleton, found once

    def _load(self, state: str, source: str, **kwargs):
        if self.state != state:
            from pipeline.core.models import load_model

            self.release()
            m = self.recipe.model
            self.model, self.tokenizer = load_model(source, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                                                    **kwargs)
            self.state = state
        return self.model, self.tokenizer

    def dense(self):
        m = self.recipe.model
        return self._load("dense", m.source, gguf_file=m.gguf_file, revision=m.revision, allow_pickle=m.allow_pickle,
                          config=copy.deepcopy(self.source_config))  # later stages mutate a model's config

    def saved(self):
        """The model as the last model-changing stage saved it (RUN/pruned, or the source when nothing is pruned)."""
        if self.recipe.prune.method == "none":
            return self.dense()
        return self._load("saved", str((self.run_dir / "pruned").resolve()))

    def get(self, which: str):
        return self.dense() if which == "dense" else self.saved()

    def config(self):
        """The source's config (read once; a copy, since later stages mutate a model's config)."""
        if self.source_config is None:
            from pipeline.core.models import load_config

            m = self.recipe.model
            self.source_config = load_config(m.source, m.gguf_file, m.trust_remote_code, m.revision, m.allow_pickle)
        return copy.deepcopy(self.source_config)

    def stream_folder(self):
        """The local safetensors folder the prune stage streams layers from, or None (it loads the model whole)."""
        if not self.recipe.prune.streaming or self.recipe.prune.allocation != "uniform":
            return None  # a per-layer allocation's statistics pass runs on the whole model
        if "stream_folder" not in self._cached:
            from pipeline.core.checkpoint import safetensors_folder

            m = self.recipe.model
            self._cached["stream_folder"] = safetensors_folder(m.source, m.gguf_file, m.revision)
        return self._cached["stream_folder"]

    def safetensors_of(self, which: str):
        """The local safetensors folder holding the dense (source) or saved model, or None (a GGUF source, a hub
        model that is not cached): what a bounded-memory export reads tensor by tensor."""
        if which == "saved" and self.recipe.prune.method != "none":
            return self.run_dir / "pruned"
        if "source_folder" not in self._cached:
            from pipeline.core.checkpoint import safetensors_folder

            m = self.recipe.model
            self._cached["source_folder"] = safetensors_folder(m.source, m.gguf_file, m.revision)
        return self._cached["source_folder"]

    def skeleton(self):
        """(source model with its parameters on the meta device, tokenizer): what checks need, without weights."""
        if "skeleton" not in self._cached:
            from pipeline.core.checkpoint import skeleton
            from pipeline.core.models import load_tokenizer

            m = self.recipe.model
            self._cached["skeleton"] = (skeleton(self.config(), m.dtype),
                                        load_tokenizer(m.source, m.gguf_file, m.trust_remote_code, m.revision))
        return self._cached["skeleton"]

    def release(self) -> None:
        self.model, self.state = None, None
        gc.collect()


@dataclass
class Context:
    recipe: Any
    run_dir: Path
    models: Models
    progress: bool
    #: the model the checks look at: that of the first stage to run that has one
    check_model: str | None = None
    #: what each stage's check returned, by stage name
    prepared: dict[str, Any] = field(default_factory=dict)
    #: the resource preflight's estimates, by stage name ({"ram_gib", "disk_gib"}; empty when skipped)
    estimates: dict[str, dict] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def model_for_checks(self):
        """(model, tokenizer) as the first model-using stage of this run will see it (the source's skeleton, no
        weights, when that stage is the streaming prune: checks need shapes and the tokenizer, not weights)."""
        if self.models.state is None:
            if self.check_model == "dense" and self.recipe.prune.method != "none" and self.models.stream_folder():
                return self.models.skeleton()
            self.models.get(self.check_model or "saved")
        return self.models.model, self.models.tokenizer

    def bos_per_window(self, part: str) -> bool:
        """Whether ``part``'s windows (calibration / evaluation) start with a BOS: the recipe's setting, ``auto``
        resolved by the source config's model_type (pipeline/core/window_protocol.py; config only, no weights)."""
        from pipeline.core.window_protocol import bos_per_window

        section = self.recipe.calibration if part == "calibration" else self.recipe.evaluation
        return bos_per_window(section.bos_per_window, getattr(self.models.config(), "model_type", None))

    def bos_token_id(self, part: str, tokenizer) -> int | None:
        """The BOS id every ``part`` window starts with, or None for the stream protocol."""
        from pipeline.core.data import bos_id

        return bos_id(tokenizer) if self.bos_per_window(part) else None

    def calibration_ids(self):
        """The calibration windows [num_samples, seq_len] (tokenized once per run)."""
        if "calibration" not in self._cache:
            from pipeline.core.data import mixed_calibration_windows

            cal = self.recipe.calibration
            _, tokenizer = self.model_for_checks()
            self._cache["calibration"] = mixed_calibration_windows(tokenizer, cal.texts(), cal.num_samples,
                                                                   cal.seq_len, cal.seed, cal.path,
                                                                   self.bos_token_id("calibration", tokenizer))
            log.info("calibration: %d windows of %d tokens from %s", *self._cache["calibration"].shape, cal.label())
        return self._cache["calibration"]

    def evaluation_ids(self, dataset: str | None = None):
        """The tokens of an evaluation text (default: the main one), refused when shorter than one window
        (tokenized once per run)."""
        ev = self.recipe.evaluation
        dataset = dataset or ev.dataset
        key = f"evaluation:{dataset}"
        if key not in self._cache:
            from pipeline.core.data import evaluation_tokens

            _, tokenizer = self.model_for_checks()
            bos = self.bos_token_id("evaluation", tokenizer)
            ids = evaluation_tokens(tokenizer, dataset, ev.path if dataset == ev.dataset else None,
                                    bos_per_window=bos is not None)
            if ids.numel() < ev.context_length - (bos is not None):
                raise PipelineError(
                    f"the evaluation text ({dataset}) has {ids.numel()} tokens, fewer than "
                    f"context_length={ev.context_length}",
                    "use a longer evaluation text or a smaller evaluation.context_length",
                )
            self._cache[key] = ids
            self._cache["evaluation_bos"] = bos
        return self._cache[key]

    def all_evaluation_ids(self) -> dict:
        """Every evaluation text's tokens (evaluation.dataset, then evaluation.also), each checked."""
        return {dataset: self.evaluation_ids(dataset) for dataset in self.recipe.evaluation.texts()}

    def accuracy_tasks(self):
        """lm-eval's TaskManager for ``accuracy.tasks``, every name and every task's data checked (once per run):
        an unknown name or data missing offline is a PipelineError here, before any model loads."""
        if "accuracy" not in self._cache:
            from pipeline.core.accuracy import check_task_data, task_manager

            acc = self.recipe.accuracy
            manager = task_manager(acc.tasks, acc.include_path)
            items = check_task_data(manager, acc.tasks, acc.offline, acc.data_dir)
            log.info("accuracy tasks ready: %s", ", ".join(f"{t} ({n} items)" for t, n in items.items()))
            self._cache["accuracy"] = manager
        return self._cache["accuracy"]

    def eval_args(self, desc: str) -> dict:
        ev = self.recipe.evaluation
        self.evaluation_ids()
        return dict(context_length=ev.context_length, max_windows=ev.max_windows, device=ev.device,
                    progress=self.progress, desc=desc, bos_token_id=self._cache["evaluation_bos"])
