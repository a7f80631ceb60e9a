"""benchmark: tokens/s of this run's artifacts (dense, pruned, INT8), interleaved with each other and with the
compared runs' (benchmarks/runner.py);
RUN/benchmark/ (results.json, report.md, plots) and RUN/benchmark.json."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.common.errors import PipelineError
from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.resources import BASE, Shapes
from pipeline.stages.stage import Context, Stage

log = logging.getLogger(__name__)


def check(ctx: Context) -> list[dict]:
    """The engines and threads exist here; the compared artifacts exist and their names differ from ours."""
    from benchmarks.engines import asks_ggufs
    from benchmarks.runner import check_machine

    recipe = ctx.recipe
    check_machine(recipe.benchmark.settings())
    if asks_ggufs(recipe.benchmark.engines):  # the GGUF writer refuses an architecture before any weight loads
        from export.gguf_writer import check_gguf_config

        check_gguf_config(ctx.models.config(), recipe.benchmark.gguf_types)
    return compared_artifacts(recipe)[0]


def compared_artifacts(recipe, outline_only: bool = False) -> tuple[list[dict], list[str]]:
    """The artifacts of ``benchmark.compare`` described, and those not there: no two benchmarked artifacts share a
    name, and each graph measured holds the benchmark's sequence length. The run needs each there, described in
    full (benchmarks/runner.py: files checked, graphs parsed). ``outline_only`` (``pipeline validate``): each read
    from its JSON files alone, and one not there yet (a run a later recipe makes) returned as absent."""
    from benchmarks.artifact_folders import outline
    from benchmarks.graph_limits import check_lengths
    from benchmarks.runner import find_artifact

    others, absent = [], []
    for entry in recipe.benchmark.compared_folders():
        if not outline_only:
            others.append(find_artifact(entry, "benchmark.compare:"))
        elif (found := outline(entry)) is not None:
            others.append(found)
        else:
            absent.append(str(entry))
    names = [a["key"] for a in others] + list(variants(recipe).values())
    if len(set(names)) != len(names):
        raise PipelineError(f"benchmark.compare: two benchmarked artifacts would share a name in {names}",
                            "compare runs whose folder names differ from each other and from this recipe's name")
    check_lengths(others, recipe.benchmark.settings())  # this run's own graphs: export.max_sequence_length (recipe)
    return others, absent


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
GGUF = "gguf"  # RUN/gguf/TYPE: the dense model as GGUF for the llamacpp engine


def write_ggufs(ctx: Context) -> list[dict]:
    """The dense model as GGUF of each ``benchmark.gguf_types`` (RUN/gguf/TYPE), with its perplexity in llama.cpp
    by the evaluation section's protocol when evaluation is enabled; described for the runner."""
    from benchmarks.llamacpp import describe_gguf, gguf_perplexity, record_perplexity, write_ggufs as write
    from pipeline.core.models import resolve_source

    recipe = ctx.recipe
    m, ev = recipe.model, recipe.evaluation
    model, tokenizer = ctx.models.dense()
    source_gguf = Path(resolve_source(m.source)) / m.gguf_file if m.gguf_file else None
    folders = write(model, tokenizer, ctx.run_dir / GGUF, recipe.benchmark.gguf_types, f"{recipe.name}-dense",
                    source=m.source, source_gguf=source_gguf)
    if ev.enabled:
        tokens = ctx.evaluation_ids()
        bos = ctx.bos_token_id("evaluation", tokenizer)
    ctx.models.release()
    described = []
    for folder in folders:
        if ev.enabled:
            ppl = gguf_perplexity(folder, tokens, ev.context_length, ev.max_windows, bos, recipe.benchmark.threads)
            record_perplexity(folder, {"dataset": ev.dataset, **ppl})
            log.info("llama.cpp perplexity of the dense GGUF %s on %s: %.3f", folder.name, ev.dataset,
                     ppl["perplexity"])
        described.append(describe_gguf(folder, key=f"{recipe.name}-dense-{folder.name}"))
    return described


def _read(run_dir: Path, name: str) -> dict:
    return read_json(run_dir / name, "") if (run_dir / name).is_file() else {}


def recorded_perplexity(artifact: Path) -> dict | None:
    """The reference perplexity a run recorded for one of its artifact folders (RUN/artifact, artifact-dense,
    artifact-int8): the INT8 graph's and the float graph's as the quantize stage measured them in ONNX Runtime, else
    the PyTorch figure of the model the float graph was exported from; None when the run recorded none."""
    graphs = _read(Path(artifact).parent, "quantize.json").get("perplexity") or {}
    which = {"artifact-int8": "int8", "artifact": "float"}.get(Path(artifact).name)
    if which in graphs:  # run_in: the runtime (runs before it was recorded ran every graph in ONNX Runtime)
        return {"dataset": graphs.get("dataset"), "measured_in": graphs.get("run_in", "onnxruntime"), **graphs[which]}
    return pytorch_perplexity(artifact)


def pytorch_perplexity(artifact: Path) -> dict | None:
    """The PyTorch figure of the model a run's float artifact was exported from (the evaluate stage's, or the
    baseline's for the dense one); None for an INT8 copy or where the run recorded none."""
    from pipeline.stages import baseline, evaluate

    run_dir, kind = Path(artifact).parent, Path(artifact).name
    pruned, dense = _read(run_dir, evaluate.OUTPUT), _read(run_dir, baseline.OUTPUT)
    for recorded, key in ((pruned, "pruned"), (dense, "dense")):  # a dense-only run's artifact/ is the dense model
        if key in recorded and (kind, key) in (("artifact", "pruned"), ("artifact", "dense"), ("artifact-dense", "dense")):
            return {"dataset": recorded.get("dataset"), "measured_in": "pytorch", **recorded[key]}
    return None


def with_perplexity(described: dict) -> dict:
    """The artifact's reference perplexity and, per engine, the one that engine computed (the quantize stage's, and
    PyTorch's of the model a float artifact was exported from)."""
    from pipeline.stages.quantize import engine_perplexities

    if "gguf_type" in described:
        return described
    path = Path(described["path"])
    torch_figure = pytorch_perplexity(path)
    by_engine = {**({"pytorch": torch_figure} if torch_figure else {}), **engine_perplexities(path)}
    return {**described, "perplexity": described.get("perplexity") or recorded_perplexity(path),
            "perplexity_by_engine": described.get("perplexity_by_engine") or by_engine}


def run(ctx: Context) -> None:
    """Benchmark this run's artifacts (the dense one first) interleaved with the compared ones;
    RUN/benchmark/{results.json, report.md, *.png} and RUN/benchmark.json."""
    from benchmarks.engines import asks_ggufs
    from benchmarks.report import write_report
    from benchmarks.llamacpp import describe_gguf
    from benchmarks.runner import describe_artifact, run_benchmark
    from benchmarks.stats import variant_rows

    recipe, run_dir = ctx.recipe, ctx.run_dir
    ggufs = write_ggufs(ctx) if asks_ggufs(recipe.benchmark.engines) else []
    ctx.models.release()  # the engines run in child processes; free the parent's copy for them
    roles = variants(recipe)
    folder = {**FOLDERS, "dense": "artifact" if recipe.prune.method == "none" else FOLDERS["dense"]}
    mine = [describe_artifact(run_dir / folder[role], key=key, name=key) for role, key in roles.items()]
    out = run_dir / "benchmark"
    artifacts = [with_perplexity(a) for a in [*ctx.prepared["benchmark"], *mine]]
    results = run_benchmark([*artifacts, *ggufs], recipe.benchmark.settings(), out, progress=ctx.progress,
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
        "variants": roles, "by_variant": variant_rows(results, roles),
        "llamacpp": [{"gguf_type": g["gguf_type"], "bytes": g["bytes"],
                      "perplexity": (describe_gguf(Path(g["path"])).get("perplexity") or {}).get("perplexity"),
                      "tokens_per_s": {c["mode"]: c["tokens_per_s"]["median"] for c in results["summary"]["cells"]
                                       if c["artifact"] == g["key"]}} for g in ggufs],
        "vs_llamacpp": [x for x in results["summary"]["vs_llamacpp"] if x["artifact"] in set(roles.values())]})


def summary(recipe, run_dir: Path) -> dict:
    return {"benchmark": read_json(run_dir / "benchmark.json", "re-run the recipe with --from benchmark")}


def report(summary: dict) -> list[str]:
    from benchmarks.verdict import MIN_ROUNDS, entry_verdict

    bench = summary["benchmark"]
    lines = ["## Throughput", "", "Median tokens/s of this artifact (batch 1, float32; details, every "
             "measurement and plots in `benchmark/report.md`):", "", "| engine, mode | tokens/s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in bench["tokens_per_s"].items()]
    for x in bench["speedups"]:  # which artifact: the pruned float one, or its INT8 copy
        lines.append(f"- {x['engine']} {x['mode']}, `{x['artifact']}` vs {x['vs']} on `{x['dense']}` (dense): "
                     f"**{x['ratio']:.2f}x**, {entry_verdict(x)}")
    for g in bench.get("llamacpp", []):
        ppl = f"perplexity {g['perplexity']:.3f}" if g["perplexity"] else "perplexity not measured"
        speed = ", ".join(f"{mode} {v:.2f} tokens/s" for mode, v in g["tokens_per_s"].items())
        lines.append(f"- llama.cpp, the dense model as GGUF {g['gguf_type']} ({g['bytes'] / 1e6:.0f} MB): {speed}; {ppl}")
    for x in bench.get("vs_llamacpp", []):
        lines.append(f"- {x['engine']} {x['mode']} `{x['artifact']}` vs llama.cpp GGUF {x['gguf_type']}: "
                     f"**{x['ratio']:.2f}x**, {entry_verdict(x)}")
    if bench["speedups"] or bench.get("vs_llamacpp"):
        lines.append(f"- ratios are of medians; faster / slower: every one of at least {MIN_ROUNDS} interleaved "
                     "rounds above / below 1, else within noise (benchmark/report.md states the rule)")
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
              outputs=("benchmark", "benchmark.json", GGUF), reads=("export", "export_dense", "quantize"),
              applies=lambda r: r.benchmark.enabled, check=check, estimate=estimate, run=run, summary=summary,
              report=report)
