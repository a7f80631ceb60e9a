"""What a timed step really produced, counted from its output, and the check that it is what the measurement asked
for: a batch-N step must decode N sequences (N rows of logits, each its own: no row a copy of another), a prefill of
L tokens L positions of one sequence. Tokens/s counts ``tokens_per_step`` (benchmarks/engines/__init__.py); this is
where that count is checked against the engine's own output, not derived again from the settings.

Runners that see their step's logits (ONNX Runtime, OpenVINO, PyTorch) report ``decoded``; DeepSparse times itself
inside ``deepsparse.benchmark`` and returns no output, so its count is the batch size it compiled for.
"""

from __future__ import annotations

from pipeline.common.errors import PipelineError


def decoded(logits) -> dict:
    """{sequences, new_tokens, distinct} of one step's logits ``[sequences, new tokens, vocabulary]``: distinct is
    the number of different rows among the sequences' last-position logits (each sequence its own prompt and
    cache, so a broadcast or repeated row shows as fewer)."""
    import numpy as np

    values = np.asarray(logits)
    return {"sequences": int(values.shape[0]), "new_tokens": int(values.shape[1]),
            "distinct": int(np.unique(values[:, -1, :], axis=0).shape[0])}


def check_decoded(counted: dict | None, sequences: int, new_tokens: int, what: str) -> None:
    """Refuse a measurement whose step decoded other than ``sequences`` distinct sequences of ``new_tokens`` tokens
    each (``counted``: ``decoded``'s dict; None: the runner could not count, nothing to check)."""
    if counted is None:
        return
    if (counted["sequences"], counted["new_tokens"]) != (sequences, new_tokens) or counted["distinct"] != sequences:
        raise PipelineError(
            f"{what}: a timed step decoded {counted['sequences']} sequence(s) x {counted['new_tokens']} token(s), "
            f"{counted['distinct']} of them distinct, where the measurement asks for {sequences} x {new_tokens}",
            "this is a bug in the engine's runner (benchmarks/engines/); its tokens/s would be wrong, so none is kept")
