"""export: the deployable ONNX artifact (export/artifact.py) in RUN/artifact/, smoke generation in each
engine (child processes), RUN/export.json."""

from __future__ import annotations

import logging
from pathlib import Path

from export.graph_formats import GRAPHS
from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.resources import BASE, Shapes, engine_unheld
from pipeline.stages.stage import Context, Stage

log = logging.getLogger(__name__)
SECTIONS = ("model", "calibration", "prune", "export")


def check_config(ctx: Context, config) -> None:
    """A DeepSparse export of a family its graph does not cover is refused from config.json, before weights load; so
    is an OpenVINO IR where OpenVINO is not installed."""
    if "openvino" in ctx.recipe.export.engines:
        from export.artifact import check_openvino_engines

        check_openvino_engines(tuple(ctx.recipe.export.engines))
    if "deepsparse" in ctx.recipe.export.engines:
        from export.deepsparse_families import check_context, quirks_for

        quirks_for(config)
        check_context(config, ctx.recipe.export.max_sequence_length)


def bounded_folder(ctx: Context, which: str) -> Path | None:
    """The checkpoint folder a bounded-memory export of the ``which`` model ("dense" or "saved") reads, or None
    when it is exported whole (switched off, no local safetensors, too shallow to gain anything, or layers whose
    graphs differ by type, which one copied layer cannot stand for)."""
    from export.bounded import TEMPLATE_LAYERS
    from export.depth import layers_alike

    config = ctx.models.config()
    if not ctx.recipe.export.bounded_memory or config.num_hidden_layers <= TEMPLATE_LAYERS or not layers_alike(config):
        return None
    return ctx.models.safetensors_of(which)


def check_export(ctx: Context, which: str, target: Path) -> None:
    from export.artifact import preflight_export

    from pipeline.resources import Shapes

    if bounded_folder(ctx, which):  # it needs shapes and the tokenizer, not weights: checked on the skeleton
        model, _ = ctx.models.skeleton()
        disk = estimate(Shapes.from_config(model.config), ctx.recipe)[1]
    else:
        (model, _), disk = ctx.model_for_checks(), None
    preflight_export(model, target, tuple(ctx.recipe.export.engines), disk)


def check(ctx: Context) -> None:
    check_export(ctx, "saved", ctx.run_dir / "artifact")


def estimate(shapes: Shapes, recipe) -> tuple[int, int]:
    """Whole: the model in float32 twice (traced, serialized). Bounded: a 2-layer template likewise, unless the
    whole model fits three times in the memory available, when its logits are checked at full depth too."""
    from export.artifact import estimated_bytes  # the export's own disk check uses the same figures
    from export.bounded import TEMPLATE_LAYERS, disk_needed, fits_whole

    ex, engines = recipe.export, tuple(recipe.export.engines)
    if ex.bounded_memory and shapes.layers > TEMPLATE_LAYERS:
        template = shapes.params - (shapes.layers - TEMPLATE_LAYERS) * shapes.layer_params
        disk = disk_needed(shapes.params, template, engines, ex.share_weights)
        ram = 2 * (shapes.params if fits_whole(shapes.params) else template) * 4 + BASE
        return ram, disk
    return 2 * shapes.params * 4 + BASE, estimated_bytes(shapes.params, engines)


def export_model(ctx: Context, which: str, target: Path, metadata: dict) -> dict:
    """The artifact of the ``which`` model in ``target``: bounded-memory from its checkpoint where possible,
    else traced whole. Returns the manifest."""
    from export.artifact import export_artifact
    from export.bounded import export_checkpoint_artifact

    ex = ctx.recipe.export
    ctx.models.release()
    folder = bounded_folder(ctx, which)
    if folder is not None:
        _, tokenizer = ctx.models.skeleton()
        log.info("bounded-memory export from %s", folder)
        return export_checkpoint_artifact(folder, tokenizer, target, tuple(ex.engines), ex.max_sequence_length,
                                          metadata=metadata, share=ex.share_weights, progress=ctx.progress)
    model, tokenizer = ctx.models.get(which)
    manifest = export_artifact(model, tokenizer, target, tuple(ex.engines), ex.max_sequence_length,
                               metadata=metadata, external_data=ex.external_data, share=ex.share_weights)
    ctx.models.release()  # the export cast it to float32 and switched its cache on
    return manifest


def run(ctx: Context) -> None:
    """Export the saved model as an artifact, then let each engine generate from it (child processes)."""
    from export.engines import generation_spec, run_engine

    recipe, run_dir, ex = ctx.recipe, ctx.run_dir, ctx.recipe.export
    # From disk, not from memory: a resumed run must export exactly what an uninterrupted one does.
    metadata = {"recipe": {k: v for k, v in recipe.model_dump(mode="json").items() if k in ("name", *SECTIONS)},
                "recipe_hash": recipe.content_hash(), "method": recipe.prune.method,
                "requested_sparsity": str(recipe.prune.sparsity), "scope": recipe.prune.scope}
    manifest = export_model(ctx, "saved", run_dir / "artifact", metadata)
    result = {"path": str(run_dir / "artifact"), "export_seconds": manifest["export_seconds"],
              "bytes": sum(f["bytes"] for f in manifest["files"].values()), "disk_bytes": manifest["disk_bytes"],
              "shared_weights": (manifest["engines"].get("onnxruntime") or {}).get("shared_weights"),
              "sparsity_in_onnx": manifest["sparsity"]["overall_decoder_linears"],
              "logits_max_abs_diff": logits_checks(manifest)}
    if ex.smoke_test:
        result["smoke"] = {}
        for engine in ex.engines:
            skipped = engine_unheld(run_dir / "artifact", engine, manifest)
            if skipped:
                log.warning("smoke test in %s %s; the artifact is complete (benchmark it on a larger machine)",
                            engine, skipped["skipped"])
                result["smoke"][engine] = skipped
                continue
            spec = generation_spec(engine, ex.smoke_prompt, ex.smoke_tokens, min(ex.max_sequence_length, 256))
            out = run_engine(engine, run_dir / "artifact", "export (smoke test)", **spec)
            result["smoke"][engine] = {"text": out["text"], "ids": out["ids"]}
            log.info("%s generated: %r", engine, out["text"])
    write_json_atomic(run_dir / "export.json", result)


def logits_checks(manifest: dict) -> dict:
    """{engine: max abs logit difference vs PyTorch}, or what was checked instead when the full graph was not run
    (a bounded-memory export of a model too large to hold whole: its 2-layer template was)."""
    checks = {}
    for engine, info in manifest["engines"].items():
        if GRAPHS[engine].made_from:  # OpenVINO's IR: checked against PyTorch or the graph it was made from
            checks[engine] = next((f"{info[k]:.2e} vs {k.rsplit('_', 1)[1]}" for k in
                                   ("logits_max_abs_diff_vs_pytorch", "logits_max_abs_diff_vs_onnxruntime") if k in info),
                                  info.get("logits_check", "not run"))
            continue
        diff = info["logits_max_abs_diff_vs_pytorch"]
        checks[engine] = diff if diff is not None else (
            f"not run at full depth; 2-layer template {info['template_logits_max_abs_diff_vs_pytorch']:.2e}")
    return checks


def diff_text(diff) -> str:
    return diff if isinstance(diff, str) else f"{diff:.2e}"


def summary(recipe, run_dir: Path) -> dict:
    return {"export": read_json(run_dir / "export.json", "re-run the recipe with --from export")}


def report(summary: dict) -> list[str]:
    ex = summary["export"]
    shared = ex.get("shared_weights") or {}
    size = (f"{ex['disk_bytes'] / 2**20:.1f} MiB on disk (the two graphs share one weights file: "
            f"{shared['shared_bytes'] / 2**20:.1f} MiB, hard-linked; {ex['bytes'] / 2**20:.1f} MiB counted per name)"
            if shared.get("hard_link") else f"{ex['bytes'] / 2**20:.1f} MiB")
    lines = ["## Artifact", "", f"`{ex['path']}`: {size}, exported in {ex['export_seconds']:.1f} s; "
             f"sparsity of the decoder linears read back from the ONNX file: {ex['sparsity_in_onnx']:.4f}.", "",
             "| engine | max abs logit difference vs PyTorch | smoke-test generation |", "|---|---|---|"]
    for engine, diff in ex["logits_max_abs_diff"].items():
        smoke = (ex.get("smoke") or {}).get(engine, {})
        text = smoke.get("text", smoke.get("skipped", "–")).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {engine} | {diff_text(diff)} | {text} |")
    return lines + ["", "Load it with `deepsparse.TextGeneration(model_path=\"<artifact>/deepsparse\")` or "
                    "`ORTModelForCausalLM.from_pretrained(\"<artifact>/onnxruntime\")`"
                    + (" or `openvino.Core().compile_model(\"<artifact>/openvino/openvino_model.xml\", \"CPU\")`"
                       if "openvino" in ex["logits_max_abs_diff"] else "")
                    + ", or `pipeline generate <artifact> \"prompt\"`."]


STAGE = Stage(name="export", about="ONNX artifact for DeepSparse and ONNX Runtime (and OpenVINO IR), smoke generation",
              sections=SECTIONS, outputs=("artifact", "export.json"), reads=("prune",),
              applies=lambda r: r.export.enabled, model="saved",
              check_config=check_config, check=check, estimate=estimate, run=run, summary=summary, report=report)
