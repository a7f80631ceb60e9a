"""Ray as an optional executor (``pipeline sweep --ray``, ``pipeline benchmark --ray --every-cpu-kind``): joining a
cluster, its nodes, and the check that a folder written here is the same folder on a node.

Ray is an optional extra. ``import ray`` happens in this module's functions only, which run only when ``--ray`` is
given; without Ray installed ``--ray`` is refused in one line naming the extra, before anything loads. Every node
needs this project installed with the extra (``./install.sh --with-ray``), started as a node of the cluster from that
virtual environment, and the command's folders (the run folders, the artifacts, the folder the command was started
from) at the same paths as on the machine that gives the command: a shared file system. A task checks that on its
node before it works (:func:`check_on_node`) and refuses in one line otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.errors import PipelineError
from pipeline.common.outputs import write_text_atomic

log = logging.getLogger(__name__)

RAY_VERSION = "2.58.0"
INSTALL = f"pip install 'dass-pipeline[ray]' (ray=={RAY_VERSION}), or ./install.sh --with-ray"
JOIN_FIX = ("start one (ray start --head on one machine, ray start --address=HEAD:PORT on each other) and give its "
            "address, or run on one of its nodes with --ray auto")
SHARED_FIX = ("put the folders on a path every node mounts at the same place (a shared file system such as NFS) and "
              "start the command from a folder every node has; docs/running.md, \"Sweeps and benchmarks on a Ray "
              "cluster\"")


def require_ray():
    """The ``ray`` module, or a PipelineError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise PipelineError("--ray needs Ray, which is not installed in this environment",
                            f"install the extra on this machine and on every node: {INSTALL}") from None
    return ray


@contextmanager
def cluster(address: str):
    """``with cluster("auto") as ray:`` connected to the running cluster at ``address`` as its driver until the block
    ends (the cluster itself stays up)."""
    ray = require_ray()
    try:
        _answers(address)  # Ray itself would retry an address where nothing listens for many minutes
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:  # no cluster there, a version mismatch, a bad address: Ray's own types vary
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"cannot join the Ray cluster at {address}: {first}", JOIN_FIX) from None
    try:
        log.info("joined the Ray cluster at %s: %d nodes with CPUs", address, len(alive_nodes(ray)))
        yield ray
    finally:
        ray.shutdown()


def _answers(address: str, timeout: float = 10.0) -> None:
    """Raise OSError when nothing accepts a connection at a HOST:PORT address (``auto`` is looked up by Ray)."""
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit() and "://" not in address:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()


def alive_nodes(ray) -> list[dict]:
    """The cluster's live nodes that offer CPUs: id, host (its address), CPUs, memory (Ray's logical resource, bytes)
    and labels."""
    nodes = []
    for node in ray.nodes():
        resources = node.get("Resources") or {}
        if node.get("Alive") and resources.get("CPU", 0) > 0:
            nodes.append({"id": node["NodeID"], "host": node.get("NodeManagerHostname") or node["NodeManagerAddress"],
                          "address": node["NodeManagerAddress"], "cpus": int(resources["CPU"]),
                          "memory": int(resources.get("memory", 0)), "labels": dict(node.get("Labels") or {})})
    if not nodes:
        raise PipelineError("the Ray cluster has no live node that offers CPUs",
                            "start a node with ray start --address=HEAD:PORT (without --num-cpus=0)")
    return nodes


@dataclass(frozen=True)
class SharedFolder:
    """A folder this machine wrote a token into (``folder``, as given: relative paths are read from ``cwd``, the
    folder the command was started from); a task on a node reads it back there (:func:`check_on_node`)."""

    cwd: str
    folder: str
    token: str

    @property
    def marker(self) -> str:
        return f".ray-visible-{self.token}"

    def remove(self) -> None:
        (Path(self.cwd) / self.folder / self.marker).unlink(missing_ok=True)


def share_folder(folder: Path | str) -> SharedFolder:
    """Write a fresh token file into ``folder`` (created if missing) for the nodes to check."""
    shared = SharedFolder(os.getcwd(), str(folder), uuid.uuid4().hex)
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(folder) / shared.marker, shared.token)
    return shared


def check_on_node(shared: SharedFolder) -> None:
    """In a task, on its node: change into the folder the command was started from and read the token back from the
    shared folder; refuse in one line where either is not the same folder here."""
    node = socket.gethostname()
    if not os.path.isdir(shared.cwd):
        raise PipelineError(f"node {node} has no folder {shared.cwd} (where the command was started)", SHARED_FIX)
    os.chdir(shared.cwd)
    try:
        seen = (Path(shared.folder) / shared.marker).read_text()
    except OSError:
        seen = None
    if seen != shared.token:
        raise PipelineError(f"the folder {Path(shared.cwd) / shared.folder} on node {node} is not the one the command "
                            "writes to (the check file written there is missing)", SHARED_FIX)


def error_of(exc: BaseException, what: str) -> PipelineError:
    """A task that did not return (its worker or node died more often than it was retried, or a bug raised in it):
    one line naming ``what`` (the point, the CPU kind) and the cause's first line."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return PipelineError(f"{what} did not finish on the Ray cluster: {type(exc).__name__}: {first}",
                         "see its log (the run's pipeline.log, or the node's Ray logs under its temp dir, "
                         "session_latest/logs); run the same command again: finished work is kept")
