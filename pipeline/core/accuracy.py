"""Zero-shot (or few-shot) task accuracy through lm-evaluation-harness (the ``lm_eval`` package).

Three parts, used by the accuracy stages (pipeline/stages/accuracy*.py) and the artifact adapter
(export/onnx_accuracy.py):

- ``resolve_tasks``: the task names checked against lm-eval's task index (and the project's own tasks in
  ``TASKS_DIR``, and the recipe's ``include_path`` folders), then each task's data loaded once, offline: an
  unknown name or data that is not in the cache is one PipelineError, before any model loads.
- ``torch_lm``: lm-eval's own HFLM around a model object already in memory (no second load).
- ``evaluate``: lm-eval's ``simple_evaluate`` on any lm-eval model (HFLM or the ONNX adapter), reduced to
  acc / acc_norm and their standard errors per task, as lm-eval reports them.

Task data comes from the Hugging Face datasets cache (``data_dir``, else HF_DATASETS_CACHE /
~/.cache/huggingface/datasets). With ``offline`` the hub is never asked (HF_DATASETS_OFFLINE), so a
missing dataset fails at once instead of after network timeouts.
"""

from __future__ import annotations

import difflib
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

#: the project's own lm-eval tasks (always on the include path): pydoc_endings, stdlib_lines
TASKS_DIR = Path(__file__).with_name("tasks")
#: the metrics kept from lm-eval's results, each with its ``_stderr``
METRICS = ("acc", "acc_norm")


@contextmanager
def task_data(offline: bool, data_dir: str | None):
    """Within: the datasets library reads ``data_dir`` as its cache and, with ``offline``, never the hub.

    The libraries read HF_DATASETS_OFFLINE / HF_HUB_OFFLINE / HF_DATASETS_CACHE when they are imported, so their
    module settings are switched too, and everything is put back afterwards."""
    import datasets
    import huggingface_hub.constants as hub

    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"} if offline else {}
    if data_dir:
        env["HF_DATASETS_CACHE"] = str(Path(data_dir).expanduser().resolve())
    saved_env = {key: os.environ.get(key) for key in env}
    saved = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_CACHE)
    os.environ.update(env)
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    if data_dir:
        datasets.config.HF_DATASETS_CACHE = Path(env["HF_DATASETS_CACHE"])
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_CACHE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def route_lm_eval_logging() -> None:
    """lm-eval's records go through our handlers (log files; the terminal shows our own lines only), not through
    the stderr handler lm-eval would add to its logger on first use."""
    import lm_eval.utils

    lm_eval.utils._LOGGING_CONFIGURED = True  # its setup_logging then sets a level only, and adds no handler
    logger = logging.getLogger("lm_eval")
    logger.propagate = True
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


def _hidden(bar):
    """``bar`` with ``disable=True`` whatever the caller passes (lm-eval passes its own ``disable=``)."""
    return lambda *args, **kwargs: bar(*args, **{**kwargs, "disable": True})


@contextmanager
def lm_eval_bars(progress: bool):
    """lm-eval's own progress bars (building contexts, tokenizing) hidden; its bar over the model's requests
    (HFLM's "Running loglikelihood requests", the long part) shown when ``progress``."""
    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.models.huggingface as hf

    modules = (lm_eval.api.model, lm_eval.api.task, hf)
    saved = [m.tqdm for m in modules]
    for module, bar in zip(modules, saved):
        if module is not hf or not progress:
            module.tqdm = _hidden(bar)
    try:
        yield
    finally:
        for module, bar in zip(modules, saved):
            module.tqdm = bar


def _manager(include_path: list[str], defaults: bool):
    from lm_eval.tasks import TaskManager

    route_lm_eval_logging()
    return TaskManager(verbosity="INFO", include_path=[str(TASKS_DIR), *include_path], include_defaults=defaults)


def task_manager(tasks: list[str], include_path: list[str] = ()):
    """lm-eval's TaskManager for these task names, every unknown name refused in one PipelineError.

    lm-eval's built-in index (some 15,000 task files, about 15 s to read) is read only when a task is not among
    the project's own tasks and the ``include_path`` folders."""
    for folder in include_path:
        if not Path(folder).is_dir():
            raise PipelineError(f"accuracy.include_path {folder} is not a folder",
                                "give folders that hold lm-eval task YAML files")
    manager = _manager(list(include_path), defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
        manager = _manager(list(include_path), defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        near = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        hints = "; ".join(f"{t}: did you mean {', '.join(m)}?" for t, m in near.items() if m)
        raise PipelineError(
            f"accuracy.tasks: unknown lm-eval task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
            + (f" ({hints})" if hints else ""),
            "use lm-eval task names (`lm-eval ls tasks` lists them; the paper's are hellaswag, winogrande, "
            "arc_easy, arc_challenge, piqa), or add the folder of your own task YAML to accuracy.include_path")
    return manager


def check_task_data(manager, tasks: list[str], offline: bool, data_dir: str | None) -> dict[str, int]:
    """Loads each task (its dataset included) once; returns the number of items each evaluates on.

    A task whose data cannot be had is one PipelineError naming the task, the dataset and how to get it."""
    counts = {}
    with task_data(offline, data_dir):
        for name in tasks:
            try:
                loaded = manager.load_task_or_group([name])
            except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError, ...
                cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                where = f"the datasets cache {data_dir}" if data_dir else "the Hugging Face datasets cache"
                raise PipelineError(
                    f"accuracy task {name}: its data is not available {'offline ' if offline else ''}in {where} "
                    f"({cause})",
                    f"on a machine with internet run `lm-eval run --model dummy --tasks {name} --limit 1` or "
                    "`python -c \"import datasets; datasets.load_dataset(PATH, NAME)\"` with the task's dataset_path / "
                    "dataset_name, then copy ~/.cache/huggingface/datasets here and point accuracy.data_dir at it "
                    "(or set accuracy.offline: false where the hub is reachable, or drop the task from "
                    "accuracy.tasks)") from exc
            counts[name] = sum(_items(task) for task in _leaves(loaded))
    return counts


def _leaves(loaded) -> list:
    """The Task objects in lm-eval's nested {group: {name: Task}} answer."""
    out = []
    for value in (loaded.values() if isinstance(loaded, dict) else [loaded]):
        out += _leaves(value) if isinstance(value, dict) else [value]
    return out


def _items(task) -> int:
    docs = task.eval_docs
    return len(docs) if docs is not None else 0


def torch_lm(model, tokenizer, batch_size: int, max_length: int):
    """lm-eval's HFLM around ``model`` as it is in memory (dense or pruned): no reload, no copy."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def max_length(config) -> int:
    """The longest input any adapter scores (lm-eval cuts the context from the left beyond it): the model's own."""
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def evaluate(lm, manager, tasks: list[str], num_fewshot: int, limit, offline: bool, data_dir: str | None,
             seed: int = 1234, progress: bool = False) -> dict:
    """lm-eval's simple_evaluate of ``lm`` on ``tasks``; per task: acc, acc_norm (where the task has it), their
    standard errors and the number of items scored, as lm-eval reports them."""
    from lm_eval import simple_evaluate

    route_lm_eval_logging()
    with task_data(offline, data_dir), lm_eval_bars(progress):
        out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                              log_samples=False, bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, verbosity="INFO")
    return scores(out)


def scores(out: dict) -> dict:
    """The part of simple_evaluate's answer a report needs: {task: {acc, acc_stderr, acc_norm, ..., items}}."""
    result = {}
    for name, metrics in out["results"].items():
        entry = {}
        for metric in METRICS:
            for key in (metric, f"{metric}_stderr"):
                value = metrics.get(f"{key},none")
                if isinstance(value, (int, float)):
                    entry[key] = float(value)
        if not entry:
            continue  # a group without an aggregate, or a task without acc
        samples = (out.get("n-samples") or {}).get(name) or {}
        entry["items"] = samples.get("effective")
        entry["items_in_task"] = samples.get("original")
        entry["version"] = (out.get("versions") or {}).get(name)
        result[name] = entry
    return result


def settings(section) -> dict:
    """What summary.json records about how accuracy was measured (from the recipe's accuracy section)."""
    import lm_eval

    return {"tasks": list(section.tasks), "num_fewshot": section.num_fewshot, "limit": section.limit,
            "lm_eval_version": getattr(lm_eval, "__version__", None), "data_dir": section.data_dir,
            "offline": section.offline}
