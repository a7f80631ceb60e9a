"""The paper's CPU table at full depth: 32-layer LLaMA-2-7B-shaped DaSS artifacts measured in DeepSparse,
dense fitted from depths 4, 8 and 12 where the 27 GB float32 dense model does not fit in RAM.

Every artifact is made by the tool itself: a checkpoint with LLaMA-2-7B's shapes and random float16 weights
(scripts/shapes.py), then ``pipeline run recipes/llama2-7b-shaped-70pct.yaml`` with overrides (streaming
prune, bounded-memory export of the DeepSparse graph), so each run's summary.json has the per-stage wall time
and peak RSS. Depths are benchmarked one at a time (dense, 50% and 70% of one depth interleaved in one run)
because the artifacts of all depths do not fit on the disk at once; ``--drop`` deletes a depth's artifacts
after its benchmark.

    python -m scripts.full_depth build runs/full --depth 4 --names dense dass-50 dass-70
    python -m scripts.full_depth bench runs/full --depth 4 --drop          # results/depth4-dense+.../results.json
    ... the same for 8 and 12; for 32: --names dass-70 (then dass-50) ...
    python -m scripts.full_depth report runs/full benchmarks/results/full_depth   # table, JSON, plot

Calibration is short (4 x 128 tokens by default): it decides which weights go, not how many, and speed
depends on how many (the paper's equal speed at equal sparsity, checked in scripts/paper_table.py).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

from benchmarks.paper import PAPER as PAPER_TABLE

RECIPE = "recipes/llama2-7b-shaped-70pct.yaml"
#: name -> recipe overrides of the prune section
MODELS = {"dense": ["prune.method=none"], "dass-50": ["prune.method=dass", "prune.sparsity=0.5"],
          "dass-70": ["prune.method=dass", "prune.sparsity=0.7"],
          # per-layer allocations at the same overall 70% (prune.allocation; pruned in memory, not streamed)
          "dass-70-owl": ["prune.method=dass", "prune.sparsity=0.7", "prune.allocation=owl"],
          "dass-70-sensitivity": ["prune.method=dass", "prune.sparsity=0.7", "prune.allocation=sensitivity"]}
#: the paper's decode tokens/s by our names for its rows (the figures live in benchmarks/paper.py)
PAPER = {name: PAPER_TABLE["tokens_per_s"][key] for name, key in (("dense", None), ("dass-50", 0.5), ("dass-70", 0.7))}


def _checkpoint(out: Path, depth: int) -> Path:
    from scripts.shapes import write_checkpoint

    folder = out / f"checkpoint-depth{depth}"
    if not (folder / "model.safetensors.index.json").is_file():
        log.info("writing the %d-layer checkpoint to %s", depth, folder)
        write_checkpoint(folder, depth)
    return folder


def run_folder(out: Path, depth: int, name: str) -> Path:
    return out / "runs" / f"depth{depth}-{name}"


def pipeline_command(checkpoint: Path, run: Path, name: str, calib: tuple[int, int]) -> list[str]:
    overrides = [f"model.source={checkpoint}", f"calibration.num_samples={calib[0]}",
                 f"calibration.seq_len={calib[1]}", "export.enabled=true", "export.smoke_test=false",
                 "export.engines=[deepsparse]", *MODELS[name]]
    return [sys.executable, "-m", "pipeline.cli", "run", RECIPE, *[a for o in overrides for a in ("--set", o)],
            "--output-dir", str(run), "--no-progress"]


def build(out: Path, depth: int, names: list[str], calib: tuple[int, int], keep_checkpoint: bool) -> None:
    checkpoint = _checkpoint(out, depth)
    for name in names:
        run = run_folder(out, depth, name)
        command = pipeline_command(checkpoint, run, name, calib)
        log.info("%s", " ".join(command))
        subprocess.run(command, check=True)
        shutil.rmtree(run / "pruned", ignore_errors=True)  # the artifact holds the weights; the disk is short
        link = out / f"depth{depth}" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((run / "artifact").resolve(), target_is_directory=True)
    if not keep_checkpoint:
        shutil.rmtree(checkpoint)


def bench(out: Path, depth: int, settings, drop: bool, command: str) -> None:
    from benchmarks.runner import describe_artifact, run_benchmark
    from pipeline.common.outputs import write_json_atomic
    from pipeline.common.peak_memory import PeakMemory

    arts = sorted((out / f"depth{depth}").iterdir())
    if not arts:
        raise SystemExit(f"no artifacts under {out / f'depth{depth}'}: run build first")
    artifacts = [describe_artifact(a, key=f"depth{depth}/{a.name}", name=a.name) for a in arts]
    target = out / "results" / f"depth{depth}-{'+'.join(a.name for a in arts)}"  # 32 layers: one run per model
    target.mkdir(parents=True, exist_ok=True)
    with PeakMemory(interval=0.5) as memory:
        results = run_benchmark(artifacts, settings, target, command=command)
    results["engine_peak_memory"] = {"rss_bytes": memory.children_peak, "anonymous_bytes": memory.children_anon_peak,
                                     "what": "largest sum over the benchmark's child processes, sampled every 0.5 s"}
    write_json_atomic(target / "results.json", results)
    for a in arts:
        run = run_folder(out, depth, a.name)
        for kept in ("summary.json", "report.md", "pipeline.log"):
            if (run / kept).is_file():
                shutil.copy2(run / kept, target / f"{a.name}_{kept}")
        if drop:
            shutil.rmtree(a.resolve())
            a.unlink()


def main() -> None:
    from benchmarks.settings import add_settings_arguments, settings_from_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="checkpoint + pipeline run (prune, export) per model at one depth")
    b.add_argument("out", type=Path)
    b.add_argument("--depth", type=int, required=True)
    b.add_argument("--names", nargs="+", choices=list(MODELS), default=list(MODELS))
    b.add_argument("--calib", type=int, nargs=2, default=(4, 128), metavar=("SAMPLES", "TOKENS"))
    b.add_argument("--keep-checkpoint", action="store_true")
    r = sub.add_parser("bench", help="benchmark one depth's artifacts interleaved")
    r.add_argument("out", type=Path)
    r.add_argument("--depth", type=int, required=True)
    r.add_argument("--drop", action="store_true", help="delete the artifacts afterwards (keeping their run records)")
    add_settings_arguments(r, engines=["deepsparse"], modes=["decode"])
    t = sub.add_parser("report", help="one table, JSON and plot from every depth's results")
    t.add_argument("out", type=Path)
    t.add_argument("dest", type=Path)
    t.add_argument("--dense-run", type=Path, default=None,
                   help="a benchmark folder (scripts.paper_table run) of dense artifacts at several depths, "
                        "interleaved: the dense fit comes from it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.what == "build":
        build(args.out, args.depth, args.names, tuple(args.calib), args.keep_checkpoint)
    elif args.what == "bench":
        bench(args.out, args.depth, settings_from_arguments(args), args.drop,
              "python -m scripts.full_depth " + " ".join(sys.argv[1:]))
    else:
        from scripts.full_depth_report import write_full_depth_report

        made = write_full_depth_report(args.out / "results", args.dest, args.dense_run)
        print(f"wrote {', '.join(made)} to {args.dest}")


if __name__ == "__main__":
    main()
