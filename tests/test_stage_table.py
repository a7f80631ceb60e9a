"""The stage table is the only place that names stages: a stage added to it runs, resumes, is summarised and
reported with no other change; and the table's declarations are consistent."""

import json

import pytest

from conftest import save_checkpoint, tiny_model
from pipeline import report, resume
from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.recipe import parse_recipe
from pipeline.runner import run_recipe
from pipeline.stages import STAGES
from pipeline.stages.stage import Stage

TEXT = " ".join(f"word{i % 37} and more text number {i}." for i in range(2000))


def test_each_stage_depends_on_the_sections_of_the_stages_it_reads():
    by_name = {s.name: s for s in STAGES}
    for position, stage in enumerate(STAGES):
        for name in stage.reads:
            assert name in [s.name for s in STAGES[:position]], f"{stage.name} reads {name}, which runs after it"
            assert set(by_name[name].sections) <= set(stage.sections), (stage.name, name)


def _count_run(ctx):
    (ctx.run_dir / "counted.json").write_text("partial")  # replaced atomically below, as every stage does
    write_json_atomic(ctx.run_dir / "counted.json", {"characters": len(ctx.recipe.name)})


COUNT = Stage(name="count", about="a stage added by one line", sections=("name",), outputs=("counted.json",),
              reads=(), applies=lambda r: True, estimate=lambda shapes, recipe: (0, 0), run=_count_run,
              summary=lambda recipe, run_dir: {"count": read_json(run_dir / "counted.json", "rerun")},
              report=lambda summary: ["## Count", "", f"{summary['count']['characters']} characters"])


@pytest.fixture
def with_count_stage(monkeypatch):
    table = (*STAGES, COUNT)
    monkeypatch.setattr(resume, "STAGES", table)
    monkeypatch.setattr(report, "STAGES", table)


def test_a_stage_added_to_the_table_runs_resumes_and_reports(tmp_path, with_count_stage):
    save_checkpoint(tmp_path / "tiny", tiny_model("llama"))
    (tmp_path / "text.txt").write_text(TEXT)
    recipe = parse_recipe({
        "name": "counted", "output_dir": str(tmp_path / "run"),
        "model": {"source": str(tmp_path / "tiny"), "dtype": "float32"},
        "calibration": {"dataset": "file", "path": str(tmp_path / "text.txt"), "num_samples": 2, "seq_len": 16},
        "prune": {"method": "magnitude", "sparsity": 0.5},
        "evaluation": {"enabled": False},
    })
    first = run_recipe(recipe, progress=False)
    assert first["stages"]["count"].startswith("ran") and first["count"] == {"characters": 7}
    assert "## Count" in (tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / ".stages" / "count.json").read_text())["files"] == {"counted.json": 22}
    second = run_recipe(recipe, progress=False)
    assert second["stages"] == {"prune": "skipped (complete)", "count": "skipped (complete)"}
    assert run_recipe(recipe, progress=False, start_from="count")["stages"]["count"].startswith("ran")
