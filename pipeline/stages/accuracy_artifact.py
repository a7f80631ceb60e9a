"""accuracy_artifact: task accuracy of the exported artifact's ONNX Runtime graph (RUN/accuracy_artifact.json):
the file a user ships, scored by lm-evaluation-harness through export/onnx_accuracy.py on the same items as the
PyTorch models. Its figures join the accuracy stage's table.
"""

from __future__ import annotations

from pipeline.common.outputs import read_json
from pipeline.resources import BASE
from pipeline.stages.accuracy import measure, write
from pipeline.stages.stage import Context, Stage

OUTPUT = "accuracy_artifact.json"
GRAPH = "onnxruntime"


def run(ctx: Context) -> None:
    from export.onnx_accuracy import OnnxLM

    ctx.models.release()  # the ONNX Runtime session holds its own copy of the weights
    folder = ctx.run_dir / "artifact"
    result = measure(ctx, OnnxLM(folder, GRAPH, progress=ctx.progress), "artifact")
    write(ctx, OUTPUT, "artifact", {"path": str(folder), "graph": GRAPH, **result})


def summary(recipe, run_dir) -> dict:
    return {"accuracy": read_json(run_dir / OUTPUT, "re-run the recipe with --from accuracy_artifact")}


def estimate(shapes, recipe) -> tuple[int, int]:
    """The graph's float32 weights in ONNX Runtime, one request's logits and the runtime's buffers."""
    return shapes.params * 4 + 2048 * shapes.vocab * 4 * 2 + BASE, 0


def applies(recipe) -> bool:
    return (recipe.accuracy.enabled and recipe.accuracy.artifact and recipe.export.enabled
            and GRAPH in recipe.export.engines)


STAGE = Stage(name="accuracy_artifact", about="task accuracy of the exported ONNX Runtime graph (lm-evaluation-harness)",
              sections=("model", "calibration", "prune", "export", "accuracy"), outputs=(OUTPUT,), reads=("export",),
              applies=applies, check=lambda ctx: ctx.accuracy_tasks(), estimate=estimate, run=run, summary=summary)
