"""benchmark: tokens/s of this run's artifacts (dense, pruned, INT8), interleaved with each other and with the
compared runs' (benchmarks/runner.py);
RUN/benchmark/ (results.json, report.md, plots) and RUN/benchmark.json."""

from __future__ import annotations

from pathlib import Path

from pipeline.common.errors import PipelineError
from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.resources import BASE, Shapes
from pipeline.stages.stage import Context, Stage


def check(ctx: Context) -> list[dict]:
    """The engines and threads exist here; the compared artifacts exist and their names differ from ours."""
    from benchmarks.runner import check_machine, find_artifact

    recipe = ctx.recipe
    check_machine(recipe.benchmark.settings())
    others = [find_artifact(entry, "benchmark.compare:") for entry in recipe.benchmark.compared_folders()]
    names = [a["key"] for a in others] + list(variants(recipe).values())
    if len(set(names)) != len(names):
        raise PipelineError(f"benchmark.compare: two benchmarked artifacts would share a name in {names}",
                            "compare runs whose folder names differ from each other and from this recipe's name")
    return others


def variants(recipe) -> dict[str, str]:
    """This run's artifacts by role (dense / pruned / int8) -> the name each is benchmarked under."""
    from pipeline.stages.export_dense import applies as exports_dense

    name = recipe.name
    found = {"dense": f"{name}-dense"} if exports_dense(recipe) else {}
    found["dense" if recipe.prune.method == "none" else "pruned"] = name
    if recipe.quantize.enabled:
        found["int8"] = f"{name}-int8"
    return found


FOLDERS = {"dense": "artifact-dense", "pruned": "artifact", "int8": "artifact-int8"}


def run(ctx: Context) -> None:
    """Benchmark this run's artifacts (the dense one first) interleaved with the compared ones;
    RUN/benchmark/{results.json, report.md, *.png} and RUN/benchmark.json."""
    from benchmarks.report import write_report
    from benchmarks.runner import describe_artifact, run_benchmark
    from benchmarks.stats import variant_rows

    recipe, run_dir = ctx.recipe, ctx.run_dir
    ctx.models.release()  # the engines run in child processes; free the parent's copy for them
    roles = variants(recipe)
    folder = {**FOLDERS, "dense": "artifact" if recipe.prune.method == "none" else FOLDERS["dense"]}
    mine = [describe_artifact(run_dir / folder[role], key=key, name=key) for role, key in roles.items()]
    out = run_dir / "benchmark"
    results = run_benchmark([*ctx.prepared["benchmark"], *mine], recipe.benchmark.settings(), out, progress=ctx.progress,
                            command=f"pipeline run {recipe.name} (benchmark stage)")
    files = write_report(results, out)
    keys = {roles[r] for r in roles if r != "dense" or recipe.prune.method == "none"}
    cells = [c for c in results["summary"]["cells"] if c["artifact"] in keys]
    write_json_atomic(run_dir / "benchmark.json", {
        "path": str(out), "files": files, "partial": results["partial"], "failures": len(results["failures"]),
        "machine": results["machine"]["cpu"], "cores": results["machine"]["cores"],
        "settings": results["settings"],
        "tokens_per_s": {f"{c['engine']} {c['mode']}" + (" int8" if c["artifact"] != recipe.name else ""):
                         c["tokens_per_s"]["median"] for c in cells},
        "speedups": [x for x in results["summary"]["speedups"] if x["artifact"] in keys],
        "variants": roles, "by_variant": variant_rows(results, roles)})


def summary(recipe, run_dir: Path) -> dict:
    return {"benchmark": read_json(run_dir / "benchmark.json", "re-run the recipe with --from benchmark")}


def report(summary: dict) -> list[str]:
    bench = summary["benchmark"]
    lines = ["## Throughput", "", "Median tokens/s of this artifact (batch 1, float32; details, every "
             "measurement and plots in `benchmark/report.md`):", "", "| engine, mode | tokens/s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in bench["tokens_per_s"].items()]
    for x in bench["speedups"]:
        lines.append(f"- {x['engine']} {x['mode']} vs {x['vs']} on `{x['dense']}` (dense): **{x['ratio']:.2f}x**")
    if bench.get("partial"):
        lines.append(f"- partial: {bench['partial']}")
    if bench.get("failures"):
        lines.append(f"- {bench['failures']} measurement(s) failed; see `benchmark/report.md`")
    return lines


def estimate(shapes: Shapes, recipe) -> tuple[int, int]:
    """Each engine loads one graph in its own process."""
    return int(1.5 * shapes.params * 4) + BASE, 0


STAGE = Stage(name="benchmark", about="tokens/s in each engine",
              sections=("name", "model", "calibration", "prune", "export", "quantize", "evaluation", "benchmark"),
              outputs=("benchmark", "benchmark.json"), reads=("export", "export_dense", "quantize"),
              applies=lambda r: r.benchmark.enabled, check=check, estimate=estimate, run=run, summary=summary,
              report=report)
