"""Memory of the INT8 quantization of an artifact, as the quantize stage runs it: wall time, peak RSS (which
counts the pages of the weights file ONNX Runtime maps) and peak anonymous memory (what the machine must hold).

    python -m scripts.quantize_memory ARTIFACT OUT.json [--samples 16 --seq-len 128 --lm-head]

The calibration windows are the embedded text's, as in the recipes' defaults (``quantize.num_samples`` 16 x
``quantize.seq_len`` 128, smoothing 0.5). The INT8 artifact is written beside OUT.json and deleted afterwards
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from pathlib import Path


def measure(artifact: Path, target: Path, samples: int, seq_len: int, lm_head: bool) -> dict:
    import onnxruntime  # noqa: F401  (loaded before the baseline, as in the pipeline's process)
    from transformers import AutoTokenizer

    from export.quantize import quantize_artifact
    from pipeline.common.peak_memory import PeakMemory, _status
    from pipeline.core.data import calibration_windows

    engine = next(e for e in ("deepsparse", "onnxruntime") if (artifact / e / "model.onnx").is_file())
    tokenizer = AutoTokenizer.from_pretrained(artifact / engine)
    windows = calibration_windows(tokenizer, "embedded", samples, seq_len, 0, None, None).numpy()
    check = tokenizer("The quick brown fox", return_tensors="np").input_ids
    before = _status("RssAnon")
    started = time.time()
    with PeakMemory(interval=0.05) as peak:
        manifest = quantize_artifact(artifact, target, "w8a8-static", windows, check, smoothing_strength=0.5,
                                     lm_head=lm_head)
    return {**peak.result(), "anon_before_bytes": before, "seconds": round(time.time() - started, 1),
            "artifact": str(artifact), "calibration": [samples, seq_len], "lm_head": lm_head,
            "weights_bytes": sum((artifact / e / "model.onnx_data").stat().st_size for e in manifest["engines"]),
            "cpu": platform.processor() or platform.machine(),
            "engines": {e: {k: i.get(k) for k in ("quantized_matmuls", "int8_zeros", "top1_agreement_vs_float",
                                                  "logits_max_abs_diff_vs_float")}
                        for e, i in manifest["engines"].items()}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lm-head", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the INT8 artifact")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    target = args.out.with_suffix(".int8")
    result = measure(args.artifact, target, args.samples, args.seq_len, args.lm_head)
    if not args.keep:
        shutil.rmtree(target)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    gib = 2**30
    print(f"{args.artifact}: {result['weights_bytes'] / gib:.2f} GiB of float weights quantized in {result['seconds']} s; "
          f"peak RSS {result['peak_rss_self_bytes'] / gib:.2f} GiB, peak anonymous {result['peak_anon_self_bytes'] / gib:.2f} "
          f"GiB ({result['anon_before_bytes'] / gib:.2f} before)")


if __name__ == "__main__":
    main()
