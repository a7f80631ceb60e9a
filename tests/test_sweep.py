"""`pipeline sweep`: one resumable run folder per grid point, the dense baseline computed once and copied, one table."""

import json
import shlex

import pytest
import yaml

from conftest import run_cli, tiny_recipe_file, write_recipe
from pipeline.common.errors import PipelineError
from pipeline.sweep import parse_grid, point_name, run_sweep


@pytest.fixture
def recipe_file(tmp_path):
    return tiny_recipe_file(tmp_path, "swept", {"method": "dass", "sparsity": 0.5, "scope": "mlp"})


def statuses(result):
    return {row["point"]: {name: status.split(" ")[0] for name, status in row["stages"].items()}
            for row in result["table"]["points"]}


def test_a_sweep_resumes_skipping_done_points_shares_the_baseline_and_tabulates(recipe_file, tmp_path):
    sweep = tmp_path / "run" / "sweep"
    first = run_sweep(recipe_file, ["prune.method=magnitude", "prune.sparsity=0.5"], progress=False)
    assert statuses(first) == {"method=magnitude,sparsity=0.5": {"baseline": "ran", "prune": "ran", "evaluate": "ran"}}

    # the sweep grows by one point: the done point is skipped, the new one copies the dense baseline
    second = run_sweep(recipe_file, ["prune.method=magnitude,wanda", "prune.sparsity=0.5"], progress=False)
    assert statuses(second) == {
        "method=magnitude,sparsity=0.5": {"baseline": "skipped", "prune": "skipped", "evaluate": "skipped"},
        "method=wanda,sparsity=0.5": {"baseline": "copied", "prune": "ran", "evaluate": "ran"},
    }
    done, new = sweep / "method=magnitude,sparsity=0.5", sweep / "method=wanda,sparsity=0.5"
    assert (new / "perplexity_dense.json").read_bytes() == (done / "perplexity_dense.json").read_bytes()
    assert yaml.safe_load((new / "recipe.yaml").read_text())["prune"]["method"] == "wanda"
    assert yaml.safe_load((new / "recipe.yaml").read_text())["output_dir"] == str(new)

    table = json.loads((sweep / "sweep.json").read_text())
    assert [row["point"] for row in table["points"]] == ["method=magnitude,sparsity=0.5", "method=wanda,sparsity=0.5"]
    assert [row["method"] for row in table["points"]] == ["magnitude", "wanda"]
    dense = {row["perplexity_dense"] for row in table["points"]}
    assert len(dense) == 1 and None not in dense
    pruned = [row["perplexity"] for row in table["points"]]
    assert pruned == [json.loads((d / "perplexity.json").read_text())["pruned"]["perplexity"] for d in (done, new)]
    assert all(row["sparsity_achieved"] == pytest.approx(0.5) for row in table["points"])
    markdown = (sweep / "sweep.md").read_text()
    assert len([line for line in markdown.splitlines() if line.startswith("| method=")]) == 2
    assert (sweep / "perplexity_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    third = run_sweep(recipe_file, ["prune.method=magnitude,wanda", "prune.sparsity=0.5"], progress=False)
    assert all(set(stages.values()) == {"skipped"} for stages in statuses(third).values())
    assert not (sweep / ".lock").exists()

    # each point records the `pipeline run` that makes it alone, first in its report: run as written, it finds
    # the point's folder complete for the same recipe (nothing reruns)
    command = json.loads((new / "summary.json").read_text())["command"]
    assert command.startswith("pipeline run ") and "prune.method=wanda" in command
    assert (new / "report.md").read_text().splitlines()[3] == command
    rerun = run_cli(*shlex.split(command)[1:], "--no-progress", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert all(status.split(" ")[0] == "skipped"
               for status in json.loads((new / "summary.json").read_text())["stages"].values())


def test_point_names_use_the_last_part_of_each_key_unless_two_share_it():
    assert point_name([("prune.method", "dass"), ("prune.sparsity", "2:4")], ["prune.method", "prune.sparsity"]) \
        == "method=dass,sparsity=2:4"
    keys = ["calibration.dataset", "evaluation.dataset"]
    assert point_name(list(zip(keys, ["c4", "wikitext2"])), keys) == "calibration.dataset=c4,evaluation.dataset=wikitext2"


@pytest.mark.parametrize("grid, overrides, expected", [
    ([], [], "a sweep needs at least one --grid"),
    (["prune.method"], [], "--set prune.method: not of the form section.key=value"),
    (["prune.method=dass,"], [], "--grid prune.method=dass,: an empty value"),
    (["prune.method=dass", "prune.method=wanda"], [], "prune.method is given twice"),
    (["prune.method=dass"], ["prune.method=wanda"], "prune.method is given twice"),
])
def test_bad_grids_are_refused(grid, overrides, expected):
    with pytest.raises(PipelineError, match=expected.replace("[", r"\[")):
        parse_grid(grid, overrides)


def test_a_bad_grid_value_is_one_line_before_any_point_runs(workspace, tmp_path):
    path = write_recipe(workspace, "bad-sweep")
    proc = run_cli("sweep", str(path), "--grid", "prune.sparsity=0.5,5:4", "--output-dir", str(tmp_path / "out"),
                   cwd=workspace, log_dir=tmp_path / "logs")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: --grid prune.sparsity value 5:4: prune.sparsity: sparsity '5:4' is not a valid N:M pattern"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_table_opens_with_table_1s_shape_a_line_per_method_a_column_per_sparsity():
    from pipeline.sweep_table import render_markdown

    def point(method, sparsity, ppl, achieved):
        return {"point": f"method={method},sparsity={sparsity}", "values": {"prune.method": method,
                "prune.sparsity": sparsity}, "method": method, "sparsity": sparsity, "scope": "mlp",
                "dataset": "embedded", "perplexity_dense": 12.08, "perplexity": ppl, "sparsity_achieved": achieved,
                "stages": {}, "run_dir": "x"}

    table = {"recipe": "r.yaml", "overrides": [], "grid": {"prune.method": ["dass", "wanda"],
                                                             "prune.sparsity": ["0.5", "2:4"]},
             "points": [point("dass", "0.5", 19.464, 0.5), point("dass", "2:4", 37.806, 0.5),
                        point("wanda", "0.5", 19.481, 0.5)]}  # wanda 2:4 missing: an empty cell, not a shifted one
    lines = render_markdown(table).splitlines()
    start = lines.index("| method | 0.5 | 2:4 |")
    assert lines[start + 2:start + 5] == ["| dense | 12.080 | |",
                                          "| dass | 19.464 (0.5000) | 37.806 (0.5000) |",
                                          "| wanda | 19.481 (0.5000) |  |"]
    del table["grid"]["prune.sparsity"]  # no sparsity on the grid: no pivot, the per-point table only
    assert not any(line.startswith("| method | 0.5") for line in render_markdown(table).splitlines())
