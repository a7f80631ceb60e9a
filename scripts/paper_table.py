"""The DaSS paper's CPU table (LLaMA-2-7B in DeepSparse: dense 3.05, 50% 5.64, 70% 8.27 tokens/s),
reproduced at smaller cost on LLaMA-2-7B-shaped models with random weights at a few depths.

    python -m scripts.paper_table build runs/paper7b --depths 1 2 3 --equal-speed-depth 2   # prune + export
    python -m scripts.paper_table run runs/paper7b --repeats 3        # benchmark, fit, extrapolate, report

    # sparse + INT8: dense and DaSS 70%, float32 and INT8 (export/quantize.py), DeepSparse decode
    python -m scripts.paper_table build runs/int8 --depths 1 2 --names dense dass-70 --no-equal-speed --int8
    python -m scripts.paper_table run runs/int8 --engines deepsparse --modes decode

    # ... and the engine users pick instead: the dense model as GGUF in llama.cpp, in the same interleaved run
    python -m scripts.paper_table build runs/int8 --depths 2 4 --names dense dass-70 --no-equal-speed --int8 \
        --gguf q4_0 q8_0
    python -m scripts.paper_table run runs/int8 --engines deepsparse llamacpp --modes decode

    # OpenVINO (dense and sparse INT8, sparse weights decompression on and off) beside DeepSparse and llama.cpp
    python -m scripts.paper_table build runs/ov --depths 2 4 --no-equal-speed --int8 --gguf q4_0 \
        --pruned-graphs deepsparse onnxruntime
    python -m scripts.paper_table run runs/ov --engines deepsparse openvino openvino-sparse llamacpp --modes decode

    # --int8 int8 int8-head int8-all-head: NAME-int8-head has the LM head INT8 too (quantize.lm_head),
    # NAME-int8-all-head down_proj as well (scheme w8a8-static-all)

``build`` makes, for each depth, a model with LLaMA-2-7B's exact layer shapes (scripts/shapes.py),
prunes it with DaSS at 50% and 70% (attention + MLP, like the paper's CPU experiment) and, at one
depth, with Wanda and magnitude at 50% too (equal speed at equal sparsity), and exports
each as an artifact (DeepSparse graph; the dense one also for ONNX Runtime). ``run`` benchmarks
them all interleaved (benchmarks/runner.py), fits time per token = fixed + depth x per-layer for
each engine and model, extrapolates to 32 layers, and writes report.md, results.json and the plots.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from scripts.shapes import LLAMA2_7B_LAYERS, byte_level_tokenizer, llama2_7b_config, random_model
from benchmarks.settings import add_settings_arguments, settings_from_arguments

log = logging.getLogger(__name__)

#: (name, method, sparsity); the equal-speed methods are built at the deepest depth only
MAIN = (("dense", "none", None), ("dass-50", "dass", 0.5), ("dass-70", "dass", 0.7))
EQUAL_SPEED = (("wanda-50", "wanda", 0.5), ("magnitude-50", "magnitude", 0.5))


def artifact_plan(depths: list[int], equal_speed_depth: int | None = None, names: list[str] | None = None,
                  equal_speed: bool = True) -> list[tuple[int, str, str, float | None]]:
    plan = [(d, *entry) for d in sorted(depths) for entry in MAIN if names is None or entry[0] in names]
    if equal_speed:
        plan += [(equal_speed_depth or max(depths), *entry) for entry in EQUAL_SPEED]
    return plan


#: INT8 siblings ``build`` can write beside an artifact: NAME-VARIANT -> (scheme, LM head INT8)
INT8_VARIANTS = {"int8": ("w8a8-static", False), "int8-head": ("w8a8-static", True),
                 "int8-all-head": ("w8a8-static-all", True)}


def quantize_sibling(target: Path, tokenizer, calib, variant: str = "int8") -> None:
    """``target``-VARIANT beside ``target``: the same artifact with INT8 linears (export/quantize.py), the
    scheme and LM head of ``INT8_VARIANTS[variant]``."""
    from export.artifact import MANIFEST
    from export.quantize import quantize_artifact

    scheme, lm_head = INT8_VARIANTS[variant]
    int8 = target.with_name(f"{target.name}-{variant}")
    if (int8 / MANIFEST).is_file():
        log.info("%s exists; skipped", int8)
        return
    check = tokenizer("The quick brown fox", return_tensors="np").input_ids
    manifest = quantize_artifact(target, int8, scheme, calib.numpy(), check, lm_head=lm_head)
    info = manifest["engines"]["deepsparse"]
    print(f"{int8}: {info['quantized_matmuls']} MatMuls INT8, INT8 zeros {info['int8_zeros']:.3f}, quantized in "
          f"{manifest['quantize_seconds']:.0f} s", flush=True)


def build(out: Path, depths: list[int], calib_samples: int, calib_len: int, max_positions: int,
          equal_speed_depth: int | None = None, names: list[str] | None = None, equal_speed: bool = True,
          int8: tuple[str, ...] = (), gguf: tuple[str, ...] = (), pruned_graphs: tuple[str, ...] = ("deepsparse",)) -> None:
    """Every artifact of the plan, and the INT8 and GGUF siblings asked for; what exists is kept. A dense artifact has
    both graphs, a pruned one ``pruned_graphs`` (the onnxruntime graph too for ONNX Runtime and OpenVINO)."""
    from benchmarks.llamacpp import DESCRIPTION
    from export.artifact import MANIFEST, export_artifact
    from export.gguf_writer import write_gguf
    from pipeline.core.data import calibration_windows, embedded_text
    from pipeline.core.prune.methods import make_method
    from pipeline.core.prune.sparsity import SparsitySpec
    from pipeline.core.prune.sequential import prune_model

    tokenizer = byte_level_tokenizer(embedded_text())
    calib = calibration_windows(tokenizer, "embedded", calib_samples, calib_len, seed=0)
    for depth, name, method, sparsity in artifact_plan(depths, equal_speed_depth, names, equal_speed):
        target = out / f"depth{depth}" / name
        ggufs = [t for t in gguf if method == "none" and not (target.parent / f"gguf-{t}" / DESCRIPTION).is_file()]
        exported = (target / MANIFEST).is_file()
        if exported and not ggufs:
            log.info("%s exists; skipped", target)
        else:
            model = random_model(llama2_7b_config(depth), torch.float32)  # seeded: the same weights every build
            for gguf_type in ggufs:  # the dense model for llama.cpp
                write_gguf(model, tokenizer, target.parent / f"gguf-{gguf_type}", gguf_type, f"llama2-7b-shaped-{depth}")
                print(f"depth {depth} dense as GGUF {gguf_type}", flush=True)
            if not exported:
                if method != "none":
                    prune_model(model, make_method(method), SparsitySpec.parse(sparsity), calib,
                                scope="attention+mlp", progress=False)
                engines = ("deepsparse", "onnxruntime") if method == "none" else pruned_graphs
                manifest = export_artifact(model, tokenizer, target, engines, max_positions=max_positions, metadata={
                    "method": method, "requested_sparsity": sparsity, "scope": "attention+mlp", "depth": depth,
                    "shape": "llama2-7b", "weights": "random (seed 0)"})
                print(f"depth {depth} {name}: sparsity {manifest['sparsity']['overall_decoder_linears']:.3f}, "
                      f"exported in {manifest['export_seconds']:.0f} s", flush=True)
            del model
        for variant in int8:
            quantize_sibling(target, tokenizer, calib, variant)


def collect(out: Path) -> list[dict]:
    """Every artifact ``build`` wrote under ``out``, keyed depthN/name."""
    from benchmarks.llamacpp import DESCRIPTION
    from benchmarks.runner import find_artifact
    from export.artifact import MANIFEST

    found = sorted({*out.glob(f"depth*/*/{MANIFEST}"), *out.glob(f"depth*/gguf-*/{DESCRIPTION}")})
    if not found:
        raise SystemExit(f"no artifacts under {out}: run `python -m scripts.paper_table build {out}` first")
    described = []
    for m in found:
        key = f"{m.parent.parent.name}/{m.parent.name}"
        described.append({**find_artifact(m.parent), "key": key, "name": m.parent.name})  # artifact or GGUF folder
    return described


def run(out: Path, settings, command: str) -> None:
    from benchmarks.report import write_report
    from benchmarks.runner import run_benchmark

    results = run_benchmark(collect(out), settings, out, command=command)
    print(f"wrote {', '.join(write_report(results, out))} and results.json to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="prune and export the 7B-shaped artifacts")
    b.add_argument("out", type=Path)
    b.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    b.add_argument("--calib-samples", type=int, default=8)
    b.add_argument("--calib-len", type=int, default=256)
    b.add_argument("--max-positions", type=int, default=512)
    b.add_argument("--equal-speed-depth", type=int, default=None,
                   help="depth of the Wanda / magnitude artifacts (default: the deepest)")
    b.add_argument("--names", nargs="+", choices=[m[0] for m in MAIN], default=None, help="build only these models")
    b.add_argument("--no-equal-speed", action="store_true", help="skip the Wanda / magnitude artifacts")
    b.add_argument("--int8", nargs="*", choices=list(INT8_VARIANTS), default=None,
                   help="also write NAME-VARIANT, INT8 copies of each artifact: int8 (the default: q/k/v/o/gate/up "
                        "INT8), int8-head (and the LM head, quantize.lm_head), int8-all-head (and down_proj)")
    b.add_argument("--gguf", nargs="+", default=[], choices=["f32", "f16", "q8_0", "q4_0"],
                   help="also write the dense model of each depth as GGUF (depthN/gguf-TYPE) for the llamacpp engine")
    b.add_argument("--pruned-graphs", nargs="+", choices=["deepsparse", "onnxruntime"], default=["deepsparse"],
                   help="graphs a pruned artifact is exported with (the dense ones have both); onnxruntime is the "
                        "graph ONNX Runtime and OpenVINO run")
    r = sub.add_parser("run", help="benchmark every artifact under OUT, interleaved, and write the report there")
    r.add_argument("out", type=Path)
    add_settings_arguments(r, extrapolate_to_layers=LLAMA2_7B_LAYERS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.what == "build":
        build(args.out, args.depths, args.calib_samples, args.calib_len, args.max_positions, args.equal_speed_depth,
              args.names, not args.no_equal_speed, () if args.int8 is None else tuple(args.int8 or ["int8"]),
              tuple(args.gguf), tuple(args.pruned_graphs))
    else:
        run(args.out, settings_from_arguments(args), "python -m scripts.paper_table " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
