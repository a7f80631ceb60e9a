"""Block reconstruction's settings tried on the first decoder layers of a real model, in one process: each layer is
pruned (method + obs, as the sequential loop does), then trained from that same start with every setting; the
relative output error before and after each, on the calibration windows and on held-out windows of the same text
(never used to prune or train), is printed and written.

    python -m scripts.block_layer_tuning --source fetched:qwen2.5-coder-1.5b --layers 3 \
        --lrs 1e-3 3e-4 1e-4 3e-5 1e-5 --out benchmarks/results/qwen2.5-coder-1.5b/recovery/block_lr.json
    python -m scripts.block_layer_tuning --source fetched:qwen2.5-coder-1.5b --layers 6 --tune-from 4 \
        --configs 16:1e-4:constant 48:2e-4:cosine --held-out 8 --out ...

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
from pipeline.core.prune.block_reconstruct import reconstruct_block, relative_error
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
    parser.add_argument("--lrs", type=float, nargs="+", default=[], help="constant rates, --steps steps each")
    parser.add_argument("--configs", nargs="+", default=[], help="steps:lr:schedule, e.g. 48:2e-4:cosine")
    parser.add_argument("--tune-from", type=int, default=0, help="layers below this one are pruned with obs only")
    parser.add_argument("--held-out", type=int, default=0, help="windows kept apart to measure the error on")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    configs = [BlockOptions(lr=lr, steps=args.steps) for lr in args.lrs]
    for text in args.configs:
        steps, lr, schedule = text.split(":")
        configs.append(BlockOptions(steps=int(steps), lr=float(lr), schedule=schedule))
    if not configs:
        parser.error("give --lrs or --configs")
    logging.basicConfig(level=logging.WARNING)
    model, tokenizer = load_model(args.source, gguf_file=args.gguf_file, dtype="float32")
    ids = calibration_windows(tokenizer, "embedded", args.samples + args.held_out, args.seq_len)
    ids, held_ids = ids[: args.samples], ids[args.samples :]
    spec = SparsitySpec.parse(args.sparsity)
    method = with_reconstruction(make_method(args.method), "obs")
    plan = plan_projections(model, make_method(args.method), spec, "mlp")
    inputs = capture_layer_inputs(model, ids, progress=False)
    held = capture_layer_inputs(model, held_ids, progress=False) if args.held_out else None
    rows, cpu = [], torch.device("cpu")
    for index, layer in list(enumerate(decoder_layers(model)))[: args.layers]:
        step = _LayerStep(layer, inputs, inputs.kwargs, cpu, method.statistic, one_shot=False)
        held_step = _LayerStep(layer, held, held.kwargs, cpu, None, one_shot=False) if held else None
        targets = step.outputs()
        held_targets = held_step.outputs() if held_step else None
        masks = {}
        for pruned in method.prune_layer(step, plan[index], spec, f"layers.{index}"):
            pruned.proj.weight(layer).data.copy_(pruned.weight)
            masks[pruned.proj.path] = pruned.mask
        start = copy.deepcopy(layer.state_dict())
        held_before = relative_error(layer, held.hidden, held_targets, held.kwargs, cpu) if held else None
        for options in configs if index >= args.tune_from else []:
            layer.load_state_dict(start)
            began = time.perf_counter()
            fit = reconstruct_block(layer, masks, inputs.hidden, targets, inputs.kwargs, options,
                                    cpu, progress=False)
            row = {"layer": index, "lr": options.lr, "steps": options.steps, "schedule": options.schedule,
                   "error_before": fit.loss_before,
                   "error_after": fit.trained_error if fit.trained_error is not None else fit.loss_after,
                   "seconds": time.perf_counter() - began}
            if held_step:
                row.update(held_before=held_before,
                           held_after=relative_error(layer, held.hidden, held_targets, held.kwargs, cpu),
                           kept=fit.trained_error is None)
            rows.append(row)
            print(json.dumps(row), flush=True)
        layer.load_state_dict(start)
        step.forward(update=True)  # obs-pruned outputs feed the next layer
        if held_step:
            held_step.forward(update=True)
    write_json_atomic(args.out, {"source": args.source, "method": args.method, "sparsity": args.sparsity,
                                 "samples": args.samples, "held_out": args.held_out, "seq_len": args.seq_len,
                                 "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
