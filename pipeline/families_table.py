"""The families tables, written from the family registry (pipeline/core/families.py): docs/families.md's, each cell
naming the test that backs it, and README.md's short one (yes / no, the same facts). ``python -m
pipeline.families_table`` rewrites both between their markers, ``--check`` exits 1 when a file differs
(tests/test_family_registry.py runs the same comparison)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.common.outputs import write_text_atomic
from pipeline.core.families import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "families.md"
README = ROOT / "README.md"
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


def short_table() -> str:
    """README's: what each family gets, without the test ids (docs/families.md has them)."""
    lines = ["| family | model_type | pruned (every method) | DeepSparse graph | GGUF for llama.cpp | BOS per window |",
             "|---|---|---|---|---|---|"]
    for model_type, family in FAMILIES.items():
        lines.append(f"| {family.label} | `{model_type}` | {'yes' if family.tested_as else 'not tested'} | "
                     f"{'yes' if family.deepsparse is not None else 'no (ONNX Runtime)'} | "
                     f"{family.gguf.arch + ' graph' if family.gguf else 'no'} | {'yes' if family.bos_per_window else 'no'} |")
    return "\n".join(lines)


def render(text: str, table_text: str | None = None, where: Path = DOC) -> str:
    """``text`` with the part between the markers replaced by ``table_text`` (default: docs/families.md's table)."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{where} lacks the markers {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table() if table_text is None else table_text}\n{END}{tail}"


def wanted() -> dict[Path, tuple[str, str]]:
    """Each file the tables live in: (its text now, its text with the registry's table)."""
    out = {}
    for path, text_of in ((DOC, table), (README, short_table)):
        current = path.read_text(encoding="utf-8")
        out[path] = (current, render(current, text_of(), path))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.families_table", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a table differs from the registry")
    args = parser.parse_args(argv)
    differ = 0
    for path, (current, new) in wanted().items():
        if args.check:
            print(f"{path}: {'matches the registry' if current == new else 'differs: rerun without --check'}")
            differ += current != new
        else:
            write_text_atomic(path, new)
            print(f"wrote {path}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
