"""Per-stage peak RSS: measured for the block alone, child processes included, and recorded for every stage."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from pipeline.common.peak_memory import PeakMemory

MiB = 2**20


def test_peak_of_this_process_is_the_blocks_own():
    big = np.ones(300 * MiB // 8)  # touched: resident before the block starts
    del big
    with PeakMemory() as first:
        block = np.ones(200 * MiB // 8)
        del block
    with PeakMemory() as second:  # the 300 MiB before and the 200 MiB of the first block do not count here
        small = np.ones(20 * MiB // 8)
        del small
    a, b = first.result(), second.result()
    assert a["self_exact"], "Linux: the kernel high-water mark can be reset"
    assert a["peak_rss_self_bytes"] - b["peak_rss_self_bytes"] > 150 * MiB


def test_peak_includes_child_processes():
    code = "import numpy, time; a = numpy.ones(250 * 2**20 // 8); time.sleep(1.0)"
    with PeakMemory(interval=0.05) as peak:
        subprocess.run([sys.executable, "-c", code], check=True)
    r = peak.result()
    assert r["peak_rss_children_bytes"] > 250 * MiB
    assert r["peak_rss_bytes"] >= r["peak_rss_children_bytes"] + 0.5 * r["peak_rss_self_bytes"]


def test_every_stage_that_ran_has_its_peak_rss_in_summary_and_report(tmp_path):
    """A run's summary.json and report.md give each stage's wall time and peak RSS (fails if one is missing)."""
    from conftest import save_checkpoint, tiny_model
    from pipeline.recipe import load_recipe
    from pipeline.runner import run_recipe

    source = save_checkpoint(tmp_path / "model", tiny_model())
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    path = tmp_path / "r.yaml"
    path.write_text(f"""name: resources
output_dir: {tmp_path / 'run'}
model: {{source: {source}, dtype: float32}}
calibration: {{dataset: file, path: {tmp_path / 'text.txt'}, num_samples: 4, seq_len: 32}}
prune: {{method: dass, sparsity: 0.5}}
evaluation: {{dataset: file, path: {tmp_path / 'text.txt'}, context_length: 64, max_windows: 2}}
""")
    run_recipe(load_recipe(path), progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    ran = [name for name, status in summary["stages"].items() if status.startswith("ran")]
    assert ran == ["baseline", "prune", "evaluate"]
    for name in ran:
        r = summary["resources"][name]
        assert r["seconds"] > 0 and r["peak_rss_bytes"] > 100 * MiB and r["estimated_ram_bytes"] > 0, name
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Resources per stage" in report and all(f"| {name} | " in report for name in ran)
