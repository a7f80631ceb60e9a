"""The layers import one way, and reading a recipe loads nothing heavy.

Layers, lowest first: the leaf (pipeline.common), the model-side core (pipeline.core), export, benchmarks,
then the orchestration (the rest of pipeline: recipe, stages, runner, resume, resources, report, cli), and last
the study scripts (scripts/), which nothing imports.
A module may import its own layer and the layers below it, never one above. Every import statement
counts, also those inside functions (they are where cycles hide).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline.common", "pipeline.core", "export", "benchmarks", "pipeline", "scripts")
OURS = ("pipeline", "export", "benchmarks", "scripts")


def layer_of(module: str) -> int:
    return next(i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def back_imports(files) -> list[str]:
    found = []
    for path in files:
        source = module_name(path)
        for line, target in imports(path):
            if target.split(".")[0] in OURS and layer_of(target) > layer_of(source):
                found.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[layer_of(source)]}) imports {target} "
                             f"({LAYERS[layer_of(target)]})")
    return found


def project_files():
    return sorted(p for package in OURS for p in (ROOT / package).rglob("*.py"))


def test_no_import_runs_back_up_a_layer():
    assert back_imports(project_files()) == []


def test_the_layer_check_sees_a_back_import_inside_a_function(tmp_path, monkeypatch):
    planted = ROOT / "pipeline" / "core" / "_planted_for_test.py"
    planted.write_text("def f():\n    from pipeline.stages import STAGES\n    return STAGES\n")
    try:
        found = back_imports([planted])
    finally:
        planted.unlink()
    assert found == ["pipeline/core/_planted_for_test.py:2 (pipeline.core) imports pipeline.stages (pipeline)"]


HEAVY = ("torch", "onnx", "onnxruntime", "transformers", "deepsparse", "optimum", "numpy", "ray")
PROBE = """
import sys
from pipeline.cli import main
code = main(["validate", sys.argv[1]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print("HEAVY", ",".join(heavy))
sys.exit(code)
"""


def heavy_modules_after_validate(recipe: str, extra_import: str = "") -> list[str]:
    code = PROBE.replace("import sys\n", f"import sys\n{extra_import}\n", 1)
    proc = subprocess.run([sys.executable, "-c", code, recipe, ",".join(HEAVY)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("HEAVY"))
    return [m for m in line.split(" ", 1)[1].split(",") if m]


def test_validate_loads_neither_torch_nor_onnx():
    assert heavy_modules_after_validate("recipes/llama2-7b-70pct.yaml") == []


def test_the_light_validate_check_sees_a_heavy_import():
    # the same probe, with a module that imports torch at its top loaded first, reports it
    assert "torch" in heavy_modules_after_validate("recipes/llama2-7b-70pct.yaml", "import pipeline.core.prune.masks")


# the Ray executors import Ray inside their functions only, when --ray is given (pipeline/ray_cluster.py)
@pytest.mark.parametrize("module", ["pipeline.stages", "pipeline.recipe", "benchmarks.settings", "export.schemes",
                                    "pipeline.sweep_ray", "pipeline.benchmark_ray", "benchmarks.cpu_kinds"])
def test_recipe_side_modules_are_light(module):
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
