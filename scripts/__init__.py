"""Study scripts: the measurements behind docs/measurements.md and benchmarks/results/ (the paper's tables at
LLaMA-2-7B shapes, pruning cost, perplexity tables, INT8 accuracy, per-op profiles, stand-in checkpoints). Run from a
checkout (``.venv/bin/python -m scripts.NAME``); not part of the installed package, which the pipeline needs alone."""
