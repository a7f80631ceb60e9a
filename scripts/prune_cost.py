"""Pruning cost on LLaMA-2-7B shapes, with random weights (no download needed).

Two measurements, each printed as figures and ratios from one run:

``layer``: time to prune one LLaMA-2-7B-shaped decoder layer (hidden 4096, intermediate 11008,
32 heads; attention + MLP in scope) with DaSS, Wanda and magnitude (and SparseGPT with
``--methods dass,sparsegpt``), in float32 on the CPU.
Reported twice: the whole per-layer step (calibration forwards + hooks + scoring + selection +
propagation; magnitude needs no forwards) and the scoring + selection alone. Target: DaSS / Wanda <= 1.2.

``memory``: peak resident memory (RSS) of a full 32-layer (``--layers``) LLaMA-2-7B-shaped prune (``--method``), model held in
float16 as the llama2-7b recipes do, run in a child process so the figure is that prune's alone.
Calibrating 128 x 2048 tokens through 7B on 2 CPU cores would take many hours, so the measured
run uses fewer samples at the full 2048-token length and the report adds what the 128-sample
activation buffer would add (it is one float16 [samples, 2048, 4096] tensor). Target: <= 20 GiB.

    python -m scripts.prune_cost layer
    python -m scripts.prune_cost memory --samples 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from scripts.shapes import llama2_7b_config, random_model
from benchmarks.runner import cpu_name
from pipeline.core.models import decoder_layers, layer_projections
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.sparsity import SparsitySpec
from pipeline.core.prune.base import ReconstructingMethod
from pipeline.core.prune.sequential import InputStats, capture_layer_inputs, input_groups, prune_model

GiB = 1024**3


def bench_layer(args) -> dict:
    model = random_model(llama2_7b_config(1, vocab=1000), torch.float32)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 1000, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(1))
    # statistics once, for the scoring-only timing
    inputs = capture_layer_inputs(model, ids, progress=False)
    layer = decoder_layers(model)[0]
    projections = layer_projections(layer)
    methods = args.methods.split(",")
    groups = input_groups(layer, projections, inputs.hidden[0:1], inputs.kwargs)
    stats = {}
    for kind in {make_method(m).statistic for m in methods}:
        hooks = InputStats(layer, groups, kind)
        with torch.no_grad():
            for s in range(args.samples):
                layer(inputs.hidden[s : s + 1], **inputs.kwargs)
        hooks.remove()
        stats[kind] = hooks.stats()
    results = {}
    for pattern in args.sparsities.split(","):
        spec = SparsitySpec.parse(pattern)
        for name in methods:
            method = make_method(name)
            sums = stats[method.statistic]
            whole, scoring = [], []
            for _ in range(args.repeats):
                model.load_state_dict(dense)
                t0 = time.perf_counter()
                prune_model(model, method, spec, ids, scope="attention+mlp", progress=False)
                whole.append(time.perf_counter() - t0)
                model.load_state_dict(dense)
                t0 = time.perf_counter()
                for group in groups:
                    prepared = (method.prepare(sums[group[0].role].clone(), group[0].path)
                                if isinstance(method, ReconstructingMethod) else None)
                    for p in group:
                        w = p.weight(layer)
                        if prepared is not None:
                            method.prune(p.role, w, prepared, spec)
                        else:
                            select_mask(method.score(p.role, w, sums), spec, method.axis(p.role))
                scoring.append(time.perf_counter() - t0)
            results[f"{name} {pattern}"] = {"whole_s": min(whole), "scoring_s": min(scoring)}
    return results


def bench_memory(args) -> dict:
    """Runs in the child: the full-depth prune, then reports its own peak RSS."""
    t0 = time.time()
    model = random_model(llama2_7b_config(args.layers), torch.float16)
    built = time.time() - t0
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ids = torch.randint(0, 32000, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(1))
    t0 = time.time()
    prune_model(model, make_method(args.method), SparsitySpec.parse(0.7), ids, scope="attention+mlp", progress=True)
    return {"layers": args.layers, "method": args.method, "samples": args.samples, "seq_len": args.seq_len, "build_s": built,
            "prune_s": time.time() - t0, "peak_rss_after_build": rss_model,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    layer = sub.add_parser("layer", help="time to prune one 7B-shaped layer, per method")
    layer.add_argument("--samples", type=int, default=8)
    layer.add_argument("--seq-len", type=int, default=512)
    layer.add_argument("--sparsities", default="0.5,2:4")
    layer.add_argument("--repeats", type=int, default=3)
    layer.add_argument("--methods", default="dass,wanda,magnitude", help="comma-separated; sparsegpt too")
    memory = sub.add_parser("memory", help="peak RSS of a full 7B-shaped prune (child process)")
    memory.add_argument("--samples", type=int, default=2)
    memory.add_argument("--seq-len", type=int, default=2048)
    memory.add_argument("--layers", type=int, default=32)
    memory.add_argument("--target-samples", type=int, default=128)
    memory.add_argument("--method", default="dass", help="dass, wanda, sparsegpt or magnitude")
    memory.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    header = f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"

    if args.what == "layer":
        results = bench_layer(args)
        print(header)
        print(f"one LLaMA-2-7B-shaped layer, attention+MLP, float32, {args.samples} x {args.seq_len} calibration tokens, "
              f"best of {args.repeats}")
        print("| method | whole layer step (s) | scoring + selection (s) |")
        print("|---|---|---|")
        for key, r in results.items():
            print(f"| {key} | {r['whole_s']:.2f} | {r['scoring_s']:.3f} |")
        for pattern in args.sparsities.split(","):
            d = results.get(f"dass {pattern}")
            for other, note in (("wanda", " (target <= 1.2)"), ("sparsegpt", "")):
                o = results.get(f"{other} {pattern}")
                if d and o:
                    print(f"{other} / DaSS at {pattern}: whole step {o['whole_s'] / d['whole_s']:.2f}x, "
                          f"pruning alone {o['scoring_s'] / d['scoring_s']:.2f}x{note}")
        return

    if args.child:
        print(json.dumps(bench_memory(args)))
        return
    cmd = [sys.executable, "-m", "scripts.prune_cost", "memory", "--child", "--samples", str(args.samples),
           "--seq-len", str(args.seq_len), "--layers", str(args.layers), "--method", args.method]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"the measured prune failed with exit code {proc.returncode} (killed for memory if -9)")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = (args.target_samples - r["samples"]) * r["seq_len"] * 4096 * 2  # float16 activation buffer
    print(header)
    print(f"full LLaMA-2-7B-shaped prune ({r['layers']} layers, float16 model, {r['method']} 70% attention+MLP), "
          f"{r['samples']} x {r['seq_len']} calibration tokens: {r['prune_s']:.0f} s")
    print(f"peak RSS after building the model: {r['peak_rss_after_build'] / GiB:.2f} GiB")
    print(f"peak RSS measured:                 {r['peak_rss'] / GiB:.2f} GiB")
    print(f"+ activation buffer for {args.target_samples} x {r['seq_len']} (float16): {extra / GiB:.2f} GiB")
    print(f"projected peak at {args.target_samples} x {r['seq_len']}: {(r['peak_rss'] + extra) / GiB:.2f} GiB (target <= 20)")


if __name__ == "__main__":
    main()
