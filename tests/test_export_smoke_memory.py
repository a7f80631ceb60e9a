"""Engines run only where they can hold the artifact (the export's smoke test, the quantize stage's greedy check): a
skipped one is recorded, not a crash."""

import json
from types import SimpleNamespace

import psutil
import pytest
import yaml

from conftest import tiny_recipe_file
from pipeline.recipe import load_recipe
from pipeline.resources import engine_memory
from pipeline.runner import run_recipe

GiB = 2**30


def fake_artifact(folder, config: dict, data_bytes: int):
    for engine in ("deepsparse", "onnxruntime"):
        (folder / engine).mkdir(parents=True)
        (folder / engine / "config.json").write_text(json.dumps(config))
        with open(folder / engine / "model.onnx_data", "wb") as f:
            f.truncate(data_bytes)  # sparse file: the size without the disk


@pytest.mark.parametrize("sparsity,measured_gib", [(0.7, 9.99), (0.5, 14.80)])
def test_deepsparse_needs_the_non_zeros_as_measured_at_full_7b_depth(tmp_path, sparsity, measured_gib):
    from scripts.shapes import llama2_7b_config

    config = llama2_7b_config(32)
    params = 2 * config.vocab_size * config.hidden_size + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # + norms
    fake_artifact(tmp_path, config.to_dict(), params * 4)
    manifest = {"sparsity": {"overall_decoder_linears": sparsity}}
    need = engine_memory(tmp_path, "deepsparse", manifest) / GiB
    assert measured_gib <= need <= 1.1 * measured_gib  # benchmarks/results/full_depth_table: DeepSparse peak RSS
    assert engine_memory(tmp_path, "onnxruntime", manifest) / GiB > 25  # every weight, zeros included


def test_a_smoke_test_the_machine_cannot_hold_is_skipped_and_said(tmp_path, monkeypatch):
    path = tiny_recipe_file(tmp_path, "smoke", {"method": "magnitude", "sparsity": 0.5, "scope": "mlp"})
    data = yaml.safe_load(path.read_text())
    data["export"] = {"enabled": True, "engines": ["onnxruntime"], "max_sequence_length": 64, "smoke_tokens": 4}
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=GiB // 2))
    summary = run_recipe(load_recipe(path), progress=False, skip_preflight=True)
    smoke = summary["export"]["smoke"]["onnxruntime"]
    assert "ids" not in smoke and smoke["skipped"].startswith("not run: onnxruntime would hold about")
    assert smoke["needed_bytes"] > smoke["available_bytes"] == GiB // 2
    assert "not run: onnxruntime would hold" in (tmp_path / "run" / "report.md").read_text()


def test_a_quantize_greedy_check_the_machine_cannot_hold_is_skipped_and_said(tmp_path, monkeypatch):
    """The INT8 artifact is still written and checked in ONNX Runtime (mapped weights); only the engine run
    that would hold the whole float artifact is left out, and the summary and report say so."""
    path = tiny_recipe_file(tmp_path, "quant", {"method": "magnitude", "sparsity": 0.5, "scope": "mlp"})
    data = yaml.safe_load(path.read_text())
    data["export"] = {"enabled": True, "engines": ["onnxruntime"], "max_sequence_length": 64, "smoke_test": False}
    data["quantize"] = {"enabled": True, "num_samples": 2, "seq_len": 16, "check_tokens": 4, "perplexity": False,
                        "agreement_windows": 0}
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=GiB // 2))
    summary = run_recipe(load_recipe(path), progress=False, skip_preflight=True)
    info = summary["quantize"]["engines"]["onnxruntime"]
    assert info["greedy_vs_float"]["skipped"].startswith("not run: onnxruntime would hold about")
    assert info["pruned_zeros_kept"] and 0 <= info["top1_agreement_vs_float"] <= 1
    assert (tmp_path / "run" / "artifact-int8" / "onnxruntime" / "model.onnx").is_file()
    assert "not run: onnxruntime would hold" in (tmp_path / "run" / "report.md").read_text()
