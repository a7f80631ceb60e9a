"""Engines in child processes: greedy tokens agree across PyTorch, ONNX Runtime and DeepSparse,
and an engine that aborts becomes one clean error."""

import os
import subprocess
import sys

import pytest
import torch

from export.artifact import open_artifact
from export.engines import run_engine
from pipeline.common.errors import PipelineError

PROMPT = "hello world, this is"
N = 16


def test_greedy_tokens_identical_in_three_engines(tiny_artifact):
    from conftest import tiny_tokenizer

    model, folder, _ = tiny_artifact
    ids = tiny_tokenizer()(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=N, do_sample=False)[0, ids.shape[1]:].tolist()
    ort = run_engine("onnxruntime", folder, "test", prompt=PROMPT, max_new_tokens=N)
    internal = run_engine("deepsparse", folder, "test", prompt=PROMPT, max_new_tokens=N, sequence_length=64,
                          prompt_sequence_length=4, internal_kv_cache=True)
    external = run_engine("deepsparse", folder, "test", prompt=PROMPT, max_new_tokens=N, sequence_length=64,
                          prompt_sequence_length=1, internal_kv_cache=False)
    assert len(want) == N
    assert ort["ids"] == want
    assert internal["ids"] == want
    assert external["ids"] == want
    open_artifact(folder, verify_checksums=True)  # DeepSparse ran on a scratch copy: the artifact is unchanged


def test_aborting_engine_is_a_clean_error(tmp_path):
    with pytest.raises(PipelineError) as info:
        run_engine("abort", tmp_path, "benchmark")
    message = str(info.value)
    assert "SIGABRT" in message and "stage benchmark" in message and "simulated.cpp" in message and "fix:" in message


def test_cli_generate_both_engines_and_bad_artifact(tiny_artifact, tmp_path):
    _, folder, _ = tiny_artifact
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", str(folder), PROMPT, "--max-new-tokens", "8"],
                        capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert "[deepsparse]" in ok.stdout and "[onnxruntime]" in ok.stdout and "tokens/s" in ok.stdout
    (tmp_path / "empty").mkdir()
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", str(tmp_path / "empty"), PROMPT],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {tmp_path / 'empty'} has no manifest.json, so it is not an artifact of this tool — fix: re-run the export stage")


def test_the_quoted_engine_message_is_the_telling_line():
    from pipeline.common.child import last_words

    report = ("Thread: 0x7f\nReceived signal: Bus error (signal addr: 00007f12f4b04000)\nRegisters:\nBacktrace:\n"
              " 0# 0x00007f88e145a04f:\nPlease email a copy of this stack trace to: support@neuralmagic.com\n")
    assert last_words(report) == "Received signal: Bus error (signal addr: 00007f12f4b04000)"
    assert last_words("Traceback (most recent call last):\n  File x\nValueError: bad graph\n") == "ValueError: bad graph"
    assert last_words("just one line\n") == "just one line" and last_words("") == "no message"
