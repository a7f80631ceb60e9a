"""Block reconstruction's learning rate tried on the first decoder layers of a real model, in one process: each
layer is pruned (method + obs, as the sequential loop does), then trained from that same start at every learning
rate; the relative output error on the calibration windows before and after each is printed and written.

    python -m scripts.block_layer_tuning --source fetched:qwen2.5-coder-1.5b --layers 3 \
        --lrs 1e-3 3e-4 1e-4 3e-5 1e-5 --out benchmarks/results/qwen2.5-coder-1.5b/recovery/block_lr.json

A few minutes where a whole run takes most of an hour: how prune.block.lr is chosen for a model before its run.
The next layer gets the outputs of this one pruned with obs only (no training), so every rate sees the same inputs.
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
from pipeline.core.data import calibration_windows
from pipeline.core.models import decoder_layers, load_model
from pipeline.core.prune.block_reconstruct import reconstruct_block
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.options import BlockOptions
from pipeline.core.prune.reconstruct import with_reconstruction
from pipeline.core.prune.sequential import _LayerStep, capture_layer_inputs, plan_projections
from pipeline.core.prune.sparsity import SparsitySpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--gguf-file")
    parser.add_argument("--method", default="dass_outlier")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=BlockOptions().steps)
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model, tokenizer = load_model(args.source, gguf_file=args.gguf_file, dtype="float32")
    ids = calibration_windows(tokenizer, "embedded", args.samples, args.seq_len)
    spec = SparsitySpec.parse(args.sparsity)
    method = with_reconstruction(make_method(args.method), "obs")
    plan = plan_projections(model, make_method(args.method), spec, "mlp")
    inputs = capture_layer_inputs(model, ids, progress=False)
    rows = []
    for index, layer in list(enumerate(decoder_layers(model)))[: args.layers]:
        step = _LayerStep(layer, inputs, inputs.kwargs, torch.device("cpu"), method.statistic, one_shot=False)
        targets = step.outputs()
        masks = {}
        for pruned in method.prune_layer(step, plan[index], spec, f"layers.{index}"):
            pruned.proj.weight(layer).data.copy_(pruned.weight)
            masks[pruned.proj.path] = pruned.mask
        start = copy.deepcopy(layer.state_dict())
        for lr in args.lrs:
            layer.load_state_dict(start)
            began = time.perf_counter()
            fit = reconstruct_block(layer, masks, inputs.hidden, targets, inputs.kwargs,
                                    BlockOptions(lr=lr, steps=args.steps), torch.device("cpu"), progress=False)
            row = {"layer": index, "lr": lr, "error_before": fit.loss_before,
                   "error_after": fit.trained_error if fit.trained_error is not None else fit.loss_after,
                   "seconds": time.perf_counter() - began}
            rows.append(row)
            print(json.dumps(row), flush=True)
        layer.load_state_dict(start)
        step.forward(update=True)  # obs-pruned outputs feed the next layer
    write_json_atomic(args.out, {"source": args.source, "method": args.method, "sparsity": args.sparsity,
                                 "samples": args.samples, "seq_len": args.seq_len, "steps": args.steps, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
