"""`--set section.key=value` and `--output-dir`: the effective recipe is validated like the file, recorded by the
run and hashed per stage, so a changed override reruns exactly the stages whose sections it changes."""

import json

import pytest
import yaml

from conftest import run_cli, tiny_recipe_file, write_recipe
from pipeline.common.errors import PipelineError
from pipeline.overrides import apply_overrides, load_recipe_with_overrides, parse_value
from pipeline.recipe import load_recipe
from pipeline.runner import run_recipe


@pytest.mark.parametrize("text, value", [("0.6", 0.6), ("2:4", "2:4"), ("8", 8), ("true", True), ("null", None),
                                         ("[onnxruntime]", ["onnxruntime"]), ("wanda", "wanda")])
def test_values_read_as_yaml_with_n_m_kept_as_text(text, value):
    assert parse_value(text) == value


def test_overrides_set_nested_keys_and_create_missing_sections():
    data = {"name": "a", "prune": {"method": "dass"}}
    changed = apply_overrides(data, ["prune.method=wanda", "quantize.enabled=true", "name=b"], output_dir="out/x")
    assert changed == {"name": "b", "prune": {"method": "wanda"}, "quantize": {"enabled": True}, "output_dir": "out/x"}
    assert data == {"name": "a", "prune": {"method": "dass"}}, "the recipe data read from the file is not changed"


@pytest.fixture
def recipe_file(tmp_path):
    return tiny_recipe_file(tmp_path, "over", {"method": "wanda", "sparsity": 0.5, "scope": "attention+mlp"})


def ran(summary):
    return sorted(name for name, status in summary["stages"].items() if status.startswith("ran"))


def test_an_override_is_what_the_run_records_and_hashes(recipe_file, tmp_path):
    plain = load_recipe(recipe_file)
    changed = load_recipe_with_overrides(recipe_file, ["evaluation.max_windows=1"], output_dir=str(tmp_path / "other"))
    assert changed.evaluation.max_windows == 1 and changed.run_dir() == tmp_path / "other"
    assert changed.content_hash() != plain.content_hash()
    summary = run_recipe(changed, progress=False)
    recorded = yaml.safe_load((tmp_path / "other" / "recipe.yaml").read_text())
    assert recorded["evaluation"]["max_windows"] == 1 and recorded["output_dir"] == str(tmp_path / "other")
    assert summary["recipe_hash"] == changed.content_hash()
    assert json.loads((tmp_path / "other" / "summary.json").read_text())["recipe_hash"] == changed.content_hash()
    assert not (tmp_path / "run").exists(), "--output-dir replaces the recipe's output_dir"


def test_a_changed_override_reruns_exactly_the_stages_whose_sections_it_changes(recipe_file):
    def run(*overrides):
        return ran(run_recipe(load_recipe_with_overrides(recipe_file, list(overrides)), progress=False))

    assert run() == ["baseline", "evaluate", "prune"]
    assert run("evaluation.max_windows=1") == ["baseline", "evaluate"]
    assert run("evaluation.max_windows=1") == []
    assert run("evaluation.max_windows=1", "prune.sparsity=0.6") == ["evaluate", "prune"]
    assert run("evaluation.max_windows=2", "prune.sparsity=0.5") == ["baseline", "evaluate", "prune"]


@pytest.mark.parametrize("overrides, expected", [
    (["prune.methd=wanda"], "--set prune.methd=wanda: prune.methd is not a recipe key — fix: keys of prune: method, "),
    (["prune.method=dasss"], "--set prune.method=dasss: prune.method: Input should be 'dass'"),
    (["prune.sparsity=5:4"], "--set prune.sparsity=5:4: prune.sparsity: sparsity '5:4' is not a valid N:M pattern"),
    (["evaluation.max_windows=-1"], "--set evaluation.max_windows=-1: evaluation.max_windows: Input should be greater than 0"),
    (["prunee.method=dass"], "--set prunee.method=dass: prunee is not a recipe key — fix: keys of the recipe's top level"),
    (["prune.sparsity.n=2"], "--set prune.sparsity.n: prune.sparsity is a value, not a section"),
    (["prune.method"], "--set prune.method: not of the form section.key=value"),
])
def test_a_bad_override_is_one_clear_line_before_anything_is_written(workspace, tmp_path, overrides, expected):
    path = write_recipe(workspace, "bad-override")
    args = [a for text in overrides for a in ("--set", text)]
    for command in ("run", "validate"):
        proc = run_cli(command, str(path), *args, "--output-dir", str(tmp_path / "out"), cwd=workspace,
                       log_dir=tmp_path / "logs")
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (workspace / "runs" / "bad-override").exists()


def test_validate_prints_the_recipe_with_its_overrides(workspace, tmp_path):
    path = write_recipe(workspace, "ok-override")
    proc = run_cli("validate", str(path), "--set", "prune.sparsity=4:8", "--set", "export.enabled=true",
                   "--output-dir", str(tmp_path / "elsewhere"), cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout.split("\n", 1)[1])
    assert shown["prune"]["sparsity"] == "4:8" and shown["export"]["enabled"] is True
    assert shown["output_dir"] == str(tmp_path / "elsewhere")
