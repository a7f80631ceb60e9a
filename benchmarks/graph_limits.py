"""How long a sequence each graph of an artifact holds, and the up-front refusal of benchmark settings that ask for
more (a prompt or a context the exported graph cannot take would otherwise fail inside an engine, after minutes of
loading, or be measured on a graph that silently clips its position tables).

The limit of a graph: DeepSparse's graph holds rotary tables of ``max_sequence_length`` positions, written into the
artifact's manifest at export (``export.max_sequence_length``); the ONNX Runtime graph (and OpenVINO, which runs it
or its IR) computes positions as it goes, so its limit is the model's own ``max_position_embeddings``
(config.json). A prefill of L tokens needs a context of at least L + 1 (benchmarks/settings.py), decode runs with
``sequence_length - 1`` cached tokens, so ``sequence_length`` must not exceed the limit of any graph measured.
"""

from __future__ import annotations

from benchmarks.engines import ENGINES
from benchmarks.settings import BenchmarkSettings
from pipeline.common.errors import PipelineError


def graph_limits(manifest: dict, config: dict) -> dict[str, int]:
    """{graph: the longest sequence it holds} for each ONNX graph of an artifact (from its manifest and the
    config.json of its graphs); a graph with no known limit is left out."""
    limits = {}
    for graph, info in (manifest.get("engines") or {}).items():
        limit = (info or {}).get("max_sequence_length") or config.get("max_position_embeddings")
        if limit:
            limits[graph] = int(limit)
    return limits


def check_lengths(artifacts: list[dict], settings: BenchmarkSettings, cli: bool = False) -> None:
    """Refuse, in one line naming the artifact, the graph and the fix, settings whose ``sequence_length`` (and so
    whose longest prefill) exceeds a measured graph's limit. ``cli``: name the options as ``pipeline benchmark``
    spells them, else as the recipe's benchmark section does."""
    option = "--sequence-length" if cli else "benchmark.sequence_length"
    prefills = settings.prefill_lengths or [settings.prefill_length]
    longest = max(prefills) if "prefill" in settings.modes else None
    for a in artifacts:
        limits = a.get("max_sequence_length") or {}
        for engine in settings.engines:
            graph = ENGINES[engine].graph
            limit = limits.get(graph)
            if limit is None or settings.sequence_length <= limit:
                continue
            asks = (f"sequence_length {settings.sequence_length}"
                    + (f" (prefill lengths up to {longest})" if longest else ""))
            raise PipelineError(
                f"artifact {a['key']} ({a['path']}): its {graph} graph, which {engine} runs, holds at most {limit} "
                f"tokens, but the benchmark asks for {asks}",
                f"lower {option} to at most {limit} with every prefill length below it, or export the artifact again "
                f"with export.max_sequence_length {settings.sequence_length} or more")
