"""Perplexity of INT8 copies of a finished run's float artifact, one per quantization scheme, beside the
float graph's: the cost in accuracy of each scheme, measured on the graphs themselves (ONNX Runtime,
export/onnx_perplexity.py). The defaults are recipes/smollm2-embedded.yaml's quantize and evaluation
settings (16 x 128 calibration windows, seed 0; 512-token evaluation windows of the embedded text).

    python -m scripts.int8_accuracy runs/embedded --schemes w8a8-static w8a8-static-all \\
        --out benchmarks/results/int8_embedded_accuracy.json

Each INT8 copy is written to RUN/int8-accuracy/SCHEME and removed afterwards (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import sys
from pathlib import Path


def measure(run_dir: Path, schemes: list[str], strengths: list[float | None], graph: str, keep: bool,
            lm_heads: tuple[bool, ...] = (False,), dataset: str = "embedded", num_samples: int = 16, seq_len: int = 128, seed: int = 0,
            context_length: int = 512, max_windows: int | None = None, fractions: tuple = (None,),
            split_smoothing: tuple[bool, ...] = (True,)) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from export.onnx_perplexity import artifact_perplexity
    from export.quantize import quantize_artifact
    from export.schemes import check_scheme
    from pipeline.core.data import bos_id, calibration_windows, evaluation_tokens
    from pipeline.core.window_protocol import bos_per_window

    source = run_dir / "artifact"
    tokenizer = AutoTokenizer.from_pretrained(source / graph)
    model_type = getattr(AutoConfig.from_pretrained(source / graph), "model_type", None)
    bos = bos_id(tokenizer) if bos_per_window("auto", model_type) else None  # the recipes' default protocol
    windows = calibration_windows(tokenizer, dataset, num_samples, seq_len, seed, None, bos).numpy()
    tokens = evaluation_tokens(tokenizer, dataset, None, bos_per_window=bos is not None)
    check = tokenizer("The quick brown fox", return_tensors="np").input_ids

    def ppl(folder):
        return artifact_perplexity(folder, tokens, context_length, max_windows, graph, False, bos)

    result = {"run": str(run_dir), "graph": graph, "dataset": dataset,
              "calibration_windows": list(windows.shape), "float": ppl(source), "int8": []}
    base = result["float"]["perplexity"]
    logging.info("float artifact: perplexity %.3f", base)
    for scheme, strength, lm_head, fraction, smooth_split in itertools.product(schemes, strengths, lm_heads,
                                                                              fractions, split_smoothing):
        if not check_scheme(scheme).outlier_fraction:  # the split's settings mean nothing to it: one row
            if (fraction, smooth_split) != (fractions[0], split_smoothing[0]):
                continue
            fraction, smooth_split = None, True
        target = run_dir / "int8-accuracy" / (f"{scheme}-s{strength}{'-head' if lm_head else ''}"
                                              f"{f'-f{fraction}' if fraction else ''}{'' if smooth_split else '-rough'}")
        if target.exists():
            shutil.rmtree(target)
        manifest = quantize_artifact(source, target, scheme, windows, check, smoothing_strength=strength,
                                     lm_head=lm_head, outlier_fraction=fraction, smooth_split=smooth_split)
        got = ppl(target)
        info = manifest["engines"][graph]
        row = {"scheme": scheme, "smoothing_strength": strength, "lm_head": lm_head,
               "outlier_fraction": manifest["quantization"]["outlier_fraction"], "outlier_smoothing": smooth_split,
               "quantized_matmuls": info["quantized_matmuls"], "perplexity": got["perplexity"],
               "vs_float": got["perplexity"] / base - 1, "windows": got["windows"],
               "bytes": sum(f["bytes"] for f in manifest["files"].values())}
        result["int8"].append(row)
        logging.info("%s, smoothing %s, LM head %s, split %s%s: perplexity %.3f (%+.1f%%)", scheme, strength,
                     "INT8" if lm_head else "float", row["outlier_fraction"], "" if smooth_split else " unsmoothed",
                     row["perplexity"], 100 * row["vs_float"])
        if not keep:
            shutil.rmtree(target)
    return result


def main() -> None:
    from pipeline.common.outputs import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished run (with artifact/)")
    parser.add_argument("--schemes", nargs="+", default=["w8a8-static", "w8a8-static-all"])
    parser.add_argument("--smoothing", nargs="+", default=["0.5"], help="SmoothQuant strengths; 'none': off")
    parser.add_argument("--lm-head", nargs="+", choices=["float", "int8"], default=["float"],
                        help="the LM head float32 and/or INT8 (quantize.lm_head); each is a row")
    parser.add_argument("--outlier-fractions", nargs="+", type=float, default=None,
                        help="w8a8-static-outliers: fractions of down_proj's input channels split off (default: 1%%)")
    parser.add_argument("--outlier-smoothing", nargs="+", choices=["on", "off"], default=["on"],
                        help="w8a8-static-outliers: SmoothQuant on down_proj's input before the split, and/or not")
    parser.add_argument("--graph", choices=["onnxruntime", "deepsparse"], default="onnxruntime")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep", action="store_true", help="keep the INT8 copies")
    parser.add_argument("--max-windows", type=int, default=None, help="evaluation windows (default: all)")
    parser.add_argument("--num-samples", type=int, default=16,
                        help="calibration windows for the activation ranges (quantize.num_samples)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration window (quantize.seq_len)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    strengths = [None if s.lower() == "none" else float(s) for s in args.smoothing]
    result = measure(args.run_dir, args.schemes, strengths, args.graph, args.keep,
                     tuple(head == "int8" for head in args.lm_head), max_windows=args.max_windows,
                     fractions=tuple(args.outlier_fractions or [None]),
                     split_smoothing=tuple(s == "on" for s in args.outlier_smoothing), num_samples=args.num_samples,
                     seq_len=args.seq_len)
    result["command"] = "python -m scripts.int8_accuracy " + " ".join(sys.argv[1:])
    write_json_atomic(args.out, result)
    for row in result["int8"]:
        print(f"{row['scheme']} smoothing {row['smoothing_strength']} LM head {'INT8' if row['lm_head'] else 'float'} "
              f"split {row['outlier_fraction']}{'' if row['outlier_smoothing'] else ' unsmoothed'}: "
              f"{row['perplexity']:.3f} "
              f"({100 * row['vs_float']:+.2f}% vs float {result['float']['perplexity']:.3f})")


if __name__ == "__main__":
    main()
