"""The recipe reference (docs/recipe-reference.md), written from the pydantic schema in pipeline/recipe.py
and pipeline/recipe_sections.py.

``python -m pipeline.recipe_reference`` rewrites the file; ``--check`` exits 1 when the file differs from the
schema (tests/test_recipe_reference.py runs the same comparison), so a key added to the schema without a line
in the reference fails the suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from pipeline.common.outputs import write_text_atomic
from pipeline.recipe import Recipe

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "recipe-reference.md"

HEADER = """# Recipe reference

Every key a recipe may hold, its type, its default and what it does. A key not listed here is an error when the
recipe is read. This file is written from the schema (`pipeline/recipe.py`, `pipeline/recipe_sections.py`,
`benchmarks/settings.py`) by `.venv/bin/python -m pipeline.recipe_reference`; `tests/test_recipe_reference.py` fails
when it differs from the schema. `pipeline validate RECIPE` prints a recipe with every default filled in.
"""


def type_name(annotation) -> str:
    """A field's type as a recipe writer reads it: ``dass | wanda``, ``int | null``, ``list of string``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) if isinstance(a, bool) else str(a) for a in args)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return " \\| ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if annotation is type(None):
        return "null"
    return {str: "string", int: "int", float: "number", bool: "true \\| false"}.get(annotation, annotation.__name__)


def default_text(field) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


TABLE_HEAD = ["| key | type | default | what it does |", "|---|---|---|---|"]


def _row(key: str, field) -> str:
    return f"| `{key}` | {type_name(field.annotation)} | {default_text(field)} | {_cell(field.description)} |"


def section_rows(model: type[BaseModel], prefix: str) -> list[str]:
    """One row per key; a nested section (a method's parameters: prune.dass) as a row, then its keys."""
    lines = []
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            lines.append(f"| `{prefix}{name}` | section | | {_cell(field.description)} |")
            lines += section_rows(field.annotation, f"{prefix}{name}.")
        else:
            lines.append(_row(f"{prefix}{name}", field))
    return lines


def section_table(model: type[BaseModel], prefix: str) -> list[str]:
    return [*TABLE_HEAD, *section_rows(model, prefix)]


def sections() -> list[tuple[str, type[BaseModel]]]:
    """The recipe's sections: (key, model), in the schema's order."""
    return [(name, field.annotation) for name, field in Recipe.model_fields.items() if _is_section(field.annotation)]


def schema_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key of the schema: ``name``, ``model.source``, ``prune.dass.alpha``, ..."""
    keys = []
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            keys += schema_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def render() -> str:
    lines = [HEADER, "## Top level", "", *TABLE_HEAD]
    lines += [_row(name, field) for name, field in Recipe.model_fields.items() if not _is_section(field.annotation)]
    for name, model in sections():
        lines += ["", f"## `{name}`", "", _cell(model.__doc__), "", *section_table(model, f"{name}.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.recipe_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the schema")
    parser.add_argument("--out", type=Path, default=REFERENCE)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'matches the schema' if same else 'differs from the schema: rerun without --check'}")
        return 0 if same else 1
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
