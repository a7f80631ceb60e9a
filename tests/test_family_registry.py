"""One family registry (pipeline/core/families.py): the only module that decides anything by a model_type string,
and the modules that used to keep their own lists read it."""

import ast
from pathlib import Path

import pytest

from pipeline.core.families import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "pipeline" / "core" / "families.py"
SOURCES = sorted(p for folder in ("pipeline", "export", "benchmarks") for p in (ROOT / folder).rglob("*.py")
                 if p != REGISTRY)


def model_type_strings(node) -> list[str]:
    """The registered model_type strings a literal holds: a string, or a tuple / list / set / dict's keys of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in FAMILIES else []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for item in node.elts for s in model_type_strings(item)]
    if isinstance(node, ast.Dict):
        return [s for key in node.keys if key is not None for s in model_type_strings(key)]
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("frozenset", "set", "tuple") and node.args:
        return model_type_strings(node.args[0])
    return []


def switches_on_model_type(tree) -> list[str]:
    """Comparisons with a registered model_type (``kind == "gemma"``, ``kind in ("llama", "mistral")``) and
    literals listing two or more of them (a family table of one's own)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            hits = [s for side in (node.left, *node.comparators) for s in model_type_strings(side)]
            if hits:
                found.append(f"line {node.lineno}: compares with {hits}")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            hits = model_type_strings(node)
            if len(hits) >= 2:
                found.append(f"line {node.lineno}: lists {hits}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_registry_switches_on_a_model_type(path):
    found = switches_on_model_type(ast.parse(path.read_text(encoding="utf-8")))
    assert not found, f"{path.relative_to(ROOT)} decides by model_type itself: {found} — read pipeline/core/families.py"


def test_the_walk_finds_a_family_table_and_a_switch():
    code = 'KINDS = ("llama", "mistral")\nif config.model_type == "gemma2":\n    pass\nok = arch == "llamacpp"\n'
    assert len(switches_on_model_type(ast.parse(code))) == 2


def test_the_modules_read_the_registry():
    from export.deepsparse_families import ARCHITECTURES
    from export.gguf_writer import ARCHITECTURES as GGUF
    from pipeline.core.window_protocol import bos_per_window

    assert ARCHITECTURES == {name: f.deepsparse for name, f in FAMILIES.items() if f.deepsparse is not None}
    assert set(GGUF) == {name for name, f in FAMILIES.items() if f.gguf}
    for name, family in FAMILIES.items():
        assert bos_per_window("auto", name) is family.bos_per_window, name
    assert bos_per_window("auto", "some_new_family") is False and bos_per_window(True, "llama") is True


def test_the_families_tables_are_the_registrys():
    from pipeline.families_table import main, wanted

    for path, (current, new) in wanted().items():
        assert current == new, f"{path} differs from the registry — fix: .venv/bin/python -m pipeline.families_table"
    assert main(["--check"]) == 0


def test_every_test_the_table_names_is_parametrized_so():
    """The table's test ids exist: the tiny models the registry names are the tests' parameters, and every tiny
    model of tests/conftest.py stands for a family."""
    import test_families
    import test_family_methods
    import test_llamacpp
    from conftest import ARCHITECTURES, FUSED_ARCHITECTURES

    named = [tiny for f in FAMILIES.values() for tiny in f.tested_as]
    assert sorted(named) == sorted([*ARCHITECTURES, *FUSED_ARCHITECTURES]), "each tiny model stands for one family"
    assert sorted(test_family_methods.FAMILIES) == sorted(named)
    with_graphs = [tiny for f in FAMILIES.values() if f.deepsparse is not None for tiny in f.tested_as]
    assert sorted(test_families.FAMILIES) == sorted(with_graphs)
    assert sorted(test_llamacpp.GGUF_FAMILY_MODELS) == sorted(t for f in FAMILIES.values() if f.gguf for t in f.tested_as)
