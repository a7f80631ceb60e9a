"""DaSS pruning pipeline: prune GLU language models, export them and benchmark them on CPUs."""

__version__ = "0.1.0"
