"""DeepSparse's INT8 MatMul form, one MatMul at a time: the rewritten graph computes the integer arithmetic of the
int8 weights and uint8 activations exactly in ONNX Runtime, keeps every pruned zero, and refuses a MatMul it cannot
write. (The whole artifact's quantization: tests/test_quantize.py.)"""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline.common.errors import PipelineError


def test_integer_matmul_form_computes_the_dequantized_product_and_keeps_zeros(tmp_path):
    """One MatMul rewritten into DeepSparse's INT8 form: ONNX Runtime's result equals the arithmetic of
    the int8 weights and uint8 activations, the weight is an int8 constant with every zero kept, each
    output channel rounds within half its own step, and an all-zero column stays zero."""
    from onnx import TensorProto, helper

    from export.checks import ort_session
    from export.graph_tensors import GraphTensors
    from export.int8_matmul_form import activation_params, integer_matmuls

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32) * np.linspace(0.01, 2.0, 8, dtype=np.float32)
    w[rng.random(w.shape) < 0.6] = 0  # pruned
    w[:, 5] = 0  # a whole output channel pruned
    x = rng.standard_normal((1, 5, 16)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], "proj")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    ranges = {"x": (float(x.min()), float(x.max()))}
    store = GraphTensors(model)
    assert integer_matmuls(store, ["proj"], ranges, per_channel=True) == w.nbytes - w.size  # float weight dropped
    store.save(path := tmp_path / "model.onnx")
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "MatMulInteger", "Cast", "Mul"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "w" not in inits
    q = inits["w.int8"]
    assert q.dtype == np.int8 and q.shape == w.shape and (q[w == 0] == 0).all()
    step = np.abs(w).max(0) / 63  # export.int8_matmul_form.WEIGHT_MAX
    rescale = inits["proj.rescale"]
    x_scale, x_zero = activation_params(*ranges["x"])
    assert rescale.shape == (8,)
    dequantized = q * (rescale / x_scale)
    assert (np.abs(dequantized - w) <= step / 2 + 1e-7).all() and (dequantized[:, 5] == 0).all()
    onnx.checker.check_model(model)
    got = ort_session(path).run(["y"], {"x": x})[0]
    x_q = np.clip(np.round(x / x_scale) + x_zero, 0, 255)
    want = ((x_q - x_zero) @ q.astype(np.float64)) * rescale
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, x @ w, atol=0.05 * np.abs(x @ w).max())  # and close to the float product


def test_the_int8_form_is_exact_in_onnx_runtime_at_the_extremes_on_this_cpu(tmp_path):
    """The worst case for ONNX Runtime's uint8 x int8 kernels without VNNI: every activation at 255 and adjacent
    weights at the same extreme, so each pair of products sums to 2 x 255 x WEIGHT_MAX. The result must equal the
    integer arithmetic exactly on whatever CPU runs the test (with weights up to 127 it does not on an AVX2 CPU)."""
    from onnx import TensorProto, helper

    from export.checks import ort_session
    from export.int8_matmul_form import WEIGHT_MAX

    assert 2 * 255 * WEIGHT_MAX <= 32767
    k, n = 64, 8
    q = np.empty((k, n), np.int8)
    q[:, :4] = WEIGHT_MAX
    q[:, 4:] = -WEIGHT_MAX
    q[::3, 1] = 0  # pruned zeros among them
    x = np.full((1, 3, k), 255, np.uint8)
    x[0, 1, ::2] = 0
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 3, n])],
                              [numpy_helper.from_array(q, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path := tmp_path / "m.onnx")
    got = ort_session(path).run(["y"], {"x": x})[0]
    np.testing.assert_array_equal(got, x.astype(np.int64) @ q.astype(np.int64))


def test_a_matmul_without_a_constant_weight_is_refused_by_name():
    from onnx import TensorProto, helper

    from export.graph_tensors import GraphTensors
    from export.int8_matmul_form import integer_matmuls

    graph = helper.make_graph([helper.make_node("MatMul", ["w", "x"], ["y"], "weight_first")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
                              [numpy_helper.from_array(np.ones((8, 8), np.float32), "w")])
    model = helper.make_model(graph)
    with pytest.raises(PipelineError, match="MatMul 'weight_first' .* cannot be written"):
        integer_matmuls(GraphTensors(model), ["weight_first"], {"w": (0.0, 1.0)}, per_channel=True)
