"""The benchmark engines as one table (benchmarks/engines/__init__.py: ENGINES): which engine runs GGUF files, which is
a sparse engine's dense peer, which is the sparse variant of which, which is the paper's; the statistics, the report
and the benchmark stage read an entry's fields, and no module of benchmarks/ (nor the benchmark stage, nor the recipe's
check) compares an engine's name to decide."""

import ast
from pathlib import Path

import pytest

from conftest import name_comparisons
from benchmarks.engines import ENGINES, GGUF_ENGINE, PAPER_ENGINE, asks_ggufs, engine_facts

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "benchmarks" / "engines" / "__init__.py"
SOURCES = sorted([*(p for p in (ROOT / "benchmarks").rglob("*.py") if p != TABLE),
                  ROOT / "pipeline" / "stages" / "benchmark.py", ROOT / "pipeline" / "recipe.py"])
#: comparisons allowed, by file: none today (a module that must compare a name says why here)
ALLOWED: dict[str, set[str]] = {}


def switches_on_an_engine_name(tree) -> list[str]:
    """Comparisons with an engine's name on either side: ``engine == "deepsparse"``, ``e in ("llamacpp", "pytorch")``,
    and ``"llamacpp" in engines`` too (asking whether llama.cpp is among the engines is the table's ``runs_gguf``)."""
    return name_comparisons(tree, ENGINES, questions_are_switches=True)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_decides_by_an_engine_name(path):
    found = switches_on_an_engine_name(ast.parse(path.read_text(encoding="utf-8")))
    rest = [f for f in found if f.split(":")[0] not in ALLOWED.get(str(path.relative_to(ROOT)), set())]
    assert not rest, f"{path.relative_to(ROOT)}: {rest} — read the engine's entry in benchmarks/engines/__init__.py"


def test_the_walk_sees_every_kind_of_switch():
    code = ('if engine == "deepsparse":\n    pass\nskip = engine in ("llamacpp", "pytorch")\n'
            'gguf = "llamacpp" in engines\nok = c["engine"] != "openvino-sparse"\nfine = engine == PAPER\n'
            'label = {"deepsparse": 1}["deepsparse"]\n')
    assert [f.split(":")[0] for f in switches_on_an_engine_name(ast.parse(code))] == [
        "line 1", "line 3", "line 4", "line 5"]


def test_the_table():
    assert GGUF_ENGINE == "llamacpp" and [n for n, f in ENGINES.items() if f.runs_gguf] == [GGUF_ENGINE]
    assert PAPER_ENGINE == "deepsparse" and [n for n, f in ENGINES.items() if f.paper_engine] == [PAPER_ENGINE]
    for name, facts in ENGINES.items():
        if facts.dense_peer:  # a sparse engine, compared with a dense one on the same ONNX artifacts
            peer = ENGINES[facts.dense_peer]
            assert facts.exploits_sparsity and not peer.exploits_sparsity and peer.runs_onnx, name
        if facts.sparse_variant_of:  # the same engine and graph, its sparse path asked
            base = ENGINES[facts.sparse_variant_of]
            assert (facts.package, facts.graph, facts.runner) == (base.package, base.graph, base.runner), name
            assert facts.exploits_sparsity and not base.exploits_sparsity and not base.sparse_variant_of, name
    assert ENGINES["deepsparse"].dense_peer == "onnxruntime"
    assert ENGINES["openvino-sparse"].sparse_variant_of == "openvino" and ENGINES["openvino-sparse"].needs_amx
    assert [n for n, f in ENGINES.items() if f.reinitialised] == ["pytorch"]  # rebuilt from config.json
    assert sorted(n for n, f in ENGINES.items() if f.runs_onnx) == [
        "deepsparse", "onnxruntime", "openvino", "openvino-sparse"]
    assert asks_ggufs(["onnxruntime", "llamacpp"]) and not asks_ggufs(["deepsparse", "pytorch", "openvino"])
    unknown = engine_facts("an-engine-of-later-results")  # compared with itself and the GGUFs only
    assert unknown.runs_onnx and not (unknown.dense_peer or unknown.sparse_variant_of or unknown.paper_engine)
