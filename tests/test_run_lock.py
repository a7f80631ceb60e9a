"""One run per folder at a time: real `pipeline run` processes on one folder, with a toy stage that holds the
run until the test lets it go (the stage table is the only thing the script changes)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.common.lock import LOCK_FILE, RunLock

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''
import sys, time
from pathlib import Path
from pipeline import report, resume
from pipeline.common.outputs import read_json, write_json_atomic
from pipeline.stages.stage import Stage

gate = Path(sys.argv[1])

def hold(ctx):
    partial = ctx.run_dir / ".held.json.inflight.tmp"  # what a stage has under way
    partial.write_text("half")
    (gate / "started").write_text(str(__import__("os").getpid()))
    while not (gate / "go").exists():
        time.sleep(0.05)
    partial.unlink()
    write_json_atomic(ctx.run_dir / "held.json", {"pid": __import__("os").getpid()})

HOLD = Stage(name="hold", about="waits for the test", sections=("name",), outputs=("held.json",), reads=(),
             applies=lambda recipe: True, estimate=lambda shapes, recipe: (0, 0), run=hold,
             summary=lambda recipe, run_dir: {"held": read_json(run_dir / "held.json", "rerun")})
resume.STAGES = report.STAGES = (HOLD,)

from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
'''


@pytest.fixture
def setup(tmp_path):
    recipe = tmp_path / "held.yaml"
    recipe.write_text(yaml.safe_dump({"name": "held", "output_dir": str(tmp_path / "run"), "model": {"source": "unused"},
                                      "prune": {"method": "none"}, "evaluation": {"enabled": False}}))
    (tmp_path / "gate").mkdir()
    return tmp_path, recipe


def start(tmp_path, recipe, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "gate"), "run", str(recipe), "--no-progress",
                             "--skip-preflight", *extra], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, what, seconds=120):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def started_by(tmp_path, proc):
    wait_for(lambda: (tmp_path / "gate" / "started").is_file() or proc.poll() is not None, "the first run's stage")
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return int((tmp_path / "gate" / "started").read_text())


def test_a_second_run_on_the_same_folder_refuses_and_the_first_finishes_intact(setup):
    tmp_path, recipe = setup
    first = start(tmp_path, recipe)
    started_by(tmp_path, first)
    second = start(tmp_path, recipe)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"is in use by another pipeline run (PID {first.pid})" in errors[0], err
    assert "--wait" in errors[0]
    assert first.poll() is None, "the refused run must not disturb the running one"
    assert (tmp_path / "run" / ".held.json.inflight.tmp").is_file(), "nor clean up its work under way"
    (tmp_path / "gate" / "go").write_text("")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "held.json").read_text()) == {"pid": first.pid}
    assert json.loads((run / "summary.json").read_text())["stages"]["hold"].startswith("ran")
    assert not (run / LOCK_FILE).exists(), "the lock goes when its run ends"


def test_a_lock_left_by_a_killed_run_is_taken_over(setup):
    tmp_path, recipe = setup
    first = start(tmp_path, recipe)
    started_by(tmp_path, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    run = tmp_path / "run"
    assert (run / LOCK_FILE).read_text().strip() == str(first.pid), "the killed run leaves its lock file behind"
    (tmp_path / "gate" / "go").write_text("")
    second = start(tmp_path, recipe)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    assert f"took over the lock of {run}, left by PID {first.pid}" in (run / "pipeline.log").read_text()
    assert json.loads((run / "held.json").read_text()) == {"pid": second.pid}


def test_wait_starts_when_the_holder_is_done(setup):
    tmp_path, recipe = setup
    first = start(tmp_path, recipe)
    started_by(tmp_path, first)
    second = start(tmp_path, recipe, "--wait")
    lines = []
    for line in second.stderr:  # our log lines, unbuffered: the waiting notice comes before the holder ends
        lines.append(line)
        if "waiting for it to finish" in line:
            break
    assert f"is in use by PID {first.pid}: waiting" in lines[-1], "".join(lines)
    time.sleep(1)
    assert second.poll() is None and first.poll() is None
    (tmp_path / "gate" / "go").write_text("")
    assert first.wait(timeout=120) == 0
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"] == {"hold": "skipped (complete)"}, "the waiter plans after the holder is done"
    assert json.loads((tmp_path / "run" / "held.json").read_text()) == {"pid": first.pid}


def test_a_refused_or_failed_run_leaves_no_folder_it_created(tmp_path):
    with RunLock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "a").exists()
    with RunLock(tmp_path / "c"):
        (tmp_path / "c" / "kept.json").write_text("{}")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["kept.json"]
