"""`pipeline validate` estimates each stage's RAM from the source's shapes alone, before any weight loads: from
config.json, or from a GGUF source's header, and refuses in one line what this machine cannot hold."""

import json

from conftest import run_cli, write_recipe
from test_bad_inputs import assert_one_clear_line


def test_validate_refuses_reconstruction_settings_that_cannot_fit_this_machine(workspace, tmp_path):
    """``pipeline validate`` reads config.json alone (the folder has no weights) and refuses, in one line, an obs
    reconstruction whose X^T X of a 400k-feature down_proj input (640 GB in float32) no machine here holds."""
    folder = tmp_path / "huge-mlp"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 400_000,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96}))
    path = write_recipe(workspace, "too-big-obs", model__source=str(folder), prune__reconstruct="obs",
                        prune__sparsity=0.5, prune__scope="mlp")
    proc = run_cli("validate", str(path), cwd=workspace, log_dir=tmp_path / "logs")
    line = assert_one_clear_line(proc, "stage prune needs about", tmp_path / "logs")
    assert "GiB is available" in line and "lower calibration.num_samples" in line
    fits = write_recipe(workspace, "fits", prune__reconstruct="obs", prune__sparsity=0.5)
    proc = run_cli("validate", str(fits), cwd=workspace, log_dir=tmp_path / "logs-fits")
    assert proc.returncode == 0, proc.stderr
    assert "# resources: peak RAM about" in proc.stdout and "config.json" in proc.stdout


def test_validate_reads_a_gguf_sources_shapes_from_its_header(workspace, tmp_path):
    """A GGUF-only source (what `pipeline fetch` stores) has no config.json: ``pipeline validate`` reads the shapes
    from the GGUF header (no weights, no torch) and refuses, in one line, the obs reconstruction that cannot fit."""
    import gguf
    import numpy as np

    folder = tmp_path / "huge-mlp-gguf"
    folder.mkdir()
    writer = gguf.GGUFWriter(folder / "model.gguf", arch="llama")  # a header that claims a 400k-wide MLP
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(400_000)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_token_list([f"t{i}" for i in range(96)])
    writer.add_tensor("token_embd.weight", np.zeros((96, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path = write_recipe(workspace, "too-big-obs-gguf", model__source=str(folder), model__gguf_file="model.gguf",
                        prune__reconstruct="obs", prune__sparsity=0.5, prune__scope="mlp")
    proc = run_cli("validate", str(path), cwd=workspace, log_dir=tmp_path / "logs")
    line = assert_one_clear_line(proc, "stage prune needs about", tmp_path / "logs")
    assert "GiB is available" in line
    path = write_recipe(workspace, "gguf-fits", model__source=str(folder), model__gguf_file="model.gguf",
                        prune__method="magnitude", prune__sparsity=0.5, prune__scope="mlp")
    proc = run_cli("validate", str(path), cwd=workspace, log_dir=tmp_path / "logs-fits")
    assert proc.returncode == 0, proc.stderr
    assert "# resources: peak RAM about" in proc.stdout and "model.gguf" in proc.stdout
