"""The artifact: zeros survive into the ONNX files, logits match PyTorch, both loaders work,
and bad artifacts or bad export conditions give one clear error with nothing half-written."""

import json
import shutil
from collections import namedtuple

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import pruned_tiny, tiny_non_glu_model, tiny_tokenizer
from export import artifact as artifact_module
from export.artifact import export_artifact, open_artifact
from export.checks import deepsparse_graph_logits, onnx_weight_sparsity, onnxruntime_graph_logits
from pipeline.common.errors import PipelineError


def test_layout_and_manifest(tiny_artifact):
    model, folder, manifest = tiny_artifact
    for engine in ("deepsparse", "onnxruntime"):
        for name in ("model.onnx", "model.onnx_data", "config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / engine / name).is_file(), f"{engine}/{name}"
    assert manifest["method"] == "dass" and manifest["engines"]["deepsparse"]["external_data"]
    assert set(manifest["versions"]) >= {"torch", "transformers", "optimum", "onnx", "deepsparse"}
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["files"]["onnxruntime/model.onnx"]["sha256"] == manifest["files"]["onnxruntime/model.onnx"]["sha256"]
    assert not [p for p in folder.parent.iterdir() if ".partial" in p.name]
    from export.artifact import DEEPSPARSE_DATA_TAIL

    tail = (folder / "deepsparse" / "model.onnx_data").read_bytes()[-DEEPSPARSE_DATA_TAIL:]
    assert tail == bytes(DEEPSPARSE_DATA_TAIL), "DeepSparse reads past the last weight: the data file has a zero tail"


def test_sparsity_in_onnx_equals_pytorch(tiny_artifact):
    model, folder, manifest = tiny_artifact
    expected = {name: float((m.weight == 0).float().mean()) for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"}
    assert all(v == 0.5 for v in expected.values())
    for engine in ("deepsparse", "onnxruntime"):
        assert manifest["engines"][engine]["sparsity_in_onnx"] == pytest.approx(expected, abs=0)
        # independently: count zeros over all weight-sized initializers, external data included
        graph = onnx.load(str(folder / engine / "model.onnx"), load_external_data=True).graph
        shapes = {tuple(m.weight.shape) for n, m in model.named_modules() if n in expected}
        zeros = total = 0
        for init in graph.initializer:
            if tuple(init.dims) in shapes or tuple(init.dims)[::-1] in shapes:
                array = numpy_helper.to_array(init)
                zeros += int((array == 0).sum())
                total += array.size
        assert total > 0 and zeros / total >= 0.5 - 1e-9


def test_sparsity_check_notices_a_changed_weight(tiny_artifact):
    model, folder, _ = tiny_artifact
    weight = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
    weight[0, 0] += 1.0
    with pytest.raises(PipelineError, match="not in .* unchanged"):
        onnx_weight_sparsity(folder / "onnxruntime" / "model.onnx", {"changed": weight})


def test_logits_match_pytorch(tiny_artifact):
    model, folder, manifest = tiny_artifact
    ids = np.array([[3, 17, 42, 8, 64, 9, 11]])
    with torch.no_grad():
        reference = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    for fn, engine in ((deepsparse_graph_logits, "deepsparse"), (onnxruntime_graph_logits, "onnxruntime")):
        assert np.abs(fn(folder / engine / "model.onnx", model.config, ids) - reference).max() < 1e-4
        assert manifest["engines"][engine]["logits_max_abs_diff_vs_pytorch"] < 1e-4


def test_onnxruntime_loader_generates_like_pytorch(tiny_artifact):
    from optimum.onnxruntime import ORTModelForCausalLM

    model, folder, _ = tiny_artifact
    ids = torch.tensor([[3, 17, 42, 8]])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=12, do_sample=False)
    got = ORTModelForCausalLM.from_pretrained(folder / "onnxruntime").generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(want, got)


@pytest.fixture
def broken(tiny_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact[1], copy)
    return copy


def test_open_artifact_bad_inputs(broken, tmp_path):
    open_artifact(broken, verify_checksums=True)  # the intact copy passes
    with pytest.raises(PipelineError, match="does not exist"):
        open_artifact(tmp_path / "nope")
    (broken / "deepsparse" / "tokenizer.json").unlink()
    with pytest.raises(PipelineError, match="missing deepsparse/tokenizer.json"):
        open_artifact(broken)
    open_artifact(broken, engine="onnxruntime")  # the other engine's folder is still fine
    data = broken / "onnxruntime" / "model.onnx_data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(PipelineError, match="truncated or altered"):
        open_artifact(broken, engine="onnxruntime")
    (broken / "manifest.json").unlink()
    with pytest.raises(PipelineError, match="no manifest.json"):
        open_artifact(broken)


def test_open_artifact_corrupt_onnx_same_size(broken):
    graph = broken / "deepsparse" / "model.onnx"
    graph.write_bytes(b"\xff" * graph.stat().st_size)
    with pytest.raises(PipelineError, match="not a readable ONNX file"):
        open_artifact(broken, engine="deepsparse")
    with pytest.raises(PipelineError, match="sha256"):
        open_artifact(broken, engine="deepsparse", verify_checksums=True)


def test_uncovered_architecture_writes_nothing(tmp_path):
    target = tmp_path / "artifact"
    with pytest.raises(PipelineError, match="DeepSparse export covers"):
        export_artifact(tiny_non_glu_model(), tiny_tokenizer(), target)
    assert not target.exists()


def test_not_enough_disk_writes_nothing(tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(artifact_module.shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 1000))
    target = tmp_path / "artifact"
    with pytest.raises(PipelineError, match="not enough disk"):
        export_artifact(pruned_tiny(), tiny_tokenizer(), target)
    assert not target.exists()


def test_both_graphs_read_one_weights_file(tiny_artifact):
    """The ONNX Runtime graph's data file is a hard link to the DeepSparse graph's: one copy of the weights on
    disk, every checksum in the manifest still true, and the ONNX Runtime graph still computes PyTorch's logits."""
    import os

    model, folder, manifest = tiny_artifact
    ds, ort = folder / "deepsparse" / "model.onnx_data", folder / "onnxruntime" / "model.onnx_data"
    assert os.path.samefile(ds, ort)
    shared = manifest["engines"]["onnxruntime"]["shared_weights"]
    assert shared["hard_link"] and shared["shared_bytes"] > 0.9 * sum(p.numel() * 4 for p in model.parameters())
    assert manifest["disk_bytes"] == sum(f["bytes"] for f in manifest["files"].values()) - ds.stat().st_size
    open_artifact(folder, verify_checksums=True)
    graph = onnx.load(str(folder / "onnxruntime" / "model.onnx"), load_external_data=False).graph
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx_data"}  # inside its own folder: ONNX Runtime refuses paths that leave it
    prompt = tiny_tokenizer()("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model.float()(input_ids=prompt, use_cache=False).logits.numpy()
    logits = onnxruntime_graph_logits(folder / "onnxruntime" / "model.onnx", model.config, prompt.numpy())
    assert np.abs(logits - reference).max() < 1e-3


def test_share_weights_off_keeps_two_files(tmp_path):
    import os

    folder = tmp_path / "artifact"
    manifest = export_artifact(pruned_tiny(), tiny_tokenizer(), folder, max_positions=64, external_data=True,
                               share=False)
    assert not os.path.samefile(folder / "deepsparse" / "model.onnx_data", folder / "onnxruntime" / "model.onnx_data")
    assert "shared_weights" not in manifest["engines"]["onnxruntime"]
    assert manifest["disk_bytes"] == sum(f["bytes"] for f in manifest["files"].values())


def _graph_with_external(folder, initializers: dict, constants: dict):
    """``folder/model.onnx`` whose outputs are its tensors as they are; each external, in ``model.onnx_data``, in
    the order given (initializers, then Constant values: Optimum's layout above 2 GB, ``convert_attribute=True``)."""
    from onnx import helper, numpy_helper

    from export.shared_weights import point_at

    folder.mkdir(parents=True)
    tensors, nodes, outputs, offset = [], [], [], 0
    with open(folder / "model.onnx_data", "wb") as data:
        for kind, items in (("init", initializers), ("const", constants)):
            for name, array in items.items():
                tensor = numpy_helper.from_array(array.astype(np.float32), name)
                data.write(tensor.raw_data)
                point_at(tensor, "model.onnx_data", offset, len(tensor.raw_data))
                offset += array.size * 4
                if kind == "init":
                    tensors.append(tensor)
                    nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
                else:
                    nodes.append(helper.make_node("Constant", [], [f"{name}_out"], value=tensor))
                outputs.append(helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, list(array.shape)))
    graph = helper.make_graph(nodes, "g", [], outputs, tensors)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))


def _outputs(folder):
    from export.checks import ort_session

    session = ort_session(folder / "model.onnx")
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {})))


@pytest.mark.parametrize("constant", ["in deepsparse data", "small, its own", "large, its own"])
def test_shared_weights_file_keeps_every_external_tensor_right_constants_included(tmp_path, constant, monkeypatch):
    import os

    import export.shared_weights as sw

    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal(4), rng.standard_normal(8), rng.standard_normal(4)
    if constant == "large, its own":
        monkeypatch.setattr(sw, "INLINE_MAX", 8)  # C's 16 bytes are then too many to move into model.onnx
    _graph_with_external(tmp_path / "deepsparse", {"A": a, "B": b, **({"C": c} if constant == "in deepsparse data"
                                                                       else {})}, {})
    # the ONNX Runtime graph's Constant sits at an offset of its own file that holds other bytes in the DeepSparse one
    _graph_with_external(tmp_path / "onnxruntime", {"B": b}, {"C": c})
    shared = sw.share_weights(tmp_path)
    linked = os.path.samefile(tmp_path / "deepsparse" / "model.onnx_data", tmp_path / "onnxruntime" / "model.onnx_data")
    # a constant the DeepSparse data lacks moves into model.onnx when small; a large one would be lost: no link
    assert shared["hard_link"] is linked is (constant != "large, its own")
    if constant == "small, its own":
        assert shared["inline_bytes"] == 16 and shared["shared_bytes"] == 32
    got = _outputs(tmp_path / "onnxruntime")
    np.testing.assert_array_equal(got["B_out"], b.astype(np.float32))
    np.testing.assert_array_equal(got["C_out"], c.astype(np.float32))
