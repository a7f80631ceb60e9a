"""``pipeline benchmark A B ... --out OUT --ray ADDRESS --every-cpu-kind``: the same interleaved benchmark on one
node of each CPU kind of a Ray cluster, then one report over all of them.

A node's CPU kind is its ``cpu_kind`` node label where it was started with one (``ray start --labels
cpu_kind=NAME``), else its CPU model and instruction sets read on the node (benchmarks/cpu_kinds.py). Of each kind
the node with the most CPUs runs ``pipeline benchmark``'s own code (benchmarks/runner.py:benchmark_artifacts) into
OUT/KIND/ as one Ray task that asks for every CPU of that node, so nothing else of the cluster runs there meanwhile;
the kinds run at the same time, each on its own machine. OUT/report.md then has a table per kind and a table of
each kind's tokens/s over the first kind's (benchmarks/cpu_kinds.py). A benchmark is not retried (a half-measured
one would start over): a kind whose node fails is reported in one line and the others finish.
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.cpu_kinds import KIND_LABEL, cpu_kind, one_node_per_kind, write_report
from benchmarks.settings import BenchmarkSettings
from pipeline.common.errors import PipelineError
from pipeline.ray_cluster import SharedFolder, alive_nodes, check_on_node, cluster, error_of, share_folder

log = logging.getLogger(__name__)


def node_kinds(ray, nodes: list[dict]) -> list[dict]:
    """Each node with its ``kind``: its cpu_kind label, else read on the node by a task pinned to it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(cpu_kind)
    unlabelled = [n for n in nodes if not n["labels"].get(KIND_LABEL)]
    read = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["id"], soft=False)).remote()
                    for n in unlabelled])
    kinds = {n["id"]: kind for n, kind in zip(unlabelled, read)}
    return [{**n, "kind": n["labels"].get(KIND_LABEL) or kinds[n["id"]]} for n in nodes]


def benchmark_on_node(entries: list[str], settings: BenchmarkSettings, out: str, shared: SharedFolder,
                      command: str) -> dict:
    """The Ray task of one CPU kind, on its node: the folder check, then the benchmark into ``out``. Returns
    {"results"} or {"error": [problem, fix]}."""
    from benchmarks.runner import benchmark_artifacts

    try:
        check_on_node(shared)
        logging.getLogger().setLevel(logging.INFO)
        results, _ = benchmark_artifacts(entries, settings, Path(out), command, progress=False)
    except PipelineError as exc:
        return {"error": [exc.problem, exc.fix]}
    return {"results": results}


def benchmark_every_cpu_kind(address: str, entries: list[str], settings: BenchmarkSettings, out: Path,
                             command: str) -> dict:
    """Benchmark on one node per CPU kind, write OUT/report.md and OUT/cpu_kinds.json; returns the kinds (kind,
    node, folder, error), the files written and the failures."""
    out = Path(out)
    with cluster(address) as ray:  # first: without Ray installed, the one-line refusal
        from ray.exceptions import RayError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        chosen = one_node_per_kind(node_kinds(ray, alive_nodes(ray)))
        shared = share_folder(out)
        task = ray.remote(max_calls=1)(benchmark_on_node)
        try:
            refs = {}
            for kind, node in chosen.items():
                log.info("CPU kind %s: benchmark on node %s (%d CPUs) into %s", kind, node["host"], node["cpus"],
                         out / node["folder"])
                strategy = NodeAffinitySchedulingStrategy(node["id"], soft=False)
                refs[kind] = task.options(num_cpus=node["cpus"], max_retries=0, scheduling_strategy=strategy,
                                          name=f"benchmark on {kind}").remote(
                    entries, settings, str(out / node["folder"]), shared, command)
            kinds = []
            for kind, ref in refs.items():
                node = chosen[kind]
                entry = {"kind": kind, "node": node["host"], "node_id": node["id"], "folder": node["folder"],
                         "results": None, "error": None}
                try:
                    got = ray.get(ref)
                except RayError as exc:
                    failed = error_of(exc, f"the benchmark on {kind}")
                    got = {"error": [failed.problem, failed.fix]}
                if "error" in got:
                    entry["error"] = str(PipelineError(*got["error"]))
                    log.error("CPU kind %s: %s", kind, entry["error"])
                else:
                    entry["results"] = got["results"]
                kinds.append(entry)
        finally:
            shared.remove()
    written = write_report(kinds, out, command)
    return {"kinds": [{k: v for k, v in entry.items() if k != "results"} for entry in kinds], "written": written,
            "failures": [entry for entry in kinds if entry["error"]]}
