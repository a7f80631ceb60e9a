"""``pipeline sweep RECIPE --grid ... --ray ADDRESS``: each grid point a task of a Ray cluster.

The grid, the points' recipes, the sweep folder's lock and the table are the local sweep's (pipeline/sweep.py); only
where the points run differs. Each point is one Ray task that runs ``run_recipe`` on its run folder, on whichever node
has room, asking for ``num_cpus`` (``--cpus-per-point``; default: the CPUs of the smallest node, so one point holds a
node) and ``memory``: the highest RAM estimate of the point's stages (pipeline/resources.py, from the model's
config.json or GGUF header on this machine, as the preflight computes it). A worker or node that dies makes Ray run
the task again (``--max-retries``, 3 by default); the new attempt waits for the point folder's lock (the dead attempt's is free) and
resumes from the last finished stage. A point that fails for a reason of its own (a PipelineError: bad input, out of
memory, ...) is reported with its one-line error and the other points go on. The task first checks that the sweep
folder is the same folder on its node (pipeline/ray_cluster.py). Points running at the same time each compute the
stages they share (the dense baseline); a point that starts after another finished such a stage copies it, as
locally.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.common.errors import PipelineError
from pipeline.ray_cluster import SharedFolder, alive_nodes, check_on_node, cluster, error_of, require_ray, share_folder
from pipeline.recipe import Recipe

log = logging.getLogger(__name__)

GiB = 2**30


def point_memory(name: str, recipe: Recipe) -> int:
    """The RAM the point's stages estimate at their peak (bytes), from the model's config on this machine."""
    from pipeline.resources import local_config, peak_ram
    from pipeline.resume import applicable

    config, origin = local_config(recipe.model)
    if config is None:
        raise PipelineError(f"sweep point {name}: its memory request for Ray comes from the model's config, "
                            f"and {origin}",
                            "make the model available on this machine too (pipeline fetch, a local folder, the hub "
                            "cache), or pass --skip-preflight to submit the points without a memory request")
    return peak_ram(config, recipe, applicable(recipe))


def check_fits(name: str, cpus: int, memory: int | None, nodes: list[dict]) -> None:
    """Refuse a point that no live node can take (Ray would wait for such a node for ever)."""
    if any(n["cpus"] >= cpus and (memory is None or n["memory"] >= memory) for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n["memory"], n["cpus"]))
    need = f"{cpus} CPUs" + (f" and about {memory / GiB:.1f} GiB of memory" if memory is not None else "")
    raise PipelineError(f"sweep point {name} needs {need}, and no node of the Ray cluster offers that (largest: "
                        f"{largest['cpus']} CPUs, {largest['memory'] / GiB:.1f} GiB)",
                        "add a larger node, lower --cpus-per-point, or pass --skip-preflight to submit without a "
                        "memory request")


def run_point_on_node(recipe: Recipe, shared: SharedFolder, skip_preflight: bool, share_from: list[str],
                      command: str | None = None) -> dict:
    """The Ray task of one point, on its node: the folder check, then ``run_recipe`` on the point's folder (waiting
    for its lock: only an earlier attempt of the same point can hold it; ``command``: its `pipeline run`). Returns {"summary"} or {"error": [problem,
    fix]}, and the node's name."""
    import socket

    from pipeline.common.logsetup import route_library_output
    from pipeline.runner import run_recipe

    node = socket.gethostname()
    try:
        check_on_node(shared)
        root = logging.getLogger()  # every record into the point's pipeline.log, which run_recipe attaches
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        route_library_output(False)
        summary = run_recipe(recipe, progress=False, skip_preflight=skip_preflight, wait=True,
                             share_from=[Path(p) for p in share_from], command=command)
    except PipelineError as exc:
        return {"error": [exc.problem, exc.fix], "node": node}
    return {"summary": summary, "node": node}


class RaySweep:
    """``run_points`` of pipeline/sweep.py:run_sweep on a Ray cluster. Built before anything loads: without Ray
    installed it refuses there."""

    def __init__(self, address: str, cpus_per_point: int | None = None, max_retries: int = 3):
        require_ray()
        self.address, self.cpus_per_point, self.max_retries = address, cpus_per_point, max_retries

    def __call__(self, points: list, progress: bool = True, skip_preflight: bool = False,
                 wait: bool = False) -> list:
        """Each point's summary, or the PipelineError it failed with, in the points' order."""
        with cluster(self.address) as ray:
            nodes = alive_nodes(ray)
            cpus = self.cpus_per_point or min(n["cpus"] for n in nodes)
            requests = []
            for point in points:
                memory = None if skip_preflight else point_memory(point.name, point.recipe)
                check_fits(point.name, cpus, memory, nodes)
                requests.append({"num_cpus": cpus, **({"memory": int(memory)} if memory else {})})
            sweep_dir = Path(points[0].recipe.run_dir()).parent
            shared = share_folder(sweep_dir)
            try:
                return self._run(ray, points, requests, shared, skip_preflight)
            finally:
                shared.remove()

    def _run(self, ray, points, requests, shared: SharedFolder, skip_preflight: bool) -> list:
        from ray.exceptions import RayError

        task = ray.remote(max_calls=1)(run_point_on_node)  # a fresh process per point: its memory is given back
        folders = [str(point.recipe.run_dir()) for point in points]
        refs = {}
        for index, (point, request) in enumerate(zip(points, requests)):
            name = point.name
            ref = task.options(max_retries=self.max_retries, retry_exceptions=False, name=f"sweep point {name}",
                               **request).remote(point.recipe, shared, skip_preflight, folders, point.command)
            refs[ref] = index
            memory = f", {request['memory'] / GiB:.1f} GiB" if "memory" in request else ""
            log.info("sweep point %d of %d: %s submitted (%d CPUs%s)", index + 1, len(points), name,
                     request["num_cpus"], memory)
        outcomes: list = [None] * len(points)
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    index = refs.pop(ref)
                    name = points[index].name
                    try:
                        out = ray.get(ref)
                    except RayError as exc:
                        outcomes[index] = error_of(exc, f"sweep point {name}")
                        log.error("sweep point %s: %s", name, outcomes[index])
                        continue
                    if "error" in out:
                        outcomes[index] = PipelineError(*out["error"])
                        log.error("sweep point %s failed on %s: %s", name, out["node"], outcomes[index])
                    else:
                        outcomes[index] = out["summary"]
                        log.info("sweep point %s: finished on %s", name, out["node"])
        except BaseException:  # interrupted: the points still running stop too (their finished stages are kept)
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        return outcomes
