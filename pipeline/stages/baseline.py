"""baseline: the perplexity of the unpruned model (RUN/perplexity_dense.json)."""

from __future__ import annotations

import logging

from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.resources import perplexity_ram
from pipeline.stages.stage import Context, Stage

log = logging.getLogger(__name__)
OUTPUT = "perplexity_dense.json"


def run(ctx: Context) -> None:
    from pipeline.core.evaluate import perplexity

    model, _ = ctx.models.dense()
    ppl = perplexity(model, ctx.evaluation_ids(), **ctx.eval_args("perplexity (dense)"))
    log.info("dense perplexity on %s: %.3f", ctx.recipe.evaluation.dataset, ppl["perplexity"])
    also = {}
    for dataset in ctx.recipe.evaluation.also:
        also[dataset] = perplexity(model, ctx.evaluation_ids(dataset), **ctx.eval_args(f"perplexity (dense, {dataset})"))
        log.info("dense perplexity on %s: %.3f", dataset, also[dataset]["perplexity"])
    write_json_atomic(ctx.run_dir / OUTPUT, {"dataset": ctx.recipe.evaluation.dataset,
                                             "bos_per_window": ppl["bos_per_window"], "dense": ppl, "also": also})


def summary(recipe, run_dir) -> dict:
    """Its figure joins the evaluate stage's in summary["perplexity"] (and in that stage's report table); the
    further texts' as ``dense_also``."""
    content = read_json(run_dir / OUTPUT, "re-run the recipe with --from baseline")
    return {"perplexity": {**{k: v for k, v in content.items() if k != "also"}, "dense_also": content.get("also", {})}}


def estimate(shapes, recipe) -> tuple[int, int]:
    return perplexity_ram(shapes, recipe), 0


STAGE = Stage(name="baseline", about="perplexity of the unpruned model",
              sections=("model", "evaluation"), outputs=(OUTPUT,), reads=(),
              applies=lambda r: r.prune.method != "none" and r.evaluation.enabled and r.evaluation.dense_baseline,
              model="dense", check=lambda ctx: ctx.all_evaluation_ids(), estimate=estimate, run=run, summary=summary)
