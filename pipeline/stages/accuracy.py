"""accuracy: task accuracy of the pruned model through lm-evaluation-harness (RUN/accuracy.json), reported in one
table beside the unpruned model's (stage accuracy_dense) and the exported graph's (stage accuracy_artifact).

lm-eval's HFLM wraps the model already in memory (pipeline/core/accuracy.py); acc and acc_norm with their standard
errors are lm-eval's own figures. The task names and every task's data are checked before any model loads
(``Context.accuracy_tasks``). Its output depends on ``accuracy`` and on what the pruned model depends on.
"""

from __future__ import annotations

import logging
import time

from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.resources import BASE, model_bytes
from pipeline.stages.stage import Context, Stage

log = logging.getLogger(__name__)
OUTPUT = "accuracy.json"
#: the columns of the report's table, in order: summary["accuracy"] keys and their headings
COLUMNS = (("dense", "dense"), ("pruned", None), ("artifact", "artifact (ONNX Runtime graph)"))


def measure(ctx: Context, lm, label: str) -> dict:
    """``lm`` (an lm-eval model) on the recipe's tasks: {"tasks": {task: {acc, acc_stderr, ...}}, "seconds"}."""
    from pipeline.core.accuracy import evaluate

    acc = ctx.recipe.accuracy
    t0 = time.time()
    tasks = evaluate(lm, ctx.accuracy_tasks(), acc.tasks, acc.num_fewshot, acc.limit, acc.offline, acc.data_dir,
                     acc.seed, progress=ctx.progress)
    for name, entry in tasks.items():
        log.info("accuracy of the %s model on %s (%s items): acc %s, acc_norm %s", label, name, entry["items"],
                 _fmt(entry, "acc"), _fmt(entry, "acc_norm"))
    return {"tasks": tasks, "seconds": time.time() - t0}


def torch_accuracy(ctx: Context, model, tokenizer, label: str) -> dict:
    from pipeline.core.accuracy import max_length, torch_lm

    lm = torch_lm(model, tokenizer, ctx.recipe.accuracy.batch_size, max_length(model.config))
    return measure(ctx, lm, label)


def write(ctx: Context, output: str, which: str, result: dict) -> None:
    from pipeline.core.accuracy import settings

    write_json_atomic(ctx.run_dir / output, {"settings": settings(ctx.recipe.accuracy), which: result})


def run(ctx: Context) -> None:
    model, tokenizer = ctx.models.saved()  # in memory right after pruning, else from RUN/pruned
    which = "dense" if ctx.recipe.prune.method == "none" else "pruned"
    write(ctx, OUTPUT, which, torch_accuracy(ctx, model, tokenizer, which))


def summary(recipe, run_dir) -> dict:
    return {"accuracy": read_json(run_dir / OUTPUT, "re-run the recipe with --from accuracy")}


def _fmt(entry: dict, metric: str) -> str:
    if metric not in entry:
        return "–"
    err = entry.get(f"{metric}_stderr")
    return f"{entry[metric]:.4f}" + (f" ± {err:.4f}" if err is not None else "")


def report(summary: dict) -> list[str]:
    """One table: a row per task and metric, a column per model measured (dense, pruned, artifact)."""
    acc = summary.get("accuracy") or {}
    columns = [(key, heading or f"{summary['method']} {summary['sparsity']}") for key, heading in COLUMNS if key in acc]
    if not columns:
        return []
    st = acc["settings"]
    tasks = list(dict.fromkeys(t for key, _ in columns for t in acc[key]["tasks"]))
    limit = f", at most {st['limit']} items per task" if st.get("limit") else ""
    lines = [f"## Task accuracy (lm-evaluation-harness {st.get('lm_eval_version')}, {st['num_fewshot']}-shot{limit})",
             "", "acc and acc_norm (length-normalised) ± standard error, as lm-eval reports them; every model on the "
             "same items.", "", "| task | items | metric | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for task in tasks:
        entries = [acc[key]["tasks"].get(task, {}) for key, _ in columns]
        items = next((e["items"] for e in entries if e.get("items") is not None), "–")
        for metric in ("acc", "acc_norm"):
            if any(metric in e for e in entries):
                lines.append(f"| {task} | {items} | {metric} | " + " | ".join(_fmt(e, metric) for e in entries) + " |")
    if len(tasks) > 1:
        for metric in ("acc", "acc_norm"):
            means = []
            for key, _ in columns:
                values = [e[metric] for e in acc[key]["tasks"].values() if metric in e]
                means.append(f"{sum(values) / len(values):.4f}" if len(values) == len(tasks) else "–")
            lines.append(f"| mean of the tasks | | {metric} | " + " | ".join(means) + " |")
    art = acc.get("artifact")
    if art:
        lines += ["", f"artifact: `{art['path']}` ({art['graph']} graph, scored in ONNX Runtime)."]
    return lines


def estimate(shapes, recipe) -> tuple[int, int]:
    """The model, plus a batch of requests' logits and log-softmax (float32; requests of up to 512 tokens)."""
    return model_bytes(shapes, recipe) + recipe.accuracy.batch_size * 512 * shapes.vocab * 4 * 2 + BASE, 0


def check_config(ctx: Context, config) -> None:
    ctx.accuracy_tasks()


STAGE = Stage(name="accuracy", about="task accuracy of the pruned model (lm-evaluation-harness)",
              sections=("model", "calibration", "prune", "accuracy"), outputs=(OUTPUT,), reads=("prune",),
              applies=lambda r: r.accuracy.enabled, model="saved", check_config=check_config,
              estimate=estimate, run=run, summary=summary, report=report)
