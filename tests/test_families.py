"""The coverage table of docs/families.md, cell by cell: each family's tiny random model is pruned (DaSS 2:4 on
attention + MLP), exported as both graphs, and greedy-decoded in DeepSparse (its internal KV cache, prefill of 4
and single steps) and ONNX Runtime; both must give PyTorch's whole token sequence. LLaMA also in tests/test_engines.py;
pruning of every family by tests/test_sequential.py, incremental decoding of the DeepSparse graph in ONNX Runtime
by tests/test_export_patches.py."""

from __future__ import annotations

import pytest
import torch

from conftest import ARCHITECTURES, FUSED_ARCHITECTURES, pruned_tiny, tiny_tokenizer
from export.artifact import export_artifact
from export.engines import run_engine

PROMPT = "hello world, this is"
N = 12
FAMILIES = list(ARCHITECTURES) + list(FUSED_ARCHITECTURES)


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_generates_pytorchs_tokens_in_deepsparse_and_onnxruntime(arch, tmp_path):
    model = pruned_tiny(arch)  # DaSS 2:4; Phi-3's fused linears role by role (tests/test_sequential.py)
    tokenizer = tiny_tokenizer()
    folder = tmp_path / "artifact"
    manifest = export_artifact(model, tokenizer, folder, max_positions=128, metadata={"method": "dass"})
    assert manifest["sparsity"]["overall_decoder_linears"] == pytest.approx(0.5)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        # stops at EOS as the engines do (the EOS token itself included), so the whole sequences are compared
        want = model.generate(ids, max_new_tokens=N, do_sample=False)[0, ids.shape[1]:].tolist()
    ort = run_engine("onnxruntime", folder, "test", prompt=PROMPT, max_new_tokens=N)
    deepsparse = run_engine("deepsparse", folder, "test", prompt=PROMPT, max_new_tokens=N, sequence_length=64,
                            prompt_sequence_length=4, internal_kv_cache=True)
    assert len(want) >= 4, f"{arch}: PyTorch stopped after {len(want)} tokens; a prompt that runs longer tests more"
    assert ort["ids"] == want, arch
    assert deepsparse["ids"] == want, arch
