"""A tied embedding stored once (export/tied_embedding.py): each graph holds one [hidden, vocab] table that the
lookup and the LM head both read, its bytes appear once in the artifact's weights, and the logits still match
PyTorch in both graphs, and DeepSparse decodes as ONNX Runtime does."""

import numpy as np
import onnx
import torch


def test_tied_table_stored_once_and_logits_match_pytorch(tmp_path):
    from tests.conftest import pruned_tiny, tiny_tokenizer

    from export.artifact import disk_bytes, export_artifact
    from export.checks import deepsparse_graph_logits, onnxruntime_graph_logits
    from export.engines import run_engine

    model = pruned_tiny()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    folder = tmp_path / "artifact"
    manifest = export_artifact(model, tiny_tokenizer(), folder, max_positions=128, external_data=True)
    table = model.model.embed_tokens.weight.detach().numpy()  # [vocab 96, hidden 64]
    for engine, was in (("deepsparse", "transposed copy"), ("onnxruntime", "Transpose(table)")):
        assert manifest["engines"][engine]["tied_embedding"]["was"] == was
        graph = onnx.load(str(folder / engine / "model.onnx"), load_external_data=False).graph
        assert [list(i.dims) for i in graph.initializer if sorted(i.dims) == [64, 96]] == [[64, 96]]  # E^T alone
    # the bytes: E^T once in the one weights file both graphs read (a hard link), E not at all
    data = (folder / "deepsparse" / "model.onnx_data").read_bytes()
    assert (folder / "onnxruntime" / "model.onnx_data").samefile(folder / "deepsparse" / "model.onnx_data")
    assert data.count(np.ascontiguousarray(table.T).tobytes()) == 1 and data.count(table.tobytes()) == 0
    assert disk_bytes(folder) < sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    ids = np.random.default_rng(0).integers(2, 96, (1, 20))
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    for logits in (deepsparse_graph_logits(folder / "deepsparse" / "model.onnx", model.config, ids),
                   onnxruntime_graph_logits(folder / "onnxruntime" / "model.onnx", model.config, ids)):
        np.testing.assert_allclose(logits, want, atol=1e-4)
    spec = {"sequence_length": 64, "prompt_sequence_length": 4, "internal_kv_cache": True}
    decoded = [run_engine(engine, folder, "test", prompt="Hello there", max_new_tokens=8, **extra)["ids"]
               for engine, extra in (("deepsparse", spec), ("onnxruntime", {}))]
    assert decoded[0] == decoded[1] and len(decoded[0]) == 8  # DeepSparse compiles the column lookup
