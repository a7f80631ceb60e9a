"""Where log records go: our own lines on the terminal, everything in the log files.

The terminal (stderr) shows the records of this project's loggers (``pipeline``, ``export``,
``benchmarks``) at INFO and above, without tracebacks; our own progress bars write to it directly.
Everything else goes to the log files only (the per-invocation log and RUN/pipeline.log): Python
warnings (torch.onnx's TracerWarning, deprecation notices, ...) through ``logging.captureWarnings``,
and the records of other libraries' loggers (transformers' legacy-tokenizer notice, onnxruntime's
"consider pre-processing" advice, optimum's export lines, deepsparse, ...). transformers and optimum
print through a handler of their own; :func:`route_library_output` makes them propagate to ours
instead, and hides transformers' GGUF-dequantization progress bar. With ``debug`` the terminal shows
everything.

Child processes (pipeline/common/child.py) log everything to their stderr (:func:`configure_child`);
the parent records that stderr as one file-only record (``extra=FILE_ONLY``): in the log files, and on
the terminal with --debug.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

#: the top-level packages whose loggers may print to the terminal
OWN_PACKAGES = ("pipeline", "export", "benchmarks")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: ``log.info(..., extra=FILE_ONLY)``: a record of ours that belongs in the log files, not on the terminal
FILE_ONLY = {"file_only": True}
#: libraries whose DEBUG chatter is not worth a line even in the log file
CHATTY = ("urllib3", "filelock", "fsspec", "matplotlib", "PIL")


class OwnLinesOnly(logging.Filter):
    """Passes this project's records (no tracebacks, not marked file-only); drops third-party ones and warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.name.partition(".")[0] in OWN_PACKAGES and not record.exc_info
                and not getattr(record, "file_only", False))


def formatter() -> logging.Formatter:
    return logging.Formatter(FORMAT)


def file_handler(path: Path | str, delay: bool = False) -> logging.Handler:
    """A handler that appends every record (tracebacks, warnings, third-party records) to ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8", delay=delay)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(formatter())
    return handler


def configure_terminal(debug: bool, stream=None) -> logging.Handler:
    """Root logger and terminal handler for the ``pipeline`` command; warnings become log records.

    Returns the terminal handler (the caller adds file handlers beside it)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    terminal = logging.StreamHandler(stream if stream is not None else sys.stderr)
    terminal.setLevel(logging.DEBUG if debug else logging.INFO)
    terminal.setFormatter(formatter())
    if not debug:
        terminal.addFilter(OwnLinesOnly())
    root.addHandler(terminal)
    logging.captureWarnings(True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    return terminal


def route_library_output(debug: bool) -> None:
    """transformers and optimum log through our handlers, not their own stderr handler; without ``debug``
    transformers' progress bars (loading checkpoint shards, GGUF dequantization) are hidden. Imports transformers (and with it torch):
    call it only for commands that load models."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        transformers_logging = None
    if transformers_logging is not None:
        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
        if not debug:
            transformers_logging.disable_progress_bar()  # "Loading checkpoint shards" of a sharded folder
            _hide_gguf_progress_bar()
    try:
        from optimum.utils import logging as optimum_logging
    except ImportError:
        return
    optimum_logging.disable_default_handler()
    optimum_logging.enable_propagation()


def _hide_gguf_progress_bar() -> None:
    """transformers dequantizes a GGUF file under a plain tqdm bar of its own (not transformers' switchable one)."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf
    except ImportError:
        return
    bar = getattr(gguf, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        gguf.tqdm = functools.partial(bar, disable=True)


def configure_child() -> None:
    """In a child process: every record and warning to stderr, which the parent records (run_child)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root.addHandler(handler)
    logging.captureWarnings(True)
