"""prune: calibration and layer-by-layer pruning (pipeline/core/prune/); RUN/pruned/ holds the pruned model
(save_pretrained, safetensors), its tokenizer and sparsity.json (every projection)."""

from __future__ import annotations

import time
from collections import defaultdict

from pipeline.common.outputs import StagingDir, read_json, write_json_atomic
from pipeline.core.window_protocol import describe
from pipeline.resources import BASE, Shapes, dtype_bytes, model_bytes
from pipeline.stages.stage import Context, Stage

OUTPUT = "pruned"
PLOT = "sparsity_by_layer.png"  # in OUTPUT, with a per-layer allocation
ROLE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")


def method_of(recipe):
    from pipeline.core.prune.methods import make_method

    p = recipe.prune
    return make_method(p.method, p.method_options())


def check(ctx: Context) -> None:
    """The method fits the model (GLU for DaSS, N:M divides every projection); the calibration text is usable."""
    from pipeline.core.models import require_glu
    from pipeline.core.prune.sequential import plan_projections

    p = ctx.recipe.prune
    model, _ = ctx.model_for_checks()
    method = method_of(ctx.recipe)
    if p.method in ("dass", "dass_outlier"):
        require_glu(model, "DaSS")
    plan_projections(model, method, p.spec, p.scope, p.ignore)
    folder = ctx.models.stream_folder()
    if folder is not None:  # every shard present and whole, every tensor's shape as config.json implies
        from pipeline.core.checkpoint import Checkpoint, skeleton, tied_names

        shell = skeleton(ctx.models.config(), ctx.recipe.model.dtype)
        Checkpoint(folder).check_against(shell, tied_names(shell))
    if method.needs_calibration or p.allocation != "uniform" or p.reconstruct != "none":
        ctx.calibration_ids()


def streams(recipe) -> bool:
    """Whether the prune stage will stream layers (a safetensors source, uniform allocation; GGUF loads whole)."""
    return recipe.prune.streaming and not recipe.model.gguf_file and recipe.prune.allocation == "uniform"


def estimate(shapes: Shapes, recipe) -> tuple[int, int]:
    """What is held: the model (streaming: only the parts outside the decoder layers), the activation buffer,
    one layer in float32 and its work: scores and masks (scoring methods), or one input's X^T X with its
    factor (two in^2 float64 matrices) and the rewritten copies (SparseGPT).

    Measured on one LLaMA-2-7B-shaped layer (float16 model, SparseGPT, 8 x 512 tokens): 4.60 GiB peak RSS
    against 4.45 GiB estimated here (docs/measurements.md, "Pruning cost")."""
    cal = recipe.calibration
    model = model_bytes(shapes, recipe)
    held = (model - shapes.layers * shapes.layer_params * dtype_bytes(recipe)) if streams(recipe) else model
    buffer = cal.num_samples * cal.seq_len * shapes.hidden * dtype_bytes(recipe)  # in the model dtype
    layer = shapes.layer_params * 4
    if recipe.prune.method == "sparsegpt":  # the largest input first, while no rewritten copy is held
        work = layer + max(2 * max(shapes.hidden, shapes.intermediate) ** 2 * 8, layer + 2 * shapes.hidden ** 2 * 8)
    elif "obs" in recipe.prune.reconstruct:
        # every distinct input's X^T X at once, the largest factorised first (about five copies of it at the peak).
        # Qwen2.5-Coder-1.5B (float32, 16 x 512 tokens): 10.0 GiB estimated, 11.9 GiB peak RSS measured
        size = recipe.prune.obs.value_bytes
        grams = (max(shapes.hidden, shapes.intermediate) ** 2 + 2 * shapes.hidden ** 2) * size
        work = layer * 3 + grams + 5 * max(shapes.hidden, shapes.intermediate) ** 2 * size
    else:
        work = layer * 3
    if "block" in recipe.prune.reconstruct:  # the dense outputs, Adam's two moments, gradients, one step's activations
        block = recipe.prune.block
        tokens = block.tokens or cal.seq_len
        activations = 12 * tokens * (shapes.hidden * 4 + shapes.intermediate * 3) * 4
        work = max(work, layer * 4 + activations) + buffer
    if recipe.prune.allocation != "uniform":  # statistics pass: the layer, its metrics, one projection's sort in float64
        work = max(work, layer * 2 + 3 * 8 * shapes.hidden * shapes.intermediate)
    return held + buffer + work + BASE, int(model * 1.05)


def sparsity_summary(layers: dict[str, dict]) -> dict:
    """Per-role mean sparsity and the overall fraction of zeros in the pruned projections."""
    by_role: dict[str, list[float]] = defaultdict(list)
    zeros = total = 0
    for info in layers.values():
        by_role[info["role"]].append(info["sparsity"])
        count = info["shape"][0] * info["shape"][1]
        zeros += info["sparsity"] * count
        total += count
    return {
        "overall": zeros / total if total else 0.0,
        "pruned_parameters": total,
        "by_role": {role: sum(v) / len(v) for role, v in by_role.items()},
    }


def layer_achieved(layers: dict[str, dict], count: int) -> list[float | None]:
    """The sparsity read back from the pruned weights of each decoder layer (None: nothing pruned there)."""
    zeros, total = [0.0] * count, [0] * count
    for name, info in layers.items():
        index = int(name.split(".")[1])
        size = info["shape"][0] * info["shape"][1]
        zeros[index] += round(info["sparsity"] * size)
        total[index] += size
    return [z / t if t else None for z, t in zip(zeros, total)]


def allocation_settings(p):
    from pipeline.core.prune.layer_allocation import AllocationSettings

    return AllocationSettings(scheme=p.allocation, owl_lambda=p.owl_lambda, owl_m=p.owl_m,
                              sensitivity_band=p.sensitivity_band)


def reconstruct_record(p, blocks: dict[str, dict]) -> dict | None:
    """What sparsity.json says of the reconstruction: the mode, its settings and each layer's block fit."""
    if p.reconstruct == "none":
        return None
    record: dict = {"mode": p.reconstruct}
    if "obs" in p.reconstruct:
        record["obs"] = p.obs.model_dump()
    if "block" in p.reconstruct:
        record["block"] = p.block.model_dump()
        record["block_layers"] = blocks
        record["block_seconds"] = sum(b.get("seconds", 0.0) for b in blocks.values())  # of the prune stage's time
    return record


def run(ctx: Context) -> None:
    p = ctx.recipe.prune
    method = method_of(ctx.recipe)
    ids = ctx.calibration_ids() if method.needs_calibration or p.reconstruct != "none" else None
    options = dict(scope=p.scope, ignore=p.ignore, device=p.device, sequential=p.sequential, progress=ctx.progress,
                   reconstruct=p.reconstruct, obs=p.obs, block=p.block)
    folder = ctx.models.stream_folder()  # None with a per-layer allocation: its statistics pass needs the model
    t0 = time.time()
    allocation = None
    with StagingDir(ctx.run_dir / OUTPUT) as tmp:
        if folder is not None:  # one decoder layer in memory at a time, written out as its own shard
            from pipeline.core.prune.streaming import prune_streaming

            _, tokenizer = ctx.model_for_checks()
            ctx.models.release()
            result = prune_streaming(folder, ctx.models.config(), ctx.recipe.model.dtype, tmp, method, p.spec, ids,
                                     **options)
        else:
            from pipeline.core.prune.sequential import plan_projections, prune_model

            model, tokenizer = ctx.models.dense()
            layer_specs = None
            if p.allocation != "uniform":  # uniform: the paper's procedure, untouched
                from pipeline.core.prune.layer_allocation import layer_sparsities, measure_layers
                from pipeline.core.prune.sparsity import SparsitySpec

                settings = allocation_settings(p)
                stats = measure_layers(model, ctx.calibration_ids(),
                                       plan_projections(model, method, p.spec, p.scope, p.ignore), p.owl_m,
                                       device=p.device, progress=ctx.progress)
                ratios = layer_sparsities(stats, settings, p.spec.fraction)
                layer_specs = [SparsitySpec(fraction=r) for r in ratios]
            result = prune_model(model, method, p.spec, ids, layer_sparsity=layer_specs, **options)
            if layer_specs is not None:
                from pipeline.core.prune.layer_allocation import layer_records

                allocation = {**vars(settings), "target": p.spec.fraction,
                              "layers": layer_records(stats, settings, ratios,
                                                      layer_achieved(result.layers, len(ratios)))}
            model.save_pretrained(tmp, safe_serialization=True)
        seconds = time.time() - t0
        tokenizer.save_pretrained(tmp)
        bos = ctx.bos_per_window("calibration") if ids is not None or allocation is not None else None
        content = {"summary": sparsity_summary(result.layers), "prune_seconds": seconds, "streamed": folder is not None,
                   "calibration_bos_per_window": bos, "reconstruct": reconstruct_record(p, result.blocks),
                   "layers": result.layers}
        if allocation is not None:
            from pipeline.common.outputs import write_bytes_atomic
            from pipeline.sparsity_plot import sparsity_by_layer_png

            content["allocation"] = allocation
            write_bytes_atomic(tmp / PLOT, sparsity_by_layer_png(allocation["layers"], p.spec.fraction, p.allocation))
        write_json_atomic(tmp / "sparsity.json", content)
    ctx.models.state = "saved" if folder is None else None


def summary(recipe, run_dir) -> dict:
    p, cal = recipe.prune, recipe.calibration
    sparsity = read_json(run_dir / OUTPUT / "sparsity.json", "re-run the recipe with --from prune")
    calibrated = p.method not in ("magnitude", "none") or (p.method != "none" and (p.allocation != "uniform" or
                                                                                 p.reconstruct != "none"))
    return {"calibration": {"dataset": cal.dataset, **({"also": cal.also} if cal.also else {}), "num_samples": cal.num_samples, "seq_len": cal.seq_len,
                            "seed": cal.seed, "bos_per_window": sparsity.get("calibration_bos_per_window")}
            if calibrated else None,
            "prune_seconds": sparsity.get("prune_seconds"), "streamed": sparsity.get("streamed", False),
            "reconstruct": sparsity.get("reconstruct"),
            "sparsity_achieved": sparsity["summary"],
            **({"allocation": sparsity["allocation"]} if "allocation" in sparsity else {})}


def report(summary: dict) -> list[str]:
    lines = ["## Pruning", ""]
    cal = summary.get("calibration")
    if cal:
        lines.append(f"- calibration: {cal['dataset']}, {cal['num_samples']} x {cal['seq_len']} tokens, seed {cal['seed']}; "
                     f"{describe(cal.get('bos_per_window'), cal['seq_len'])}")
    if summary.get("prune_seconds") is not None:
        lines.append(f"- pruning time: {summary['prune_seconds']:.1f} s")
    lines += _reconstruct_report(summary.get("reconstruct"))
    if summary.get("streamed"):
        lines.append("- streamed: one decoder layer in memory at a time, read from the checkpoint's shards")
    achieved = summary["sparsity_achieved"]
    lines += ["", f"Sparsity achieved, overall over the pruned projections: **{achieved['overall']:.4f}** "
              f"of {achieved['pruned_parameters']:,} weights.", "", "| projection | mean sparsity |", "|---|---|"]
    roles = sorted(achieved["by_role"], key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else 99)
    lines += [f"| {r} | {achieved['by_role'][r]:.4f} |" for r in roles]
    return lines + _allocation_report(summary.get("allocation")) + ["", "Per-layer figures: `pruned/sparsity.json`."]


def _reconstruct_report(record: dict | None) -> list[str]:
    if not record:
        return []
    lines = [f"- reconstruction: **{record['mode']}** (kept weights updated, the mask fixed)"]
    if record.get("obs"):
        lines.append(f"  - obs: OBS update from X^T X of the dense layer's inputs, block size {record['obs']['block_size']}, "
                     f"damping {record['obs']['dampening_frac']:g}")
    fits = record.get("block_layers") or {}
    if record.get("block"):
        b = record["block"]
        lines.append(f"  - block: {b['steps']} Adam steps per layer of {b['batch_windows']} windows, lr {b['lr']:g}, "
                     f"training {', '.join(b['train'])}")
    if fits:
        before = sum(f["error_before"] for f in fits.values()) / len(fits)
        after = sum(f["error_after"] for f in fits.values()) / len(fits)
        lines.append(f"  - block fit: mean relative output error of a layer {before:.4g} before, {after:.4g} after "
                     "(per layer: `pruned/sparsity.json`)")
    return lines


def _allocation_report(allocation: dict | None) -> list[str]:
    if not allocation:
        return []
    used = [r for r in allocation["layers"] if r["weights"]]
    low, high = min(used, key=lambda r: r["sparsity"]), max(used, key=lambda r: r["sparsity"])
    params = (f"lambda {allocation['owl_lambda']:g}, M {allocation['owl_m']:g}" if allocation["scheme"] == "owl"
              else f"band {allocation['sensitivity_band']:g}")
    lines = ["", f"Per-layer allocation **{allocation['scheme']}** ({params}) around {allocation['target']:g}: from "
             f"{low['sparsity']:.4f} (layer {low['layer']}) to {high['sparsity']:.4f} (layer {high['layer']}); "
             "size-weighted mean = the requested sparsity.", "",
             f"![sparsity by layer]({OUTPUT}/{PLOT})", "", "| layer | sparsity asked | read back |", "|---|---|---|"]
    return lines + [f"| {r['layer']} | {r['sparsity']:.4f} | {r['achieved']:.4f} |" for r in used]


STAGE = Stage(name="prune", about="calibration and layer-wise pruning",
              sections=("model", "calibration", "prune"), outputs=(OUTPUT,), reads=(),
              applies=lambda r: r.prune.method != "none", model="dense",
              check=check, estimate=estimate, run=run, summary=summary, report=report)
