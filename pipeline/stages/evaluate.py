"""evaluate: the perplexity of the pruned model (RUN/perplexity.json), reported beside the dense one."""

from __future__ import annotations

import logging
import math

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
    also = {}
    for dataset in ctx.recipe.evaluation.also:
        also[dataset] = perplexity(model, ctx.evaluation_ids(dataset),
                                   **ctx.eval_args(f"perplexity ({ctx.recipe.prune.method}, {dataset})"))
        log.info("%s perplexity on %s: %.3f", which, dataset, also[dataset]["perplexity"])
    write_json_atomic(ctx.run_dir / OUTPUT, {"dataset": ctx.recipe.evaluation.dataset,
                                             "bos_per_window": ppl["bos_per_window"], which: ppl, "also": also})


def summary(recipe, run_dir) -> dict:
    """``perplexity``: the main text's figure, the further texts' as ``pruned_also`` (or ``dense_also``)."""
    content = read_json(run_dir / OUTPUT, "re-run the recipe with --from evaluate")
    which = "dense" if recipe.prune.method == "none" else "pruned"
    return {"perplexity": {**{k: v for k, v in content.items() if k != "also"}, f"{which}_also": content.get("also", {})}}


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
    lines += _noise(ppl)
    return lines + _also_table(summary, ppl)


def _noise(ppl: dict) -> list[str]:
    """The windows' sampling noise, and the pruned model's change against the dense one on the same windows."""
    from pipeline.core.evaluate import paired_change

    lines = []
    first = ppl.get("pruned") or ppl.get("dense")
    if first.get("nll_standard_error") is not None:
        lines += ["", f"Noise: the mean loss over these windows has a standard error of {first['nll_standard_error']:.4f} "
                      f"(x{math.exp(first['nll_standard_error']):.3f} on a perplexity); the same run repeated on this "
                      "machine gives the same figures (the evaluation is deterministic)."]
    change = paired_change(ppl["dense"], ppl["pruned"]) if "dense" in ppl and "pruned" in ppl else None
    if change:
        lines.append(f"Pruned against dense on the same windows: x{change['ratio']:.3f} "
                     f"(paired standard error of the loss difference {change['standard_error']:.4f}).")
    return lines


def _also_table(summary: dict, ppl: dict) -> list[str]:
    dense, pruned = ppl.get("dense_also") or {}, ppl.get("pruned_also") or {}
    texts = [t for t in {**dense, **pruned}]
    if not texts:
        return []
    lines = ["", "Further evaluation texts (same protocol):", "", "| text | dense | "
             f"{summary['method']} {summary['sparsity']} |", "|---|---|---|"]
    return lines + [f"| {t} | {_ppl(dense.get(t))} | {_ppl(pruned.get(t))} |" for t in texts]


def estimate(shapes, recipe) -> tuple[int, int]:
    return perplexity_ram(shapes, recipe), 0


STAGE = Stage(name="evaluate", about="perplexity of the pruned model",
              sections=("model", "calibration", "prune", "evaluation"), outputs=(OUTPUT,), reads=("prune",),
              applies=lambda r: r.evaluation.enabled, model="saved", check=lambda ctx: ctx.all_evaluation_ids(),
              estimate=estimate, run=run, summary=summary, report=report)
