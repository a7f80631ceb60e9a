"""Ray as the executor of `pipeline sweep` and of `pipeline benchmark --every-cpu-kind`, on a real local cluster.

The cluster, one for the module: a head node offering no CPU (so no point runs beside the driver) and two worker
nodes of one CPU each, labelled as two CPU kinds, every node a `ray start --block` process in a session of its own with its own temp dir and ports, all on the
loopback address 127.0.0.2 (Ray replaces 127.0.0.1 by the machine's outward address); the teardown kills each node's process tree by PID (never `ray stop`, which would stop every Ray on the
machine). The Ray tests are skipped when Ray is not installed (`./install.sh --with-ray` installs it); the refusal
without Ray is tested either way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import run_cli, write_recipe

GRID = ["--grid", "prune.method=dass,wanda", "--grid", "prune.sparsity=0.5,2:4"]
POINTS = ["method=dass,sparsity=0.5", "method=dass,sparsity=2:4", "method=wanda,sparsity=0.5",
          "method=wanda,sparsity=2:4"]


HOST = "127.0.0.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A Ray cluster of separate processes on this machine: ``nodes[0]`` the head, then the workers."""

    def __init__(self, workers: list[dict]):
        self.workers = workers
        self.root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        self.port = _free_port()
        self.address = f"{HOST}:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                    # a killed node is declared dead in about a second, not 15 s
                    "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "2",
                    "RAY_health_check_timeout_ms": "500"}
        self.nodes: list[subprocess.Popen] = []
        self.started = 0
        try:
            self.nodes.append(self._start(["--head", f"--port={self.port}", "--num-cpus=0",
                                           "--include-dashboard=false", f"--dashboard-port={_free_port()}"], "head"))
            self._wait_for_head()
            for i in range(len(workers)):
                self.nodes.append(self._start_worker(i))
            self._wait_for_nodes(1 + len(workers))
        except BaseException:
            self.stop()
            raise

    def _start_worker(self, i: int) -> subprocess.Popen:
        labels = ",".join(f"{k}={v}" for k, v in self.workers[i].get("labels", {}).items())
        self.started += 1
        return self._start([f"--address={self.address}", "--num-cpus=1", *([f"--labels={labels}"] if labels else [])],
                           f"w{i}-{self.started}")

    def revive(self) -> None:
        """Start a worker node again in place of each one that was killed."""
        dead = [i for i, node in enumerate(self.nodes[1:]) if node.poll() is not None]
        for i in dead:
            self.nodes[1 + i] = self._start_worker(i)
        if dead:
            self._wait_for_nodes(len(self.nodes))

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        ports = [f"--{option}={_free_port()}" for option in
                 ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                  "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]
        ray = Path(sys.executable).with_name("ray")
        with open(self.root / f"{name}.log", "w") as log:
            return subprocess.Popen(
                [str(ray), "start", "--block", f"--node-ip-address={HOST}", f"--temp-dir={self.root / name}",
                 "--disable-usage-stats", "--include-log-monitor=false", f"--object-store-memory={80 * 2**20}",
                 *ports, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_for_head(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the head node did not start: {(self.root / 'head.log').read_text()[-2000:]}")

    def _wait_for_nodes(self, count: int, timeout: float = 180) -> None:
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                 "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env, capture_output=True,
                                  text=True, timeout=120)
            if proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise RuntimeError(f"{count} nodes did not join: " + "".join(
            log.read_text()[-1000:] for log in sorted(self.root.glob("*.log"))))

    def tree(self, node: subprocess.Popen) -> list[psutil.Process]:
        try:
            parent = psutil.Process(node.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def node_of(self, pid: int) -> subprocess.Popen | None:
        return next((n for n in self.nodes[1:] if pid in {p.pid for p in self.tree(n)}), None)

    def kill(self, node: subprocess.Popen) -> None:
        for process in self.tree(node):
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        node.wait(timeout=30)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
        # what a node started and left behind (reparented): only processes naming this cluster's own temp dir
        for process in psutil.process_iter():
            try:
                if str(self.root) in " ".join(process.cmdline()):
                    process.send_signal(signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def module_cluster():
    pytest.importorskip("ray", reason="Ray is not installed (./install.sh --with-ray installs it)")
    made = LocalCluster([{"labels": {"cpu_kind": "kind-a"}}, {"labels": {"cpu_kind": "kind-b"}}])
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def cluster(module_cluster):
    """The module's cluster with both workers alive (a test before may have killed one)."""
    module_cluster.revive()
    return module_cluster


def _without_times(value):
    """A JSON value with every wall-clock figure (keys naming seconds) left out: what two runs must share."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _table_without_run_facts(table: dict) -> dict:
    """sweep.json without what differs between any two runs of the same sweep: the run folders, the seconds, and
    what each stage did (ran / copied / skipped after a resume)."""
    rows = [{k: v for k, v in row.items() if k not in ("stages", "run_dir", "prune_seconds")} for row in table["points"]]
    return {**table, "points": rows}


def _local_sweep(recipe: Path, out: Path, cwd: Path) -> bool:
    """The same sweep without --ray in a child process; returns whether Ray was imported there."""
    code = ("import sys\nfrom pipeline.cli import main\ncode = main(sys.argv[1:])\n"
            "print('RAY IMPORTED', 'ray' in sys.modules)\nsys.exit(code)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_LOG_DIR": str(out.parent / "logs")}
    proc = subprocess.run([sys.executable, "-c", code, "sweep", str(recipe), *GRID, "--output-dir", str(out),
                           "--no-progress"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return "RAY IMPORTED True" in proc.stdout


def _kill_a_node_mid_point(cluster: LocalCluster, sweep: Path, proc: subprocess.Popen) -> str | None:
    """Wait for a point that has finished a stage and not yet the run, and kill the worker node running it (its
    raylet, its worker processes, everything). Returns the point's name."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        for name in POINTS:
            point = sweep / name
            if not (point / ".stages" / "baseline.json").is_file() or (point / "summary.json").exists():
                continue
            try:
                pid = int((point / ".lock").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            node = cluster.node_of(pid)
            if node is not None and not (point / "summary.json").exists():
                cluster.kill(node)
                return name
        time.sleep(0.02)
    return None


def test_every_cpu_kind_benchmarks_on_a_node_of_each_and_writes_one_report(cluster, tiny_artifact, tmp_path):
    _, artifact, _ = tiny_artifact
    out = tmp_path / "bench"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_LOG_DIR": str(tmp_path / "logs")}
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "benchmark", str(artifact), "--out", str(out),
                           "--ray", cluster.address, "--every-cpu-kind", "--engines", "onnxruntime", "--modes",
                           "decode", "--sequence-length", "16", "--repeats", "1", "--seconds", "0.5",
                           "--warmup-seconds", "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    print(f"benchmark on every CPU kind: {time.time() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "cpu_kinds.json").read_text())
    assert [k["kind"] for k in data["kinds"]] == ["kind-a", "kind-b"]
    assert len({k["node_id"] for k in data["kinds"]}) == 2 and not any(k["error"] for k in data["kinds"])
    for kind in data["kinds"]:
        results = json.loads((out / kind["folder"] / "results.json").read_text())
        assert results["measurements"] and (out / kind["folder"] / "report.md").is_file()
    report = (out / "report.md").read_text()
    assert "## kind-a" in report and "## kind-b" in report and "## Across CPU kinds" in report
    assert report.count("### Decode tokens/s, every measurement") == 2
    assert len(data["ratios"]) == 1 and set(data["ratios"][0]["ratio_over_first"]) == {"kind-b"}
    assert not list(out.glob(".ray-visible-*"))


def test_a_point_that_fails_on_its_node_is_one_line_and_the_other_points_finish(cluster, workspace, tmp_path):
    recipe = write_recipe(workspace, "ray-fail", prune__method="magnitude")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_LOG_DIR": str(tmp_path / "logs")}
    # 3:7 is a valid pattern, so the sweep starts; on the node the prune stage's check finds that 7 divides no
    # projection of the tiny model, before any stage of that point runs
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "sweep", str(recipe), "--grid",
                           "prune.sparsity=0.5,3:7", "--output-dir", str(out), "--no-progress", "--ray", cluster.address],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: 1 of 2 sweep points failed"), proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("sparsity=3:7: failed: ")]
    assert len(failed) == 1 and "3:7" in failed[0] and " — fix: " in failed[0], proc.stdout
    table = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [row["point"] for row in table["points"]] == ["sparsity=0.5"] and table["points"][0]["perplexity"]
    assert [f["point"] for f in table["failures"]] == ["sparsity=3:7"]
    assert "- failed: sparsity=3:7: " in (out / "sweep" / "sweep.md").read_text()


def test_a_ray_sweep_survives_a_dead_node_and_equals_the_local_sweep(cluster, workspace, tmp_path):
    recipe = write_recipe(workspace, "ray-sweep", evaluation__max_windows=16)
    local, remote = tmp_path / "local", tmp_path / "remote"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_LOG_DIR": str(tmp_path / "logs")}
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sweep", str(recipe), *GRID, "--output-dir",
                             str(remote), "--no-progress", "--ray", cluster.address, "--max-retries", "2"],
                            cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_a_node_mid_point(cluster, remote / "sweep", proc)
    out, err = proc.communicate(timeout=600)
    print(f"ray sweep: {time.time() - started:.1f} s, node killed during {killed}")
    assert proc.returncode == 0, err[-3000:]
    assert killed, "no point was caught between its first stage and its end"

    ray_table = json.loads((remote / "sweep" / "sweep.json").read_text())
    assert [row["point"] for row in ray_table["points"]] == POINTS and "failures" not in ray_table
    # the point whose node died ran again on the other node and resumed: its dense baseline was not recomputed
    resumed = next(row for row in ray_table["points"] if row["point"] == killed)
    assert resumed["stages"]["baseline"].startswith("skipped"), resumed["stages"]
    assert not list((remote / "sweep").glob(".ray-visible-*"))

    assert not _local_sweep(recipe, local, workspace), "a sweep without --ray imported Ray"
    local_table = json.loads((local / "sweep" / "sweep.json").read_text())
    assert _table_without_run_facts(ray_table) == _table_without_run_facts(local_table)
    local_md, ray_md = ((d / "sweep" / "sweep.md").read_text() for d in (local, remote))
    assert ray_md.split("| point |")[0] == local_md.split("| point |")[0]  # the Table 1 pivot, every figure
    for name in POINTS:
        for rel in ("pruned/sparsity.json", "perplexity.json", "perplexity_dense.json"):
            ours, theirs = (json.loads((d / "sweep" / name / rel).read_text()) for d in (remote, local))
            assert _without_times(ours) == _without_times(theirs), (name, rel)
        weights = sorted(p.relative_to(local / "sweep" / name) for p in (local / "sweep" / name / "pruned").glob("*.safetensors"))
        assert weights
        for rel in weights:
            assert (remote / "sweep" / name / rel).read_bytes() == (local / "sweep" / name / rel).read_bytes()


WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # import ray fails, as where the extra is not installed
from pipeline.cli import main
code = main(sys.argv[1:])
print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "onnx"}))
sys.exit(code)
"""


@pytest.mark.parametrize("command", [["sweep", "RECIPE", *GRID, "--ray", "auto"],
                                     ["benchmark", "ARTIFACT", "--out", "OUT", "--ray", "auto", "--every-cpu-kind"]])
def test_without_ray_the_ray_option_is_refused_in_one_line_before_anything_loads(workspace, tmp_path, command):
    recipe = write_recipe(workspace, "no-ray")
    args = [{"RECIPE": str(recipe), "ARTIFACT": str(tmp_path / "artifact"), "OUT": str(tmp_path / "out")}.get(a, a)
            for a in command]
    env = {**os.environ, "PIPELINE_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: --ray needs Ray, which is not installed"), proc.stderr
    assert "pip install 'dass-pipeline[ray]'" in errors[0] and "./install.sh --with-ray" in errors[0]
    assert "LOADED []" in proc.stdout
    assert not (tmp_path / "out").exists() and not (workspace / "runs" / "no-ray").exists()


def test_ray_options_without_ray_address_are_refused(workspace, tmp_path):
    recipe = write_recipe(workspace, "no-address")
    proc = run_cli("sweep", str(recipe), *GRID, "--max-retries", "1", cwd=workspace, log_dir=tmp_path / "logs")
    assert proc.returncode == 2 and "error: --cpus-per-point and --max-retries apply to a sweep on a Ray cluster" \
        in proc.stderr
    proc = run_cli("benchmark", "x", "--out", str(tmp_path / "o"), "--every-cpu-kind", cwd=workspace,
                   log_dir=tmp_path / "logs")
    assert proc.returncode == 2 and "error: --ray and --every-cpu-kind go together" in proc.stderr


def test_an_address_where_no_cluster_answers_is_one_line_at_once(workspace, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (./install.sh --with-ray installs it)")
    recipe = write_recipe(workspace, "no-cluster")
    started = time.time()
    proc = run_cli("sweep", str(recipe), *GRID, "--ray", f"{HOST}:{_free_port()}", cwd=workspace,
                   log_dir=tmp_path / "logs")
    assert proc.returncode == 2 and time.time() - started < 60
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot join the Ray cluster at {HOST}:"), proc.stderr
    assert not (workspace / "runs" / "no-cluster").exists()


def test_a_folder_that_is_not_the_same_on_the_node_is_refused_in_one_line(tmp_path, monkeypatch):
    from pipeline.common.errors import PipelineError
    from pipeline.ray_cluster import SharedFolder, check_on_node, share_folder

    monkeypatch.chdir(tmp_path)
    shared = share_folder(tmp_path / "sweep")
    check_on_node(shared)  # the same machine: the same folder
    elsewhere = SharedFolder(shared.cwd, shared.folder, "another-token")  # what a node with its own disk sees
    with pytest.raises(PipelineError, match="is not the one the command writes to") as caught:
        check_on_node(elsewhere)
    assert "shared file system" in caught.value.fix and "\n" not in str(caught.value)
    with pytest.raises(PipelineError, match="has no folder"):
        check_on_node(SharedFolder(str(tmp_path / "missing"), "sweep", shared.token))
    shared.remove()
    assert not list((tmp_path / "sweep").iterdir())


def test_a_point_too_large_for_every_node_is_refused():
    from pipeline.common.errors import PipelineError
    from pipeline.sweep_ray import check_fits

    nodes = [{"cpus": 2, "memory": 4 * 2**30}, {"cpus": 8, "memory": 16 * 2**30}]
    check_fits("p", 8, 10 * 2**30, nodes)
    with pytest.raises(PipelineError, match=r"needs 2 CPUs and about 20.0 GiB .* \(largest: 8 CPUs, 16.0 GiB\)"):
        check_fits("p", 2, 20 * 2**30, nodes)
    with pytest.raises(PipelineError, match="needs 16 CPUs,"):
        check_fits("p", 16, None, nodes)
