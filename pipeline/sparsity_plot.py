"""The plot of a per-layer sparsity allocation (RUN/pruned/sparsity_by_layer.png): ratio asked for and read back, vs layer."""

from __future__ import annotations

from pipeline.common.outputs import figure_png


def sparsity_by_layer_png(layers: list[dict], target: float, scheme: str) -> bytes:
    """PNG bytes: each decoder layer's sparsity (``layers``: sparsity.json's allocation records) against the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [r for r in layers if r["weights"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["layer"] for r in used], [r["sparsity"] for r in used], marker="o", markersize=3, label=f"{scheme}")
    ax.plot([r["layer"] for r in used], [r["achieved"] for r in used], linestyle="none", marker="x", markersize=4,
            label="read back from the weights")
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"uniform {target:g}")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("sparsity")
    ax.set_title(f"Per-layer sparsity ({scheme}, overall {target:g})")
    ax.legend(fontsize=7)
    return figure_png(fig)
