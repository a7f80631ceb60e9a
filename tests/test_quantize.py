"""INT8 quantization of an artifact: pruned zeros stay exactly zero, both loaders run it, its decode
agrees with the float artifact, and schemes DeepSparse cannot run are refused up front."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.artifact import open_artifact
from export.engines import run_engine
from export.quantize import linear_matmuls, quantize_artifact
from export.schemes import check_scheme
from pipeline.common.errors import PipelineError
from pipeline.recipe import parse_recipe


@pytest.fixture(scope="module")
def int8_artifact(tiny_artifact, tmp_path_factory):
    model, folder, _ = tiny_artifact
    rng = np.random.default_rng(0)
    target = tmp_path_factory.mktemp("int8") / "artifact-int8"
    manifest = quantize_artifact(folder, target, "w8a8-static", rng.integers(2, 96, (8, 32)),
                                 rng.integers(2, 96, (1, 16)), smoothing_strength=0.5)  # the recipe default
    return model, folder, target, manifest


def test_layout_manifest_and_every_pruned_zero_kept(int8_artifact):
    model, _, target, manifest = int8_artifact
    assert open_artifact(target, verify_checksums=True)["quantization"]["scheme"] == "w8a8-static"
    pruned = [m.weight.detach().T.numpy() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"]
    for engine in ("deepsparse", "onnxruntime"):
        info = manifest["engines"][engine]
        assert info["quantized_matmuls"] == 12 and info["pruned_zeros_kept"]  # q k v o gate up x 2 layers
        graph = onnx.load(str(target / engine / "model.onnx")).graph
        int8 = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8
                and len(i.dims) == 2]
        assert len(int8) == 12
        for q in int8:  # independently of the manifest: int8 zeros cover the pruned positions (2:4 -> half)
            assert (q == 0).mean() >= 0.5
            assert any(w.shape == q.shape and ((w == 0) <= (q == 0)).all() for w in pruned)
        ops = [n.op_type for n in graph.node]
        assert ops.count("MatMulInteger") == 12 and "DequantizeLinear" not in ops  # DeepSparse's INT8 form
        assert ops.count("QuantizeLinear") == 6  # one per activation and layer: q/k/v, o, gate/up
    from export.artifact import DEEPSPARSE_DATA_TAIL

    tail = (target / "deepsparse" / "model.onnx_data").read_bytes()[-DEEPSPARSE_DATA_TAIL:]
    assert tail == bytes(DEEPSPARSE_DATA_TAIL)  # else DeepSparse's INT8 kernels can read past the file (SIGBUS)


def test_the_two_int8_graphs_share_one_weights_file(int8_artifact):
    """As in the float artifact: the onnxruntime graph reads the deepsparse graph's weights file (one inode, one
    copy of the int8 weights on disk)."""
    import os

    from export.artifact import disk_bytes

    _, folder, target, manifest = int8_artifact
    ds, ort = target / "deepsparse" / "model.onnx_data", target / "onnxruntime" / "model.onnx_data"
    assert os.stat(ds).st_ino == os.stat(ort).st_ino and os.stat(ds).st_nlink == 2
    shared = manifest["engines"]["onnxruntime"]["shared_weights"]
    assert shared["hard_link"] and shared["shared_bytes"] > 0
    graph = onnx.load(str(target / "onnxruntime" / "model.onnx"), load_external_data=False).graph
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert int8 and all({e.key: e.value for e in i.external_data}.get("location") == "model.onnx_data" for i in int8)
    every_name = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert disk_bytes(target) == every_name - ds.stat().st_size  # the shared file counted once
    # both engines decode the shared artifact: test_logits_and_greedy_decode_agree_with_float_in_both_engines


def test_the_second_graph_reuses_the_first_graphs_calibration(tiny_artifact, tmp_path, monkeypatch):
    """The two graphs compute the same activations in a different float order, so ranges calibrated per graph differ
    in their last bits, and so would the smoothed weights: the artifact could not share one weights file (it did not
    on a real 1.5B model). Here each calibration is made to differ a little: the second graph must not calibrate,
    and the weights file is still shared."""
    import os

    import export.smooth as smooth

    calls = []
    calibrate = smooth.channel_ranges

    def noisy(*args, **kwargs):
        calls.append(1)
        factor = np.float32(1 + 1e-3 * len(calls))
        return {x: (low * factor, high * factor) for x, (low, high) in calibrate(*args, **kwargs).items()}

    monkeypatch.setattr(smooth, "channel_ranges", noisy)
    _, folder, _ = tiny_artifact
    rng = np.random.default_rng(1)
    target = tmp_path / "artifact-int8"
    manifest = quantize_artifact(folder, target, "w8a8-static", rng.integers(2, 96, (4, 32)),
                                 rng.integers(2, 96, (1, 16)), smoothing_strength=0.5)
    assert len(calls) == 1
    assert [manifest["engines"][e]["calibration"] for e in ("deepsparse", "onnxruntime")] == ["own", "shared"]
    ds, ort = target / "deepsparse" / "model.onnx_data", target / "onnxruntime" / "model.onnx_data"
    assert os.stat(ds).st_ino == os.stat(ort).st_ino


def test_only_decoder_linears_are_quantized(int8_artifact):
    _, folder, _, _ = int8_artifact
    graph = onnx.load(str(folder / "deepsparse" / "model.onnx"), load_external_data=False).graph
    assert [len(x) for x in linear_matmuls(graph, vocab_size=96)] == [14, 2 * 2 + 1]  # QK^T and AV, LM head
    linears, others = linear_matmuls(graph, vocab_size=96, intermediate_size=128)
    assert len(linears) == 12 and len(others) == 2 * 2 + 1 + 2  # ... and down_proj


def test_logits_and_greedy_decode_agree_with_float_in_both_engines(int8_artifact):
    _, folder, target, manifest = int8_artifact
    for engine in ("deepsparse", "onnxruntime"):
        assert manifest["engines"][engine]["top1_agreement_vs_float"] == 1.0
        assert manifest["engines"][engine]["logits_max_abs_diff_vs_float"] < 0.1
        spec = {"sequence_length": 64, "prompt_sequence_length": 4, "internal_kv_cache": True} if engine == "deepsparse" else {}
        a = run_engine(engine, folder, "test", prompt="Hello there", max_new_tokens=12, **spec)
        b = run_engine(engine, target, "test", prompt="Hello there", max_new_tokens=12, **spec)
        assert a["ids"] == b["ids"], engine


def _smoothing_inputs(folder, engine="onnxruntime"):
    from transformers import AutoConfig

    from export.quantize import _feeds

    graph = folder / engine / "model.onnx"
    config = AutoConfig.from_pretrained(folder / engine)
    rng = np.random.default_rng(1)
    return graph, config, _feeds(engine, graph, config, rng.integers(2, 96, (4, 32))), rng.integers(2, 96, (1, 24))


def _save(model, folder):
    folder.mkdir(parents=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx_data")
    return folder / "model.onnx"


def test_smoothing_moves_scale_into_the_weights_without_changing_the_float_function(tiny_artifact, tmp_path):
    from export.checks import onnxruntime_graph_logits
    from export.graph_tensors import GraphTensors
    from export.smooth import activation_maxima, smooth, smoothing_groups

    _, folder, _ = tiny_artifact
    graph, config, feeds, ids = _smoothing_inputs(folder)
    model = onnx.load(str(graph))
    linears, _ = linear_matmuls(model.graph, 96, 128)
    groups = smoothing_groups(model.graph, set(linears))
    # per layer: input norm -> q, k, v and post-attention norm -> gate, up (o_proj's input has no foldable producer)
    assert sorted((g.kind, len(g.weights)) for g in groups) == [("norm", 2)] * 2 + [("norm", 3)] * 2
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    maxima = activation_maxima(model, [g.activation for g in groups], feeds, tmp_path)
    store = GraphTensors(model)
    assert smooth(store, groups, maxima, 0.5)["groups"] == 4
    (tmp_path / "smoothed").mkdir()
    store.save(smoothed := tmp_path / "smoothed" / "model.onnx")
    model = onnx.load(str(smoothed))
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    assert any(g.shared for g in groups)  # the exporter merged the all-ones norm weights: copies were made
    for g in groups:  # the norm vector that the producer now reads was divided by s
        assert not np.allclose(before[g.divisor], after[nodes[g.producer].input[g.port]])
        for w in g.weights:
            assert not np.allclose(before[w], after[w]) and ((before[w] == 0) == (after[w] == 0)).all()
    np.testing.assert_allclose(onnxruntime_graph_logits(smoothed, config, ids),
                               onnxruntime_graph_logits(graph, config, ids), atol=1e-4)


def test_smoothing_rescues_int8_from_an_activation_outlier_channel(tiny_artifact, tmp_path):
    """Channel 3 of every norm output made 100x larger, the weights that read it 100x smaller: the same
    float function, but per-tensor INT8 activations lose the other channels unless smoothing moves it back."""
    from export.checks import onnxruntime_graph_logits
    from export.quantize import quantize_graph
    from export.smooth import smoothing_groups

    _, folder, _ = tiny_artifact
    graph, config, feeds, ids = _smoothing_inputs(folder)
    model = onnx.load(str(graph))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for g in smoothing_groups(model.graph, set(linear_matmuls(model.graph, 96, 128)[0])):
        vector = numpy_helper.to_array(inits[g.divisor]).copy()
        vector[3] *= 100  # each norm its own copy (the exporter merged the all-ones vectors)
        model.graph.initializer.append(numpy_helper.from_array(vector, f"{g.producer}.outlier"))
        nodes[g.producer].input[g.port] = f"{g.producer}.outlier"
        for w in g.weights:
            value = numpy_helper.to_array(inits[w]).copy()
            value[3] /= 100
            inits[w].CopyFrom(numpy_helper.from_array(value, w))
    outlier = _save(model, tmp_path / "outlier")
    want = onnxruntime_graph_logits(graph, config, ids)
    np.testing.assert_allclose(onnxruntime_graph_logits(outlier, config, ids), want, atol=1e-3)
    errors = {}
    for strength in (None, 0.5):
        out = tmp_path / f"int8-{strength}"
        out.mkdir()
        done = quantize_graph(outlier, out, feeds, check_scheme("w8a8-static"), config, strength)
        assert done.get("smoothing", {}).get("max_outlier_ratio", 100) > 20
        errors[strength] = np.abs(onnxruntime_graph_logits(out / "model.onnx", config, ids) - want).mean()
    assert errors[0.5] < errors[None] / 3, errors


def test_schemes_deepsparse_cannot_run_are_refused():
    assert check_scheme("w8a8-static").weights.startswith("int8")
    for name in ("w4a16", "w8a8-dynamic", "int3"):
        with pytest.raises(PipelineError, match=f"quantize.scheme '{name}' cannot run in DeepSparse"):
            check_scheme(name)


def test_quantizing_what_was_not_exported(tmp_path):
    with pytest.raises(PipelineError, match="artifact folder .* does not exist"):
        quantize_artifact(tmp_path / "nope", tmp_path / "out", "w8a8-static", np.zeros((1, 8), np.int64),
                          np.zeros((1, 4), np.int64))
    assert not (tmp_path / "out").exists()
    base = {"name": "q", "model": {"source": "x"}, "quantize": {"enabled": True}}
    with pytest.raises(PipelineError, match="quantize works on the exported ONNX artifact"):
        parse_recipe(base)
    with pytest.raises(PipelineError, match="w4a16' cannot run in DeepSparse"):
        parse_recipe({**base, "export": {"enabled": True}, "quantize": {"enabled": True, "scheme": "w4a16"}})


def test_rtn_4bit_keeps_pruned_zeros_and_rounds_within_half_a_step():
    from pipeline.core.fake_quant import rtn_quantize

    torch.manual_seed(0)
    w = torch.randn(64, 256)
    w[:, ::2] = 0  # pruned
    q = rtn_quantize(w, bits=4, group=128)
    assert (q[w == 0] == 0).all()
    for g in range(2):
        block, orig = q[:, g * 128:(g + 1) * 128], w[:, g * 128:(g + 1) * 128]
        step = (orig.amax(1) - orig.amin(1)) / 15
        assert ((block - orig).abs().amax(1) <= step / 2 + 1e-6).all()
        assert max(len(torch.unique(row[row != 0])) for row in block) <= 16
    with pytest.raises(PipelineError, match="does not divide"):
        rtn_quantize(torch.randn(4, 100), group=128)


def test_onnx_perplexity_equals_pytorch_for_the_float_graph_and_int8_stays_close(int8_artifact):
    from conftest import calibration_ids
    from export.onnx_perplexity import artifact_perplexity
    from pipeline.core.evaluate import perplexity

    model, folder, target, _ = int8_artifact
    tokens = calibration_ids(n=1, seq_len=96, seed=3)[0]
    want = perplexity(model, tokens, 32, progress=False)["perplexity"]
    for engine in ("deepsparse", "onnxruntime"):
        got = artifact_perplexity(folder, tokens, 32, engine=engine, progress=False)
        assert got["windows"] == 3 and got["perplexity"] == pytest.approx(want, rel=1e-4)
        int8 = artifact_perplexity(target, tokens, 32, engine=engine, progress=False)["perplexity"]
        assert int8 == pytest.approx(want, rel=0.05)


def test_top1_agreement_on_text_counts_the_positions_where_both_graphs_pick_one_token(int8_artifact):
    from transformers import AutoConfig

    from conftest import calibration_ids
    from export.checks import deepsparse_graph_logits, onnxruntime_graph_logits
    from export.onnx_perplexity import top1_agreement

    _, folder, target, _ = int8_artifact
    tokens = calibration_ids(n=1, seq_len=100, seed=5)[0]  # 3 windows of 32, the last 4 tokens unused
    for engine, logits in (("deepsparse", deepsparse_graph_logits), ("onnxruntime", onnxruntime_graph_logits)):
        config = AutoConfig.from_pretrained(folder / engine)
        picks = [np.concatenate([logits(f / engine / "model.onnx", config, tokens[w * 32:(w + 1) * 32][None].numpy())
                                 [0, :-1].argmax(-1) for w in range(3)]) for f in (folder, target)]
        got = top1_agreement(folder, target, tokens, 32, 3, engine)
        assert got["positions"] == 3 * 31 and got["windows"] == 3
        assert got["fraction"] == (picks[0] == picks[1]).mean()  # the same count, made independently
        assert top1_agreement(folder, folder, tokens, 32, 3, engine)["fraction"] == 1.0


def test_scheme_with_down_proj_quantizes_all_seven_linears(tiny_artifact, tmp_path):
    from export.checks import deepsparse_graph_logits

    model, folder, _ = tiny_artifact
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 96, (1, 16))
    manifest = quantize_artifact(folder, tmp_path / "all", "w8a8-static-all", rng.integers(2, 96, (8, 32)), ids,
                                 smoothing_strength=0.5)
    for engine, info in manifest["engines"].items():
        assert info["quantized_matmuls"] == 14 and info["pruned_zeros_kept"], engine
        assert info["smoothing"]["up"] == 2  # down_proj's input smoothed through up_proj's columns
        ops = [n.op_type for n in onnx.load(str(tmp_path / "all" / engine / "model.onnx"),
                                             load_external_data=False).graph.node]
        assert ops.count("MatMulInteger") == 14 and ops.count("MatMul") == info["float_matmuls"]  # attention, LM head
        assert info["top1_agreement_vs_float"] >= 0.9
    float_logits = deepsparse_graph_logits(folder / "deepsparse" / "model.onnx", model.config, ids)
    int8_logits = deepsparse_graph_logits(tmp_path / "all" / "deepsparse" / "model.onnx", model.config, ids)
    assert np.abs(int8_logits - float_logits).max() < 0.2 * np.abs(float_logits).max()


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_int8_in_both_graphs_tied_or_not(tied, tmp_path):
    """quantize.lm_head: the head's MatMul becomes MatMulInteger in both graphs. Tied to the embedding, the head
    reads the table the lookup reads (stored once, export/tied_embedding.py): it gets its own int8 copy. With
    quantize.embedding_int8 no float table is left: the table is stored int8 rows, one scale per token; a lookup
    gathers a token's int8 row and its scale (export/int8_lookup.py), within half a level of the float table, and
    DeepSparse decodes the tiny graph, tied or not."""
    from tests.conftest import pruned_tiny, tiny_tokenizer

    from export.artifact import export_artifact
    from export.checks import onnxruntime_graph_logits

    model = pruned_tiny()
    if tied:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    folder = tmp_path / "artifact"
    export_artifact(model, tiny_tokenizer(), folder, max_positions=128, external_data=True)
    nodes = onnx.load(str(folder / "onnxruntime" / "model.onnx"), load_external_data=False).graph.node
    head_weight = [n.input[1] for n in nodes if n.name == "/lm_head/MatMul"]
    lookup = [n.input[0] for n in nodes if n.op_type == "Gather" and "embed_tokens" in n.name]
    assert len(head_weight) == 1 and (head_weight == lookup) == tied  # tied: one table, untie_lm_head's case
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 96, (1, 16))
    manifest = quantize_artifact(folder, tmp_path / "int8", "w8a8-static", rng.integers(2, 96, (8, 32)), ids,
                                 smoothing_strength=0.5, lm_head=True, embedding_int8=True)
    assert manifest["quantization"]["lm_head"] is True and manifest["quantization"]["embedding_int8"] is True
    head = model.lm_head.weight.detach().T.numpy()  # [hidden, vocab]
    for engine, info in manifest["engines"].items():
        assert info["quantized_matmuls"] == 13 and info["pruned_zeros_kept"], engine  # 12 decoder linears + head
        assert info["smoothing"]["norm"] == 5  # 2 per layer, and the final norm
        graph = onnx.load(str(tmp_path / "int8" / engine / "model.onnx")).graph
        ops = [n.op_type for n in graph.node]
        assert ops.count("MatMulInteger") == 13 and "Transpose" not in [
            n.op_type for n in graph.node if n.output[0].endswith("transposed")]
        int8 = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        heads = [int8[n.input[1]] for n in graph.node if n.op_type == "MatMulInteger" and n.name.startswith("/lm_head")]
        assert len(heads) == 1 and (np.abs(heads[0]).max(0) == 63).all()  # int8 in [-63, 63], per output channel
        tables = [i for i in graph.initializer if sorted(i.dims) == [64, 96] and i.data_type == onnx.TensorProto.FLOAT]
        assert not tables  # neither the head's float weight nor the lookup's float table is left
        rows = next(n for n in graph.node if n.op_type == "Gather" and n.input[0] in int8)  # the int8 rows' lookup
        levels = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == rows.output[0])
        mul = next(n for n in graph.node if n.op_type == "Mul" and levels.output[0] in n.input)
        scaled_by = next(n for n in graph.node if n.op_type == "Gather" and n.output[0] in mul.input)
        assert rows.input[1] == scaled_by.input[1] == "input_ids"  # each token's row, times that token's scale
        table, scale = int8[rows.input[0]].astype(np.float32), inits[scaled_by.input[0]]
        assert table.shape == (96, 64) and scale.shape == (96, 1)  # [vocab, hidden], one scale a token
        embedding = model.get_input_embeddings().weight.detach().numpy()
        assert np.abs(table * scale - embedding).max() <= 0.5 * scale.max() + 1e-6  # half a level of its token's scale
        assert (np.abs(table).max(1) <= 127).all()
        assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] == rows.output[0]]
        assert info["top1_agreement_vs_float"] >= 0.9, engine
    # DeepSparse compiles and decodes the int8 lookup beside the INT8 head, tied or not
    from export.engines import run_engine

    spec = {"sequence_length": 64, "prompt_sequence_length": 4, "internal_kv_cache": True}
    a = run_engine("deepsparse", folder, "test", prompt="Hello there", max_new_tokens=8, **spec)
    b = run_engine("deepsparse", tmp_path / "int8", "test", prompt="Hello there", max_new_tokens=8, **spec)
    assert len(b["ids"]) == len(a["ids"]) and b["ids"][:2] == a["ids"][:2]
    float_logits = onnxruntime_graph_logits(folder / "onnxruntime" / "model.onnx", model.config, ids)
    int8_logits = onnxruntime_graph_logits(tmp_path / "int8" / "onnxruntime" / "model.onnx", model.config, ids)
    assert np.abs(int8_logits - float_logits).max() < 0.1 * np.abs(float_logits).max()
