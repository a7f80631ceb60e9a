"""How much of a projection's output a pruning mask removes, per method, on a model's own activations.

For the gate_proj of chosen layers: ||X (W - W*M)^T|| / ||X W^T|| (relative Frobenius error over the calibration
tokens X that reach it in the dense model) under the masks of magnitude, Wanda and DaSS at each sparsity, and under
the DaSS mask with the ``keep_top`` input columns of largest activation norm ||x_j|| kept dense. The statistics are
the pruning loop's own (pipeline/core/prune/sequential.py: InputStats), gathered on the dense model.

Why: DaSS compares gate/up weights within each input column, so it prunes the same share of every column, also
of the few columns whose input carries outlier activations; Wanda compares within each output row, weighted by
||x_j||, and keeps those columns. The table shows how much of the output that costs on a given model, and how
much keeping a handful of columns dense would win back. Usage (docs/measurements.md):

    python -m benchmarks.mask_error --source fetched:qwen2.5-coder-1.5b \
        --gguf-file qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --layers 1,7,14,21,27
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch import nn

from pipeline.core.models import decoder_layers, layer_projections
from pipeline.core.prune.masks import select_mask
from pipeline.core.prune.methods import make_method
from pipeline.core.prune.sequential import InputStats
from pipeline.core.prune.sparsity import SparsitySpec

log = logging.getLogger(__name__)

METHODS = ("magnitude", "wanda", "dass")


def output_error(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> float:
    """||x (W - W*M)^T|| / ||x W^T||: the share of the projection's output the pruned weights carried."""
    removed = x @ (weight * ~mask).t()
    return (removed.norm() / (x @ weight.t()).norm()).item()


def gate_mask(method: str, weight: torch.Tensor, stats: dict[str, torch.Tensor], sparsity: str,
              keep_columns: torch.Tensor | None = None) -> torch.Tensor:
    """The keep-mask ``method`` gives gate_proj (``stats``: the pruning loop's input statistic per role, as
    :class:`pipeline.core.prune.sequential.InputStats` sums it); ``keep_columns``: input columns forced dense."""
    rule = make_method(method)
    mask = select_mask(rule.score("gate", weight, stats), SparsitySpec.parse(sparsity), rule.axis("gate"))
    if keep_columns is not None:
        mask[:, keep_columns] = True
    return mask


def _inputs(model: nn.Module, windows: torch.Tensor,
            layers: list[int]) -> dict[int, tuple[nn.Module, torch.Tensor, dict]]:
    """Per layer: its gate_proj, the dense model's input rows of it, and the statistics the pruning loop would sum
    for the layer's MLP projections (gate and up read one input, down another)."""
    blocks = decoder_layers(model)
    rows: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    hooks, sums, gates = [], {}, {}
    for i in layers:
        mlp = {p.role: p for p in layer_projections(blocks[i]) if p.role in ("gate", "up", "down")}
        sums[i] = InputStats(blocks[i], [[mlp["gate"], mlp["up"]], [mlp["down"]]], "input_norms")
        gates[i] = blocks[i].get_submodule(mlp["gate"].path)
        hooks.append(gates[i].register_forward_hook(
            lambda module, args, out, i=i: rows[i].append(args[0].reshape(-1, args[0].shape[-1]).detach())))
    try:
        with torch.no_grad():
            for window in windows:
                model(window.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
        for stats in sums.values():
            stats.remove()
    return {i: (gates[i], torch.cat(rows[i]), sums[i].stats()) for i in layers}


def mask_error_rows(model: nn.Module, windows: torch.Tensor, layers: list[int], sparsities: list[str],
                    keep_top: int) -> list[dict]:
    """One row per layer: the outlier ratios of ||x_j|| and ||y_i|| (max / median) and the gate_proj output
    error of each method at each sparsity, and of DaSS with the ``keep_top`` largest-norm input columns dense."""
    out = []
    for i, (gate, x, stats) in _inputs(model, windows, layers).items():
        weight = gate.weight.detach().float()
        x = x.float()
        x_norm, y_norm = stats["gate"].sqrt(), stats["down"].sqrt()
        row = {"layer": i, "x_max_over_median": (x_norm.max() / x_norm.median()).item(),
               "y_max_over_median": (y_norm.max() / y_norm.median()).item()}
        top = torch.topk(stats["gate"], keep_top).indices
        for sparsity in sparsities:
            for method in METHODS:
                row[f"{method} {sparsity}"] = output_error(x, weight, gate_mask(method, weight, stats, sparsity))
            row[f"dass {sparsity} +top{keep_top}"] = output_error(
                x, weight, gate_mask("dass", weight, stats, sparsity, keep_columns=top))
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    head = ["layer", "max/median ‖x_j‖", "max/median ‖y_i‖"] + keys[3:]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["layer"]), f"{row['x_max_over_median']:.0f}", f"{row['y_max_over_median']:.0f}"]
        lines.append("| " + " | ".join(cells + [f"{row[k]:.3f}" for k in keys[3:]]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from pipeline.core.data import calibration_windows
    from pipeline.core.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="model source, as model.source in a recipe")
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--layers", default="0", help="comma-separated decoder layer indices")
    parser.add_argument("--sparsities", default="0.5,2:4")
    parser.add_argument("--keep-top", type=int, default=8, help="input columns of largest norm kept dense")
    parser.add_argument("--samples", type=int, default=4, help="calibration windows (embedded text)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.source, gguf_file=args.gguf_file, dtype="float32")
    windows = calibration_windows(tokenizer, "embedded", args.samples, args.seq_len, seed=0)
    rows = mask_error_rows(model, windows, [int(i) for i in args.layers.split(",")],
                           args.sparsities.split(","), args.keep_top)
    print(f"gate_proj output error ||X(W - W*M)^T|| / ||X W^T|| over {args.samples} x {args.seq_len} calibration "
          f"tokens (embedded text, dense model's inputs); +top{args.keep_top}: the DaSS mask with the "
          f"{args.keep_top} input columns of largest ||x_j|| kept dense")
    print(markdown(rows))


if __name__ == "__main__":
    main()
