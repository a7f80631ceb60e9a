"""How far one engine's perplexity of a graph may leave the reference figure (PyTorch's, or the graph run in ONNX
Runtime) on the same windows before a report says so. Torch-free: the quantize stage and the benchmark report read
it (export/engine_perplexity.py computes the figures).

The tolerance is 1%: a float graph's perplexity agrees across PyTorch, ONNX Runtime, OpenVINO and DeepSparse to about
1e-5 (tests/test_engine_perplexity.py), and the INT8 graphs compute the same integer products, so 1% is far above
rounding and below the 2% that INT8 itself costs the embedded model (docs/int8.md).
"""

from __future__ import annotations

TOLERANCE = 0.01


def gap(figure: dict | None, reference: dict | None) -> float | None:
    """``figure``'s perplexity relative to ``reference``'s, minus 1; None unless both scored the same windows."""
    if not figure or not reference or figure.get("perplexity") is None or reference.get("perplexity") is None:
        return None
    if (figure.get("windows"), figure.get("context_length")) != (reference.get("windows"),
                                                                  reference.get("context_length")):
        return None
    return figure["perplexity"] / reference["perplexity"] - 1


def beyond(figure: dict | None, reference: dict | None) -> bool:
    """Whether ``figure`` leaves ``reference`` by more than the tolerance (same windows)."""
    off = gap(figure, reference)
    return off is not None and abs(off) > TOLERANCE
