"""Run engine work in a child process, so that a C++ abort, a segfault or an out-of-memory kill
becomes one PipelineError (naming the stage, the target and the engine's last message) instead of
the death of the whole run.

The child is ``python -m MODULE '<json payload>'``; the module calls ``child_main(function)``,
which prints the function's result as one ``ENGINE_RESULT {json}`` line. The child logs everything
(warnings included) to its stderr; the parent records that in its log files, not on the terminal
(pipeline/common/logsetup.py), and quotes its telling line in an error.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from typing import Callable

from pipeline.common.errors import PipelineError
from pipeline.common.logsetup import FILE_ONLY, configure_child

log = logging.getLogger(__name__)

RESULT_PREFIX = "ENGINE_RESULT "
#: lines of an engine's stderr that say what went wrong (the last one is quoted in the error)
TELLING = ("Assertion", "Received signal", "Error", "error:", "Exception", "Killed", "Aborted")


def run_child(module: str, payload: dict, what: str, stage: str, timeout: float, env: dict | None = None) -> dict:
    """Run ``module``'s child entry point on ``payload``; ``what`` names the engine and target in errors."""
    try:
        proc = subprocess.run([sys.executable, "-m", module, json.dumps(payload)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{what} ran past {timeout:.0f} s in stage {stage}",
                            "raise the time budget or use a smaller model / shorter run") from None
    if proc.stderr.strip():
        log.info("%s (stage %s), child process output:\n%s", what, stage, proc.stderr.rstrip(), extra=FILE_ONLY)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    message = last_words(proc.stderr or "")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        hint = " (SIGKILL is usually the out-of-memory killer)" if name == "SIGKILL" else ""
        raise PipelineError(f"{what} died with {name}{hint} in stage {stage}; its last message: {message}",
                            "this graph or engine version is not supported there; the run folder is intact, "
                            "try the other engine (pipeline generate --engine onnxruntime)")
    raise PipelineError(f"{what} failed (exit {proc.returncode}) in stage {stage}: {message}",
                        "see the message; the run folder is intact")


def last_words(stderr: str) -> str:
    """The line of a child's stderr that says what went wrong: the last telling one, else the last one.

    (DeepSparse ends a crash report with a "please email this stack trace" line; the signal or
    assertion line before it is what a user needs.)"""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    telling = [line for line in lines if any(k in line for k in TELLING)]
    return (telling or lines or ["no message"])[-1][-300:]


def child_main(function: Callable[[dict], dict]) -> None:
    """Entry point of a child: run ``function`` on the JSON payload in argv[1] and print its result."""
    configure_child()
    result = function(json.loads(sys.argv[1]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
