"""The artifact's graph formats as one table (export/graph_formats.py): the export, the quantize stage, the checks,
generation and the memory estimate read its fields, and no other module compares a graph's name to decide."""

import ast
from pathlib import Path

import pytest

from conftest import name_comparisons
from export.graph_formats import GRAPHS, ONNX_GRAPHS

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "export" / "graph_formats.py"
SOURCES = sorted(p for folder in ("pipeline", "export") for p in (ROOT / folder).rglob("*.py") if p != TABLE)


def switches_on_a_graph_name(tree) -> list[str]:
    """Comparisons with a graph's name: ``engine == "deepsparse"``, ``name != "openvino"``, ``x in ("a", "b")``;
    ``"openvino" in recipe.export.engines`` asks what was exported: a question, not a switch."""
    return name_comparisons(tree, GRAPHS, questions_are_switches=False)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_decides_by_a_graph_name(path):
    found = switches_on_a_graph_name(ast.parse(path.read_text(encoding="utf-8")))
    assert not found, f"{path.relative_to(ROOT)}: {found} — read the graph's entry in export/graph_formats.py"


def test_the_walk_sees_a_switch_and_lets_a_question_pass():
    code = ('if engine == "deepsparse":\n    pass\nok = name in ("deepsparse", "onnxruntime")\n'
            'asked = "openvino" in engines\n')
    assert [f.split(":")[0] for f in switches_on_a_graph_name(ast.parse(code))] == ["line 1", "line 3"]


def test_the_table():
    assert ONNX_GRAPHS == ("deepsparse", "onnxruntime")  # traced by Optimum, in export order
    assert all(GRAPHS[g.made_from].traced for g in GRAPHS.values() if g.made_from)
    shared = [g.name for g in GRAPHS.values() if g.reads_shared_weights]
    owners = [g.name for g in GRAPHS.values() if g.traced and not g.reads_shared_weights]
    assert len(shared) == 1 and len(owners) == 1, "one graph's weights file is hard-linked to the other's"
    assert GRAPHS["deepsparse"].kv_cache.startswith("internal") and GRAPHS["onnxruntime"].kv_cache.startswith("external")
