"""accuracy_dense: task accuracy of the unpruned model through lm-evaluation-harness (RUN/accuracy_dense.json).

Its figures join the accuracy stage's table. Its output depends on the model and ``accuracy`` only, so changing
the pruning does not rerun it (a sweep over prune.* measures the dense model once).
"""

from __future__ import annotations

from pipeline.common.outputs import read_json
from pipeline.stages.accuracy import check_config, estimate, torch_accuracy, write
from pipeline.stages.stage import Context, Stage

OUTPUT = "accuracy_dense.json"


def run(ctx: Context) -> None:
    model, tokenizer = ctx.models.dense()
    write(ctx, OUTPUT, "dense", torch_accuracy(ctx, model, tokenizer, "dense"))


def summary(recipe, run_dir) -> dict:
    return {"accuracy": read_json(run_dir / OUTPUT, "re-run the recipe with --from accuracy_dense")}


STAGE = Stage(name="accuracy_dense", about="task accuracy of the unpruned model (lm-evaluation-harness)",
              sections=("model", "accuracy"), outputs=(OUTPUT,), reads=(),
              applies=lambda r: r.accuracy.enabled and r.accuracy.dense and r.prune.method != "none",
              model="dense", check_config=check_config, estimate=estimate, run=run, summary=summary)
