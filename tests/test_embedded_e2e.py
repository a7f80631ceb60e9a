"""End to end on the embedded SmolLM2-135M (real weights, real text), with small settings."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.recipe import load_recipe, parse_recipe
from pipeline.run import run_recipe


@pytest.mark.e2e
def test_embedded_recipe_prunes_and_perplexity_rises_plausibly(tmp_path):
    base = load_recipe("recipes/smollm2-embedded.yaml").model_dump(mode="json")
    base.update(output_dir=str(tmp_path / "run"))
    base["calibration"].update(num_samples=8, seq_len=128)
    base["evaluation"].update(context_length=256, max_windows=12)
    summary = run_recipe(parse_recipe(base), progress=False)

    dense = summary["perplexity"]["dense"]["perplexity"]
    pruned = summary["perplexity"]["pruned"]["perplexity"]
    assert 5 < dense < 40, dense  # about 14 at 512 tokens (PLATFORM.md); a little higher at 256
    assert dense * 1.05 < pruned < dense * 3, (dense, pruned)  # 50% MLP sparsity hurts, but not to nonsense

    out = tmp_path / "run" / "pruned"
    weights = load_file(out / "model.safetensors")
    gate = weights["model.layers.7.mlp.gate_proj.weight"]
    assert gate.shape == (1536, 576)
    assert ((gate == 0).sum(dim=0) == 768).all(), "DaSS unstructured: exactly half of every input column"
    attn = weights["model.layers.7.self_attn.q_proj.weight"]
    assert (attn == 0).float().mean() < 0.01, "scope mlp leaves attention dense"
    table = json.loads((out / "sparsity.json").read_text())
    assert table["summary"]["overall"] == pytest.approx(0.5)
    assert set(table["summary"]["by_role"]) == {"gate", "up", "down"}
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
