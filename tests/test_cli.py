"""The real `pipeline` CLI in a child process on good input: the run folder it writes, the report and
benchmark commands. Bad input: tests/test_bad_inputs.py."""

import json

import pytest
from safetensors.torch import load_file

from conftest import run_cli, write_recipe as recipe


def test_validate_prints_the_full_recipe(workspace):
    proc = run_cli("validate", str(recipe(workspace, "ok-validate")), cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout and "alpha: 0.5" in proc.stdout
    assert "# note:" not in proc.stdout
    skipped = recipe(workspace, "ok-validate-note", prune__reconstruct="block", prune__block={"steps": 1})
    proc = run_cli("validate", str(skipped), cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert "# note: prune.block trains on 2 windows per layer" in proc.stdout and "steps to 2" in proc.stdout


def test_validate_into_a_pipe_nobody_reads_is_quiet(workspace):
    """pipeline validate RECIPE | head: the reader leaves early; no traceback, the shell's SIGPIPE status."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIPELINE_LOG_DIR": str(workspace / "logs")}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "validate", str(recipe(workspace, "ok-pipe"))],
                          cwd=workspace, env=env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_help_explains_the_commands(workspace):
    proc = run_cli("--help", cwd=workspace)
    assert proc.returncode == 0 and "run" in proc.stdout and "validate" in proc.stdout and "recipe" in proc.stdout


def test_every_command_prints_its_help(workspace):
    """argparse formats help with %: a setting's description with a literal % broke ``pipeline benchmark --help``."""
    import argparse

    from pipeline.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "benchmark" in commands
    for name, sub in commands.items():
        assert sub.format_help(), name


def test_run_writes_a_complete_run_folder(workspace):
    path = recipe(workspace, "ok-run")
    proc = run_cli("run", str(path), "--no-progress", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    out = workspace / "runs" / "ok-run"
    assert {"recipe.yaml", "summary.json", "perplexity.json", "report.md", "pruned"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
    report = (out / "report.md").read_text().splitlines()
    assert report[2:5] == ["```", f"pipeline run {path} --no-progress", "```"], "the report starts with its command"
    assert json.loads((out / "summary.json").read_text())["command"] == f"pipeline run {path} --no-progress"
    weights = {k: v for shard in (out / "pruned").glob("model*.safetensors") for k, v in load_file(shard).items()}
    assert len(list((out / "pruned").glob("model-*-of-00003.safetensors"))) == 3, "streamed: one shard per layer"
    gate = weights["model.layers.1.mlp.gate_proj.weight"]
    assert ((gate != 0).t().reshape(gate.shape[1], -1, 4).sum(-1) == 2).all(), "2:4 along the output dim survives saving"
    down = weights["model.layers.0.mlp.down_proj.weight"]
    assert ((down != 0).reshape(down.shape[0], -1, 4).sum(-1) == 2).all()
    table = json.loads((out / "pruned" / "sparsity.json").read_text())
    assert table["summary"]["overall"] == pytest.approx(0.5)
    assert len(table["layers"]) == 2 * 7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["perplexity"]["pruned"]["perplexity"] > 0
    assert "perplexity dense" in proc.stdout and "sparsity: overall 0.5000" in proc.stdout
    assert "| dass 2:4 |" in (out / "report.md").read_text()


def test_run_with_export_ends_in_an_artifact_both_engines_load(workspace):
    path = recipe(workspace, "ok-export", export__enabled=True, export__max_sequence_length=128, export__smoke_tokens=8)
    proc = run_cli("run", str(path), "--no-progress", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    out = workspace / "runs" / "ok-export"
    summary = json.loads((out / "summary.json").read_text())
    smoke = summary["export"]["smoke"]
    assert smoke["deepsparse"]["ids"] == smoke["onnxruntime"]["ids"] and len(smoke["onnxruntime"]["ids"]) == 8
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "ok-export" and manifest["method"] == "dass"
    assert manifest["sparsity"]["overall_decoder_linears"] == pytest.approx(0.5)
    assert "## Artifact" in (out / "report.md").read_text()
    # the export's third-party warnings are in the run's log, not on the terminal (only our lines are there)
    assert "TracerWarning" in (out / "pipeline.log").read_text()
    assert "Warning" not in proc.stderr
    assert all(" INFO pipeline." in line or " INFO export." in line for line in proc.stderr.splitlines()), proc.stderr


def test_run_with_benchmark_then_report_and_benchmark_commands(workspace, tmp_path):
    """export + benchmark stage on a tiny model with real engines (short timings), then
    `pipeline report` regenerates the reports and `pipeline benchmark` compares two artifacts."""
    path = recipe(workspace, "ok-bench", export__enabled=True, export__max_sequence_length=128, export__smoke_test=False,
                  benchmark__enabled=True, benchmark__sequence_length=64, benchmark__prefill_length=8,
                  benchmark__warmup_seconds=0.5, benchmark__seconds=1, benchmark__repeats=1)
    proc = run_cli("run", str(path), "--no-progress", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    out = workspace / "runs" / "ok-bench"
    bench = out / "benchmark"
    assert {"results.json", "report.md", "tokens_vs_sparsity.png"} <= {p.name for p in bench.iterdir()}
    results = json.loads((bench / "results.json").read_text())
    assert results["partial"] is None and not results["failures"]
    cells = {(c["engine"], c["mode"]) for c in results["summary"]["cells"]}
    assert cells == {(e, m) for e in ("deepsparse", "onnxruntime", "pytorch") for m in ("decode", "prefill")}
    assert results["machine"]["deepsparse"]["isa"] in ("avx2", "avx512", "avx512_vnni", "neon")
    for m in results["measurements"]:
        assert m["tokens_per_s"] > 0 and m["iterations"] >= 3
    assert "## Throughput" in (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    mine = {(c["engine"], c["mode"]) for c in results["summary"]["cells"] if c["artifact"] == "ok-bench"}
    assert set(summary["benchmark"]["tokens_per_s"]) == {f"{e} {m}" for e, m in mine}
    # PyTorch measures once per depth (a dense peer): the run's dense artifact, benchmarked beside the pruned one
    assert {c["engine"] for c in results["summary"]["cells"] if c["artifact"] == "ok-bench-dense"} == {
        "deepsparse", "onnxruntime", "pytorch"}
    # the terminal ends with the figures: tokens/s dense -> pruned with the speedup, per engine and mode
    printed = [line for line in proc.stdout.splitlines() if line.startswith("tokens/s deepsparse decode: dense ")]
    assert len(printed) == 1 and " -> pruned " in printed[0] and printed[0].endswith("x)"), proc.stdout

    (bench / "report.md").unlink()
    (out / "report.md").unlink()
    proc = run_cli("report", str(out), cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and "Raw measurements" in (bench / "report.md").read_text()

    dense = recipe(workspace, "ok-bench-dense", prune__method="none", export__enabled=True,
                   export__max_sequence_length=128, export__smoke_test=False, evaluation__enabled=False)
    assert run_cli("run", str(dense), "--no-progress", cwd=workspace).returncode == 0
    proc = run_cli("benchmark", str(workspace / "runs" / "ok-bench-dense"), str(out), "--out", str(tmp_path / "ab"),
                   "--engines", "deepsparse", "--modes", "decode", "--sequence-length", "64", "--seconds", "1",
                   "--warmup-seconds", "1", "--repeats", "2", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    ab = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert [a["key"] for a in ab["artifacts"]] == ["ok-bench-dense", "ok-bench"]
    assert [(m["round"], m["artifact"]) for m in ab["measurements"]] == [
        (1, "ok-bench-dense"), (1, "ok-bench"), (2, "ok-bench-dense"), (2, "ok-bench")]
    speedup = ab["summary"]["speedups"][0]
    assert speedup["artifact"] == "ok-bench" and speedup["dense"] == "ok-bench-dense" and speedup["per_round"]["n"] == 2
