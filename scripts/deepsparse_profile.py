"""Per-op profile of an artifact's DeepSparse graph: ``deepsparse.debug_analysis`` on a scratch copy
(the engine rewrites ``model.onnx`` in place), decoding one token after a filled internal KV cache.

    python -m scripts.deepsparse_profile runs/int8/depth1/dense-int8 benchmarks/results/int8_profile/x.txt

The text written is the tool's own per-layer table and breakdown, headed by the CPU, the instruction
set DeepSparse detects and the command, and followed by a summary that answers what the table
implies for INT8: which weight MatMuls DeepSparse compiled as kernels with a constant weight (a
``KerDims`` entry; ``gemm`` dense, ``ks_gevm`` sparse, with the weight's sparsity), which ran as a
plain activation x activation product (no ``KerDims``: the weight is recomputed every call) and how
much time went into ``shuffle`` / ``pyramid`` layers the size of a weight matrix (the dequantization
of a weight on every call). The raw profile is written beside the text as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.common.outputs import write_json_atomic, write_text_atomic


def layer_kind(name: str, has_kernel: bool, size: int) -> str:
    """What a layer of DeepSparse's profile is, from its name, whether it has a constant kernel, and its size."""
    if name.startswith("cached_concat_gemm"):
        return "attention with the KV cache (cached_concat_gemm)"
    if has_kernel and name.startswith("ks_"):
        return "weight kernel, sparse (ks_gevm)"
    if has_kernel:
        return "weight kernel, dense (gemm)"
    if name.startswith("gemm"):
        return "gemm without a constant weight (activation x activation)"
    if name.startswith(("shuffle", "pyramid")) and size >= 1 << 20:
        return "shuffle/pyramid of >= 1M elements (a weight rewritten every call)"
    return "other"


def summarize(result: dict) -> list[str]:
    """Lines that classify the profile's layers: weight kernels (dense / sparse), activation gemms,
    weight-sized shuffles, the rest."""
    layers = [sub for li in result["layer_info"] for sub in (li["sub_layer_info"] or [li])]
    total = sum(li.get("average_run_time_in_ms", 0.0) for li in layers) or 1.0
    groups: dict[str, list] = {}
    for li in layers:
        size = 1
        for v in li["output_dims"].values():
            size *= max(v, 1)
        groups.setdefault(layer_kind(li["name"], bool(li["kernel_dims"]), size), []).append(li)
    lines = ["== Summary (scripts/deepsparse_profile.py) ==",
             "kind | layers | ms | % of summed time | weight sparsity of the kernels"]
    for kind, items in sorted(groups.items()):
        ms = sum(li.get("average_run_time_in_ms", 0.0) for li in items)
        sparsity = sorted({round(li["kernel_sparsity"], 3) for li in items if li["kernel_dims"]})
        lines.append(f"{kind} | {len(items)} | {ms:.3f} | {100 * ms / total:.1f}% | {sparsity or '-'}")
    return lines


def profile(artifact: Path, out: Path, sequence_length: int, iterations: int, warmup: int, cores: int | None) -> None:
    from benchmarks.engines.deepsparse_runner import machine
    from export.engines import deepsparse_scratch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    with deepsparse_scratch(artifact / "deepsparse") as scratch, tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "profile.json"
        command = [sys.executable, "-m", "deepsparse.debug_analysis", str(scratch / "model.onnx"),
                   "--sequence_length", str(sequence_length), "--input_ids_length", "1",
                   "--num_kv_cache_tokens", str(sequence_length - 1), "-bi", str(iterations), "-wi", str(warmup),
                   "-x", str(export)] + (["-ncores", str(cores)] if cores else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"deepsparse.debug_analysis failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(export.read_text())
    header = [f"artifact: {artifact}", f"cpu: {cpu}", f"deepsparse detects: {json.dumps(machine())}",
              f"decode: 1 token after {sequence_length - 1} cached tokens (internal KV cache), {iterations} iterations",
              "command: python -m scripts.deepsparse_profile " + " ".join(sys.argv[1:]), ""]
    text = "\n".join(header) + done.stdout + "\n" + "\n".join(summarize(result)) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    write_json_atomic(out.with_suffix(".json"), result)
    print("\n".join(summarize(result)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="an artifact folder (with a deepsparse/ graph)")
    parser.add_argument("out", type=Path, help="text file to write")
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cores", type=int, default=None)
    args = parser.parse_args()
    profile(args.artifact, args.out, args.sequence_length, args.iterations, args.warmup, args.cores)


if __name__ == "__main__":
    main()
