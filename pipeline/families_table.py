"""The families table of docs/families.md, written from the family registry (pipeline/core/families.py); each cell
names the test that backs it. ``python -m pipeline.families_table`` rewrites the table between its markers,
``--check`` exits 1 when the file differs (tests/test_family_registry.py runs the same comparison)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.common.outputs import write_text_atomic
from pipeline.core.families import FAMILIES

DOC = Path(__file__).resolve().parent.parent / "docs" / "families.md"
BEGIN = "<!-- families table: written by python -m pipeline.families_table from pipeline/core/families.py -->"
END = "<!-- end of families table -->"

PRUNING_TEST = "tests/test_family_methods.py::test_method_prunes_family_by_its_rule[*-{tiny}-*]"
GRAPHS_TEST = "tests/test_families.py::test_family_generates_pytorchs_tokens_in_deepsparse_and_onnxruntime[{tiny}]"
GGUF_TEST = "tests/test_llamacpp.py::test_gguf_writer_covers_the_registrys_families[{tiny}]"


def _tests(template: str, tested_as: tuple[str, ...]) -> str:
    return "<br>".join(f"`{template.format(tiny=tiny)}`" for tiny in tested_as) or "not tested"


def table() -> str:
    lines = ["| family | model_type | DaSS / Wanda / SparseGPT / magnitude, 50% and 2:4 | ONNX Runtime and DeepSparse "
             "graphs: greedy tokens = PyTorch's | GGUF for llama.cpp | BOS per window (auto) | the DeepSparse graph adds |",
             "|---|---|---|---|---|---|---|"]
    for model_type, family in FAMILIES.items():
        graphs = "–"
        if family.deepsparse is not None:
            graphs = _tests(GRAPHS_TEST, family.tested_as)
        elif family.tested_as:
            graphs = "ONNX Runtime only"
        lines.append(" | ".join([
            f"| {family.label}", f"`{model_type}`",
            _tests(PRUNING_TEST, family.tested_as) if family.tested_as else "not tested",
            graphs,
            _tests(GGUF_TEST, family.tested_as) if family.gguf else "no",
            "yes" if family.bos_per_window else "no",
            (family.notes or "–") if family.deepsparse is not None else "–"]) + " |")
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with the part between the markers replaced by the registry's table."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC} lacks the markers {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.families_table", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/families.md differs from the registry")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        print(f"{DOC}: {'matches the registry' if current == wanted else 'differs: rerun without --check'}")
        return 0 if current == wanted else 1
    write_text_atomic(DOC, wanted)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
