"""INT8 quantization of an exported artifact: static QDQ quantization of the decoder linears with
onnxruntime's quantization tool, calibrated on real text, for both graphs of the artifact.

    RUN/artifact/  --quantize_artifact-->  RUN/artifact-int8/   (same layout, same manifest keys, same loaders)

The scheme (export/schemes.py) is what DeepSparse executes: weights int8, symmetric, per tensor, so a
pruned zero stays exactly 0 (checked for every weight); activations uint8, asymmetric, calibrated
with min/max; QuantizeLinear/DequantizeLinear around the MatMuls of q/k/v/o/gate/up. down_proj
(whose input has the outliers, see ``linear_matmuls``), the attention score MatMuls (two
activations), the LM head and everything else stay float32. Before calibration, SmoothQuant
smoothing (export/smooth.py, ``smoothing_strength``) moves the outlier channels of the norm outputs
into the q/k/v and gate/up weights (the float function is unchanged). DeepSparse 1.8.0
compiles this graph with its internal KV cache (tests/test_quantize.py runs it).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from export.checks import deepsparse_graph_feed, file_table, onnxruntime_graph_feed, save_graph
from export.schemes import Scheme, check_scheme
from pipeline.common.errors import PipelineError
from pipeline.common.outputs import StagingDir, write_json_atomic

log = logging.getLogger(__name__)


def _quantization_tool():
    """onnxruntime.quantization, importable next to onnx 1.14.

    onnxruntime's tool names the 4-bit tensor types of onnx >= 1.16 in its lookup tables; DeepSparse
    1.8 pins onnx < 1.15. The two enum values are added if missing (we never create 4-bit tensors).
    """
    import onnx

    for name, value in (("UINT4", 21), ("INT4", 22)):
        if not hasattr(onnx.TensorProto, name):
            setattr(onnx.TensorProto, name, value)
    import onnxruntime.quantization as tool

    return tool


def linear_matmuls(graph, vocab_size: int, intermediate_size: int | None = None) -> tuple[list[str], list[str]]:
    """(MatMul nodes of the decoder linears to quantize, every other MatMul) of an ONNX graph.

    Left in float32: activation x activation MatMuls (attention scores), the LM head (a vocab-sized
    weight) and, with ``intermediate_size``, down_proj (its weight is [intermediate, hidden] as a
    MatMul operand). down_proj's input — act(gate) * up — has outliers that one per-tensor
    activation range cannot hold, smoothed or not (README, "INT8").
    """
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    linears, others = [], []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((shapes[x] for x in node.input if x in shapes), None)
        if weight is None or len(weight) != 2 or vocab_size in weight:  # activation x activation, or the LM head
            others.append(node.name)
        elif intermediate_size is not None and weight[0] == intermediate_size and weight[1] != intermediate_size:
            others.append(node.name)  # down_proj
        else:
            linears.append(node.name)
    return linears, others


def _feeds(engine: str, graph: Path, config, windows: np.ndarray) -> list[dict]:
    if engine == "deepsparse":
        return [deepsparse_graph_feed(config, windows[i:i + 1]) for i in range(len(windows))]
    import onnx

    names = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}  # no weights loaded
    return [onnxruntime_graph_feed(names, config, windows[i:i + 1]) for i in range(len(windows))]


def quantize_graph(source: Path, target: Path, feeds: list[dict], scheme: Scheme, config,
                   smoothing_strength: float | None = None) -> dict:
    """Quantize ``source`` (model.onnx + model.onnx_data) into ``target`` folder; returns what was done."""
    import onnx

    tool = _quantization_tool()
    graph = onnx.load(str(source), load_external_data=False).graph
    linears, others = linear_matmuls(graph, config.vocab_size, getattr(config, "intermediate_size", None))
    if not linears:
        raise PipelineError(f"{source} has no MatMul with a weight matrix to quantize", "re-run the export stage")
    done = {"quantized_matmuls": len(linears), "float_matmuls": len(others)}

    class Reader(tool.CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as scratch:
        if smoothing_strength:
            from export.smooth import activation_maxima, smooth, smoothing_groups

            model = onnx.load(str(source))
            groups = smoothing_groups(model.graph, set(linears))
            maxima = activation_maxima(model, [g.activation for g in groups], feeds, Path(scratch))
            done["smoothing"] = smooth(model, groups, maxima, smoothing_strength)
            source = Path(scratch) / "smoothed" / "model.onnx"
            source.parent.mkdir()
            save_graph(model, source)
            del model
        out = Path(scratch) / "model.onnx"
        tool.quantize_static(str(source), str(out), Reader(), quant_format=tool.QuantFormat.QDQ,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=others,
                             per_channel=scheme.per_channel, activation_type=tool.QuantType.QUInt8,
                             weight_type=tool.QuantType.QInt8, calibrate_method=tool.CalibrationMethod.MinMax,
                             use_external_data_format=True,
                             extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        save_graph(onnx.load(str(out)), target / "model.onnx")
    return done


def int8_weights(float_graph: Path, int8_graph: Path) -> dict[str, dict]:
    """Per quantized weight: the fraction of int8 zeros, and whether every float zero is still 0."""
    import onnx
    from onnx import numpy_helper

    floats = {i.name: i for i in onnx.load(str(float_graph)).graph.initializer}
    result = {}
    for init in onnx.load(str(int8_graph)).graph.initializer:
        if not init.name.endswith("_quantized") or init.name[: -len("_quantized")] not in floats:
            continue
        q = numpy_helper.to_array(init)
        if q.ndim != 2:
            continue
        w = numpy_helper.to_array(floats[init.name[: -len("_quantized")]])
        result[init.name[: -len("_quantized")]] = {
            "shape": list(q.shape), "float_zeros": float((w == 0).mean()), "int8_zeros": float((q == 0).mean()),
            "pruned_zeros_kept": bool((q[w == 0] == 0).all())}
    return result


def quantize_artifact(source: Path, target: Path, scheme_name: str, windows: np.ndarray, check_ids: np.ndarray,
                      metadata: dict | None = None, smoothing_strength: float | None = None,
                      check_from: int = 0) -> dict:
    """Quantize every graph of the artifact ``source`` into the artifact ``target`` (atomic); returns its manifest.

    ``check_ids`` [1, T] is run through the float and INT8 graphs; ``top1_agreement_vs_float`` is the
    fraction of positions >= ``check_from`` where both pick the same next token. With ``check_ids`` =
    prompt + the float graph's greedy continuation (all but its last token) and ``check_from`` =
    len(prompt) - 1, that is the fraction of the float greedy decode's steps at which the INT8 graph
    would choose the same token.
    """
    from transformers import AutoConfig

    from export.artifact import MANIFEST, open_artifact, pad_external_data
    from export.checks import deepsparse_graph_logits, onnxruntime_graph_logits

    scheme = check_scheme(scheme_name)
    source, target = Path(source), Path(target)
    original = open_artifact(source)
    started = time.time()
    with StagingDir(target) as tmp:
        engines = {}
        for engine, info in original["engines"].items():
            t0 = time.time()
            folder = tmp / engine
            shutil.copytree(source / engine, folder, ignore=shutil.ignore_patterns("model.onnx", "model.onnx_data"))
            config = AutoConfig.from_pretrained(source / engine)
            graph = source / engine / "model.onnx"
            log.info("quantizing the %s graph (%s, %d calibration windows)", engine, scheme_name, len(windows))
            done = quantize_graph(graph, folder, _feeds(engine, graph, config, windows), scheme, config,
                                  smoothing_strength)
            if engine == "deepsparse":
                pad_external_data(folder)
            logits_of = deepsparse_graph_logits if engine == "deepsparse" else onnxruntime_graph_logits
            before, after = logits_of(graph, config, check_ids), logits_of(folder / "model.onnx", config, check_ids)
            weights = int8_weights(graph, folder / "model.onnx")
            lost = sorted(name for name, w in weights.items() if not w["pruned_zeros_kept"])
            if lost:
                raise PipelineError(f"INT8 quantization of the {engine} graph turned pruned zeros into non-zeros in "
                                    f"{lost[:3]}", "this is a bug in the quantization scheme; please report it")
            total = sum(np.prod(w["shape"]) for w in weights.values())
            engines[engine] = {
                **{k: v for k, v in info.items() if k not in ("export_seconds", "logits_max_abs_diff_vs_pytorch")},
                **done, "quantize_seconds": time.time() - t0,
                "logits_max_abs_diff_vs_float": float(np.abs(after - before).max()),
                "top1_agreement_vs_float": float((after.argmax(-1) == before.argmax(-1))[..., check_from:].mean()),
                "int8_zeros": float(sum(w["int8_zeros"] * np.prod(w["shape"]) for w in weights.values()) / total),
                "pruned_zeros_kept": True}
        files = file_table(tmp)
        manifest = {**{k: v for k, v in original.items() if k not in ("files", "engines", "export_seconds")},
                    **(metadata or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "quantization": {"scheme": scheme_name, **scheme.__dict__, "source": str(source),
                                     "smoothing_strength": smoothing_strength,
                                     "calibration_windows": list(windows.shape)},
                    "engines": engines, "quantize_seconds": time.time() - started, "files": files}
        write_json_atomic(tmp / MANIFEST, manifest)
    log.info("INT8 artifact written to %s in %.1f s", target, time.time() - started)
    return json.loads((target / MANIFEST).read_text())
