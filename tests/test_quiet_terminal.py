"""The terminal shows our lines; third-party warnings and log records go to the log file (everything with --debug),
in the process itself and from its child processes. Each case runs in a fresh interpreter, with the real
libraries (torch's TracerWarning, transformers' and optimum's own loggers)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = '''
import logging, warnings
from pipeline.common.child import child_main

def work(payload):
    warnings.warn("CHILD-WARNING from an engine", UserWarning)
    logging.getLogger("deepsparse.engine").warning("CHILD-LIBRARY-RECORD")
    return {"answer": payload["question"] * 2}

if __name__ == "__main__":
    child_main(work)
'''

SCRIPT = '''
import logging, sys, warnings
from pipeline.common.logsetup import configure_terminal, file_handler, route_library_output
from pipeline.common.child import run_child

debug = sys.argv[2] == "debug"
configure_terminal(debug)
logging.getLogger().addHandler(file_handler(sys.argv[1]))
route_library_output(debug)

import torch
from transformers.utils import logging as transformers_logging
from optimum.utils import logging as optimum_logging

warnings.warn("TRACER-WARNING Converting a tensor to a Python boolean", torch.jit.TracerWarning)
transformers_logging.get_logger("transformers.tokenization_utils_base").warning("TRANSFORMERS-LEGACY-NOTICE")
optimum_logging.get_logger("optimum.exporters.onnx").warning("OPTIMUM-LINE")
logging.warning("ORT-PREPROCESS-ADVICE")  # onnxruntime.quantization logs on the root logger
logging.getLogger("pipeline.runner").info("OUR-STAGE-LINE")
logging.getLogger("export.artifact").warning("OUR-WARNING-LINE")
try:
    raise ValueError("OUR-TRACEBACK")
except ValueError:  # a traceback is for the log file (the CLI prints its one-line error itself)
    logging.getLogger("pipeline.cli").error("failed", exc_info=True)
assert run_child("quiet_child", {"question": 21}, "test engine", "test", timeout=120) == {"answer": 42}
'''

THIRD_PARTY = ("TRACER-WARNING", "TRANSFORMERS-LEGACY-NOTICE", "OPTIMUM-LINE", "ORT-PREPROCESS-ADVICE",
               "CHILD-WARNING", "CHILD-LIBRARY-RECORD")


def run_script(tmp_path, mode):
    (tmp_path / "quiet_child.py").write_text(CHILD)
    log = tmp_path / f"{mode}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log), mode], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr, log.read_text()


def test_third_party_output_goes_to_the_log_file_only(tmp_path):
    terminal, logged = run_script(tmp_path, "quiet")
    for text in THIRD_PARTY:
        assert text not in terminal, terminal
        assert text in logged, text
    assert "TracerWarning" in logged and "Traceback" in logged and "OUR-TRACEBACK" in logged
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert len(lines) == 2 and "INFO pipeline.runner: OUR-STAGE-LINE" in lines[0], terminal
    assert "WARNING export.artifact: OUR-WARNING-LINE" in lines[1]


def test_debug_shows_everything_on_the_terminal(tmp_path):
    terminal, logged = run_script(tmp_path, "debug")
    for text in (*THIRD_PARTY, "OUR-STAGE-LINE", "OUR-WARNING-LINE", "OUR-TRACEBACK"):
        assert text in terminal, text
        assert text in logged, text


@pytest.mark.parametrize("debug", [False, True])
def test_the_gguf_progress_bar_of_transformers_is_hidden_unless_debugging(tmp_path, debug):
    code = ("import sys, io, transformers.modeling_gguf_pytorch_utils as gguf\n"
            "from pipeline.common.logsetup import route_library_output\n"
            f"route_library_output({debug})\n"
            "stream = io.StringIO()\n"
            "for _ in gguf.tqdm(range(3), desc='Converting and de-quantizing GGUF tensors...', file=stream): pass\n"
            "print(repr(stream.getvalue()))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("de-quantizing" in proc.stdout) is debug
