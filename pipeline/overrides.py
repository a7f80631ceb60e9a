"""Changes to a recipe given on the command line: ``--set section.key=value`` (repeatable) and ``--output-dir``.

Each value is read as a YAML scalar (or flow list) as it would be in the recipe file — ``0.6``, ``true``,
``null``, ``[onnxruntime]`` — except that an N:M sparsity such as ``2:4`` stays the string it means (YAML
1.1 reads it as the base-60 number 124). The recipe with its overrides is validated by the recipe's own
schema (pipeline/recipe.py) before anything loads; a problem caused by an override names the ``--set``
that caused it and the keys that exist there. The effective recipe is what a run records in
RUN/recipe.yaml and what its stage hashes are computed from (pipeline/resume.py), so changing an
override reruns exactly the stages whose sections it changes.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.common.errors import PipelineError
from pipeline.recipe import Recipe, format_validation_error, read_recipe_data

SET_HELP = "write --set section.key=value, e.g. --set prune.sparsity=0.6 or --set evaluation.max_windows=8"


class _ValueLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers, so that 2:4 is a string."""


_ValueLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if not (tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and regexp.match("2:4"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
        ("tag:yaml.org,2002:int", r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$",
         "-+0123456789"),
        ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789.")):
    _ValueLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it (2:4 stays a string)."""
    try:
        return yaml.load(text, Loader=_ValueLoader)
    except yaml.YAMLError:
        return text


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"prune.sparsity=0.6"`` -> ``(("prune", "sparsity"), 0.6)``."""
    dotted, equals, value = text.partition("=")
    path = tuple(dotted.strip().split("."))
    if not equals or not all(path):
        raise PipelineError(f"--set {text}: not of the form section.key=value", SET_HELP)
    return path, parse_value(value.strip())


def apply_overrides(data: dict, overrides: list[str], output_dir: str | None = None) -> dict:
    """A copy of the recipe data with every override set (sections created where the file has none)."""
    data = copy.deepcopy(data)
    changes = [parse_override(text) for text in overrides or []]
    if output_dir is not None:
        changes.append((("output_dir",), str(output_dir)))
    for path, value in changes:
        node = data
        for depth, key in enumerate(path[:-1]):
            child = node.setdefault(key, {})
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(path[:depth + 1])
                raise PipelineError(f"--set {'.'.join(path)}: {where} is a value, not a section",
                                    f"set {where} itself, e.g. --set {where}=VALUE")
            node = child
        node[path[-1]] = value
    return data


def known_keys(path: tuple[str, ...]) -> list[str]:
    """The keys the schema has beside ``path``'s last part (those of its section, or the top-level ones)."""
    model: type[BaseModel] = Recipe
    for key in path[:-1]:
        field = model.model_fields.get(key)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def _override_errors(exc: ValidationError, overrides: list[str], output_dir: str | None,
                     labels: list[str] | None = None) -> list[tuple[str, str]]:
    """(problem, fix) for each schema error that an override caused (its key path and the error's meet)."""
    labels = labels or [f"--set {text}" for text in overrides]
    given = [(parse_override(text)[0], label) for text, label in zip(overrides, labels)]
    if output_dir is not None:
        given.append((("output_dir",), f"--output-dir {output_dir}"))
    found = []
    for err in exc.errors():
        loc = tuple(str(part) for part in err["loc"])
        for path, flag in given:
            n = min(len(loc), len(path))
            if n and loc[:n] == path[:n]:
                where = ".".join(loc[:len(path)] if len(loc) >= len(path) else loc)
                if err["type"] == "extra_forbidden":
                    section = ".".join(loc[:-1]) or "the recipe's top level"
                    found.append((f"{flag}: {where} is not a recipe key",
                                  f"keys of {section}: {', '.join(known_keys(loc))}"))
                else:
                    message = err["msg"].removeprefix("Value error, ").partition(" — fix: ")
                    found.append((f"{flag}: {where}: {message[0]}",
                                  message[2] or f"give {where} a valid value (`pipeline validate RECIPE` "
                                                "prints every key with its default)"))
                break
    return found


def load_recipe_with_overrides(path: str | Path, overrides: list[str] | None = None,
                               output_dir: str | None = None, labels: list[str] | None = None) -> Recipe:
    """The recipe file with its command-line overrides, validated as one recipe. ``labels`` name each override
    in errors as the user gave it (default ``--set KEY=VALUE``; a sweep says ``--grid ...``)."""
    overrides = list(overrides or [])
    data = apply_overrides(read_recipe_data(path), overrides, output_dir)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        caused = _override_errors(exc, overrides, output_dir, labels)
        if caused:
            raise PipelineError("; ".join(p for p, _ in caused), "; ".join(dict.fromkeys(f for _, f in caused))) from None
        raise format_validation_error(Path(path), exc) from None
