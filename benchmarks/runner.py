"""The benchmark runner: artifacts x engines x modes, repeated in interleaved rounds, one child process
per measurement, written to ``OUT/results.json`` (atomically, after every measurement, so partial
results survive a crash or a time budget and are labelled as partial).

Which engine measures which artifact: DeepSparse every artifact with a DeepSparse graph, ONNX
Runtime every artifact with its graph (it has no sparse kernels: sparse and dense run alike there),
PyTorch once per depth (a dense peer; see benchmarks/engines/pytorch_runner.py), llama.cpp every GGUF
folder (the dense model as GGUF; benchmarks/llamacpp.py).
Rounds loop mode -> engine -> artifact innermost, so a dense and a sparse measurement of the same
engine follow each other and machine noise hits both alike.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.common.cpuinfo import read_cpuinfo
from benchmarks.engines import ENGINES, GGUF_ENGINE, MeasureSpec, check_engine, check_threads, measure
from benchmarks.graph_limits import check_lengths, graph_limits
from benchmarks.settings import BenchmarkSettings
from benchmarks.stats import summarize
from pipeline.common.errors import PipelineError
from pipeline.common.outputs import read_json, write_json_atomic

log = logging.getLogger(__name__)
RESULTS = "results.json"


def describe_artifact(path: Path, key: str | None = None, name: str | None = None) -> dict:
    """What the report needs to know about an artifact, from its manifest and config (validated)."""
    from benchmarks.artifact_folders import benchmark_label
    from export.artifact import open_artifact

    path = Path(path)
    manifest = open_artifact(path)
    config = json.loads((path / next(iter(manifest["engines"])) / "config.json").read_text())
    requested = manifest.get("requested_sparsity")
    try:
        requested = float(requested) if requested not in (None, "None") else None
    except ValueError:
        pass  # an N:M pattern stays a string
    method = manifest.get("method") or "none"
    sparsity = manifest["sparsity"]["overall_decoder_linears"]
    if method == "none" and sparsity > 0.01:
        method = "unknown"
    if manifest.get("quantization"):  # an INT8 artifact is never the float dense reference
        method = f"{method}+int8"
    label = benchmark_label(path)
    model = (manifest.get("recipe") or {}).get("model", {}).get("source") or config.get("_name_or_path") or label
    from export.artifact import disk_bytes
    from export.weight_kinds import weight_bytes_by_kind

    from export.graph_formats import ONNX_GRAPHS

    held = next(e for e in ONNX_GRAPHS if e in manifest["engines"])  # the first: DeepSparse's graph when there
    return {"key": key or label, "name": name or label, "path": str(path), "method": method, "model": model,
            "requested_sparsity": requested, "sparsity": sparsity, "layers": config["num_hidden_layers"],
            "scope": manifest.get("scope"), "graphs": sorted(manifest["engines"]), "bytes": disk_bytes(path),
            "max_sequence_length": graph_limits(manifest, config),
            "weight_bytes": {"graph": held, **weight_bytes_by_kind(path / held / "model.onnx")}}


def find_artifact(entry: str | Path, what: str = "artifact") -> dict:
    """An artifact folder, a run folder holding one in artifact/, or a GGUF folder, described; a clear error
    otherwise."""
    from benchmarks.artifact_folders import MANIFEST, manifest_folder
    from benchmarks.llamacpp import describe_gguf, is_gguf_folder

    path = Path(entry)
    if is_gguf_folder(path):  # the dense model as GGUF, for the llamacpp engine (benchmarks/llamacpp.py)
        return describe_gguf(path)
    folder = manifest_folder(path)
    if folder is None:
        raise PipelineError(f"{what} {entry} holds no artifact (no {MANIFEST} in it or in its artifact/ folder)",
                            "give an artifact folder (RUN/artifact) or run its recipe with export enabled first")
    return describe_artifact(folder)


def cpu_name() -> str:
    return read_cpuinfo()[0] or platform.processor() or platform.machine()


def machine_info() -> dict:
    import psutil

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version()}
    return info


def plan(artifacts: list[dict], settings: BenchmarkSettings) -> list[tuple[str, str, str]]:
    """(mode label, engine, artifact key) for one round, artifact innermost (labels: settings.measured_modes)."""
    steps = []
    for mode, _, _ in settings.measured_modes():
        for engine in settings.engines:
            graph = ENGINES[engine].graph
            if graph is None:  # PyTorch: one per depth, the dense artifact where there is one
                chosen: dict[int, dict] = {}
                gguf = ENGINES[GGUF_ENGINE].graph  # a GGUF folder is no ONNX artifact
                for a in (a for a in artifacts if gguf not in a["graphs"]):
                    if a["layers"] not in chosen or (a["method"] == "none" and chosen[a["layers"]]["method"] != "none"):
                        chosen[a["layers"]] = a
                keys = [a["key"] for a in artifacts if chosen.get(a["layers"]) is a]
            else:
                keys = [a["key"] for a in artifacts if graph in a["graphs"]]
            steps += [(mode, engine, k) for k in keys]
    return steps


def check_machine(settings: BenchmarkSettings) -> None:
    """What the settings model cannot know: each engine is installed here, the threads exist here."""
    for engine in settings.engines:
        check_engine(engine)
    check_threads(settings.threads)
    if any(ENGINES[e].needs_amx for e in settings.engines):  # on a CPU without AMX: one line, the run goes on dense
        from export.openvino_graph import warn_if_no_amx

        warn_if_no_amx()


def run_benchmark(artifacts: list[dict], settings: BenchmarkSettings, out: Path, progress: bool = True,
                  measure_fn=measure, command: str | None = None) -> dict:
    """Measure, write ``out/results.json`` after every measurement, return the results with their summary."""
    check_machine(settings)
    keys = [a["key"] for a in artifacts]
    if len(set(keys)) != len(keys):
        raise PipelineError(f"two benchmarked artifacts share a name: {keys}", "give each artifact its own name")
    by_key = {a["key"]: a for a in artifacts}
    steps = plan(artifacts, settings)
    modes = {label: (label, kind, length) for label, kind, length in settings.measured_modes()}
    total = len(steps) * settings.repeats
    results = {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(),
               "settings": settings.model_dump(mode="json"), "command": command, "artifacts": artifacts, "measurements": [], "failures": [],
               "partial": f"in progress: 0 of {total} measurements"}
    started = time.time()
    bar = tqdm(total=total, desc="benchmark", disable=not progress)
    stopped = None
    for r in range(settings.repeats):
        for mode, engine, key in steps:
            if time.time() - started > settings.time_budget_seconds:
                stopped = (f"time budget of {settings.time_budget_seconds:.0f} s reached after "
                           f"{len(results['measurements'])} of {total} measurements")
                break
            _, kind, length = modes[mode]
            spec = MeasureSpec.of(engine, by_key[key]["path"], kind, settings, size=length)
            try:
                m = measure_fn(spec)
            except PipelineError as exc:
                log.warning("measurement failed, kept going: %s", exc.problem)
                results["failures"].append({"artifact": key, "engine": engine, "mode": mode, "round": r + 1,
                                            "error": str(exc)})
            else:
                if "machine" in m:
                    if engine not in results["machine"] and (m["machine"] or {}).get("warning"):
                        log.warning("%s", m["machine"]["warning"])  # once: e.g. llama.cpp built for another CPU
                    results["machine"].setdefault(engine, m.pop("machine"))
                results["measurements"].append({"artifact": key, "engine": engine, "mode": mode, "round": r + 1, **m})
                log.info("round %d %s %s %s: %.2f tokens/s", r + 1, mode, engine, key, m["tokens_per_s"])
            bar.update(1)
            results["partial"] = f"in progress: {len(results['measurements'])} of {total} measurements"
            write_json_atomic(out / RESULTS, results)
        if stopped:
            break
    bar.close()
    results["partial"] = stopped
    results["seconds"] = time.time() - started
    if stopped:
        log.warning("benchmark stopped early: %s; partial results kept in %s", stopped, out / RESULTS)
    results["summary"] = summarize(results, settings.extrapolate_to_layers)
    write_json_atomic(out / RESULTS, results)
    return results


def load_results(folder: Path) -> dict:
    results = read_json(Path(folder) / RESULTS, "give a benchmark folder (RUN/benchmark) a finished benchmark wrote")
    results["summary"] = summarize(results, results["settings"].get("extrapolate_to_layers"))
    return results


def benchmark_artifacts(entries: list[str], settings: BenchmarkSettings, out: Path, command: str | None = None,
                        progress: bool = True, annotate=None) -> tuple[dict, list[str]]:
    """``pipeline benchmark A B ... --out OUT``: find each artifact (or run or GGUF folder), measure them interleaved,
    write OUT/results.json, report.md and the plots. ``annotate``: applied to each artifact's description before
    the run (the CLI adds the perplexities its run recorded). Returns the results and the report's file names."""
    from benchmarks.report import write_report

    artifacts = [find_artifact(entry) for entry in entries]
    artifacts = [annotate(a) for a in artifacts] if annotate else artifacts
    check_lengths(artifacts, settings, cli=True)  # before any engine loads a model
    results = run_benchmark(artifacts, settings, Path(out), progress=progress, command=command)
    return results, write_report(results, Path(out))
