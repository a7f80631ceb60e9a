"""evaluate: the perplexity of the pruned model (RUN/perplexity.json), reported beside the dense one."""

from __future__ import annotations

import logging

from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.core.window_protocol import describe
from pipeline.resources import perplexity_ram
from pipeline.stages.stage import Context, Stage

log = logging.getLogger(__name__)
OUTPUT = "perplexity.json"


def run(ctx: Context) -> None:
    from pipeline.core.evaluate import perplexity

    model, _ = ctx.models.saved()  # in memory right after pruning, else from RUN/pruned
    which = "dense" if ctx.recipe.prune.method == "none" else "pruned"
    ppl = perplexity(model, ctx.evaluation_ids(), **ctx.eval_args(f"perplexity ({ctx.recipe.prune.method})"))
    log.info("%s perplexity on %s: %.3f", which, ctx.recipe.evaluation.dataset, ppl["perplexity"])
    write_json_atomic(ctx.run_dir / OUTPUT, {"dataset": ctx.recipe.evaluation.dataset,
                                             "bos_per_window": ppl["bos_per_window"], which: ppl})


def summary(recipe, run_dir) -> dict:
    return {"perplexity": read_json(run_dir / OUTPUT, "re-run the recipe with --from evaluate")}


def _ppl(entry: dict | None) -> str:
    return f"{entry['perplexity']:.3f}" if entry else "–"


def report(summary: dict) -> list[str]:
    """The perplexity table: the dense row (baseline stage) and the pruned row (this stage)."""
    ppl = summary.get("perplexity") or {}
    if not ppl:
        return []
    first = ppl.get("pruned") or ppl.get("dense")
    lines = [f"## Perplexity ({ppl['dataset']}, {first['windows']} windows of {first['context_length']} tokens)", "",
             f"Windows: {describe(first.get('bos_per_window'), first['context_length'])}.", "",
             "| model | perplexity |", "|---|---|"]
    if "dense" in ppl:
        lines.append(f"| dense | {_ppl(ppl['dense'])} |")
    if "pruned" in ppl:
        lines.append(f"| {summary['method']} {summary['sparsity']} | {_ppl(ppl['pruned'])} |")
    return lines


def estimate(shapes, recipe) -> tuple[int, int]:
    return perplexity_ram(shapes, recipe), 0


STAGE = Stage(name="evaluate", about="perplexity of the pruned model",
              sections=("model", "calibration", "prune", "evaluation"), outputs=(OUTPUT,), reads=("prune",),
              applies=lambda r: r.evaluation.enabled, model="saved", check=lambda ctx: ctx.evaluation_ids(),
              estimate=estimate, run=run, summary=summary, report=report)
