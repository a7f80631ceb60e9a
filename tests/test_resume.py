"""Resumable runs on a tiny model: which stages a second `pipeline run` skips, which it redoes, and why."""

import json
import logging
import os

import pytest

from conftest import save_checkpoint, tiny_model
from pipeline.common.errors import PipelineError
from pipeline.recipe import parse_recipe
from pipeline.runner import run_recipe
from pipeline.resume import plan, remove_leftovers

TEXT = " ".join(f"word{i % 37} and more text number {i}." for i in range(3000))


@pytest.fixture
def base(tmp_path):
    save_checkpoint(tmp_path / "tiny", tiny_model("llama"))
    (tmp_path / "text.txt").write_text(TEXT)
    return {
        "name": "resume",
        "output_dir": str(tmp_path / "run"),
        "model": {"source": str(tmp_path / "tiny"), "dtype": "float32"},
        "calibration": {"dataset": "file", "path": str(tmp_path / "text.txt"), "num_samples": 4, "seq_len": 32},
        "prune": {"method": "wanda", "sparsity": 0.5, "scope": "attention+mlp"},
        "evaluation": {"dataset": "file", "path": str(tmp_path / "text.txt"), "context_length": 64, "max_windows": 2},
    }


def with_changes(data, **changes):
    data = json.loads(json.dumps(data))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return parse_recipe(data)


def ran(summary):
    return sorted(name for name, status in summary["stages"].items() if status.startswith("ran"))


def mtimes(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
            and ".stages" not in p.parts and p.name not in ("summary.json", "report.md", "recipe.yaml", "pipeline.log")}


def test_second_run_skips_every_complete_stage_and_rewrites_nothing(base, tmp_path):
    first = run_recipe(parse_recipe(base), progress=False)
    assert ran(first) == ["baseline", "evaluate", "prune"]
    before = mtimes(tmp_path / "run")
    second = run_recipe(parse_recipe(base), progress=False)
    assert ran(second) == []
    assert mtimes(tmp_path / "run") == before
    assert second["perplexity"] == first["perplexity"]
    assert second["sparsity_achieved"] == first["sparsity_achieved"]
    assert "skipped (complete)" in (tmp_path / "run" / "report.md").read_text()


def test_a_changed_section_reruns_exactly_the_stages_that_depend_on_it(base):
    run_recipe(parse_recipe(base), progress=False)
    assert ran(run_recipe(with_changes(base, evaluation__max_windows=1), progress=False)) == ["baseline", "evaluate"]
    summary = run_recipe(with_changes(base, evaluation__max_windows=1, prune__sparsity=0.6), progress=False)
    assert ran(summary) == ["evaluate", "prune"]  # the dense baseline does not read the pruned model
    assert summary["sparsity_achieved"]["overall"] == pytest.approx(0.6, abs=0.01)


def test_force_and_from(base):
    recipe = parse_recipe(base)
    run_recipe(recipe, progress=False)
    assert ran(run_recipe(recipe, progress=False, force=True)) == ["baseline", "evaluate", "prune"]
    assert ran(run_recipe(recipe, progress=False, start_from="evaluate")) == ["evaluate"]
    with pytest.raises(PipelineError, match="--from export: this recipe has no such stage"):
        run_recipe(recipe, progress=False, start_from="export")


def test_a_damaged_output_is_redone(base, tmp_path):
    recipe = parse_recipe(base)
    run_recipe(recipe, progress=False)
    weights = tmp_path / "run" / "pruned" / "model-00002-of-00003.safetensors"  # streamed: layer 0's shard
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 100)
    steps = {stage.name: (run, why) for stage, run, why in plan(recipe, tmp_path / "run")}
    assert steps["prune"] == (True, f"pruned/{weights.name} has {weights.stat().st_size} bytes, "
                                    f"{weights.stat().st_size + 100} when the stage finished")
    assert steps["evaluate"] == (True, "prune runs again") and steps["baseline"][0] is False
    (tmp_path / "run" / "perplexity_dense.json").unlink()
    assert ran(run_recipe(recipe, progress=False)) == ["baseline", "evaluate", "prune"]


def test_leftovers_of_a_killed_run_are_removed(base, tmp_path):
    recipe = parse_recipe(base)
    run_recipe(recipe, progress=False)
    run = tmp_path / "run"
    (run / ".pruned.abc123.partial").mkdir()
    (run / ".pruned.abc123.partial" / "model.safetensors").write_bytes(b"half")
    (run / ".perplexity.json.xyz.tmp").write_text("{")
    (run / "pruned" / ".sparsity.json.q.tmp").write_text("{")
    assert sorted(remove_leftovers(run)) == [".perplexity.json.xyz.tmp", ".pruned.abc123.partial",
                                             "pruned/.sparsity.json.q.tmp"]
    assert not [p for p in run.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert (run / "pruned" / "model.safetensors.index.json").is_file()


def test_the_run_log_keeps_every_invocation(base, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    recipe = parse_recipe(base)
    run_recipe(recipe, progress=False)
    run_recipe(recipe, progress=False)
    text = (tmp_path / "run" / "pipeline.log").read_text()
    assert text.count("stage prune: started") == 1 and text.count("stage prune: complete, skipped") == 1


def test_pickled_weights_are_refused_unless_the_recipe_allows_them(base, tmp_path):
    folder = tmp_path / "pickled"
    model = tiny_model("llama")
    model.save_pretrained(folder, safe_serialization=False)
    save_checkpoint(tmp_path / "tok", model)  # tokenizer files
    for name in os.listdir(tmp_path / "tok"):
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            (folder / name).write_bytes((tmp_path / "tok" / name).read_bytes())
    assert not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin"))
    data = json.loads(json.dumps(base))
    data["model"]["source"] = str(folder)
    with pytest.raises(PipelineError, match="holds only pickled weights"):
        run_recipe(parse_recipe(data), progress=False)
    assert not (tmp_path / "run").exists()
    data["model"]["allow_pickle"] = True
    assert ran(run_recipe(parse_recipe(data), progress=False)) == ["baseline", "evaluate", "prune"]
