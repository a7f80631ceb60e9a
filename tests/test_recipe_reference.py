"""docs/recipe-reference.md is the schema's: every key listed, every key described, the file as the command writes it."""

from pipeline.recipe_reference import REFERENCE, main, render, schema_keys, sections


def test_the_committed_reference_is_what_the_schema_writes():
    assert REFERENCE.read_text(encoding="utf-8") == render(), \
        "docs/recipe-reference.md differs from the schema — fix: .venv/bin/python -m pipeline.recipe_reference"


def test_every_schema_key_has_a_line_and_a_description():
    text = REFERENCE.read_text(encoding="utf-8")
    keys = schema_keys()
    assert {"model.revision", "prune.sequential", "prune.streaming", "evaluation.dense_baseline",
            "export.external_data", "export.share_weights", "export.bounded_memory", "export.smoke_prompt",
            "export.smoke_tokens", "benchmark.gguf_types", "output_dir", "prune.dass.alpha"} <= set(keys)
    missing = [key for key in keys if f"| `{key}` |" not in text]
    assert not missing, f"keys without a line in the reference: {missing}"
    undescribed = [f"{name}.{key}" for name, model in sections() for key, field in model.model_fields.items()
                   if not (field.description or "").strip()]
    assert not undescribed, f"schema keys with no description: {undescribed}"


def test_check_fails_when_a_key_is_missing_from_the_file(tmp_path, capsys):
    out = tmp_path / "reference.md"
    out.write_text("".join(line for line in render().splitlines(keepends=True) if "`prune.dass.alpha`" not in line))
    assert main(["--check", "--out", str(out)]) == 1
    assert main(["--out", str(out)]) == 0 and main(["--check", "--out", str(out)]) == 0
    assert "matches the schema" in capsys.readouterr().out
