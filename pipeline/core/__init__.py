"""The model-side core: loading models, calibration / evaluation text, perplexity, pruning.

Imports only pipeline.common (tests/test_layers.py checks it); export/ and benchmarks/ build on it.
"""
