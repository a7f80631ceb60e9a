"""INT8 quantization of an exported artifact in the form DeepSparse runs as INT8, calibrated on real
text, for both graphs of the artifact.

    RUN/artifact/  --quantize_artifact-->  RUN/artifact-int8/   (same layout, same manifest keys, same loaders)

Each quantized decoder linear becomes ``QuantizeLinear(x) -> MatMulInteger(x_q, W_q) -> Cast -> Mul``
(``integer_matmuls``, export/int8_matmul_form.py), the form SparseML's exporter writes for DeepSparse: W_q is an int8 constant
(symmetric, per output channel, so a pruned zero stays exactly 0 — checked for every weight), x_q is
uint8 (asymmetric, per tensor, range calibrated with min/max), and the int32 result is rescaled by
x_scale * w_scale per output channel. DeepSparse compiles these MatMuls as INT8 kernels with a
constant weight (``gemm`` dense, ``ks_gevm`` sparse in ``deepsparse.debug_analysis``). The QDQ form
that onnxruntime's quantization tool writes (``DequantizeLinear(int8 W)`` feeding a float MatMul) is
NOT one: DeepSparse dequantizes the whole weight on every call and multiplies in float32, slower
than the float graph (benchmarks/results/int8_profile/). ONNX Runtime runs the same form.

The scheme (export/schemes.py) says which linears: q/k/v/o/gate/up (``w8a8-static``; down_proj —
whose input has the outliers, see ``linear_matmuls`` — stays float32) or all seven
(``w8a8-static-all``; ``w8a8-static-outliers``: with down_proj's few outlier input channels in a float MatMul beside
its INT8 one, export/outlier_split.py), and with ``lm_head`` the LM head too (its weight is the largest single read of a
decode step: 32000 x 4096 for LLaMA-2-7B). The attention score MatMuls (two activations) and everything
else stay float32. Before quantizing, SmoothQuant smoothing (export/smooth.py, ``smoothing_strength``)
moves the outlier channels of the norm outputs (and of down_proj's input, when it is quantized) into
the weights that read them (the float function is unchanged). DeepSparse 1.8.0 compiles this graph
with its internal KV cache (tests/test_quantize.py runs it).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from export.checks import deepsparse_graph_feed, file_table, onnxruntime_graph_feed
from export.graph_formats import GRAPHS
from export.int8_matmul_form import integer_matmuls
from export.schemes import Scheme, check_scheme
from export.shared_calibration import SharedCalibration, activation_keys
from pipeline.common.errors import PipelineError
from pipeline.common.outputs import StagingDir, write_json_atomic

log = logging.getLogger(__name__)


def linear_matmuls(graph, vocab_size: int, intermediate_size: int | None = None,
                   lm_head: bool = False) -> tuple[list[str], list[str]]:
    """(MatMul nodes of the linears to quantize, every other MatMul) of an ONNX graph.

    Left in float32: activation x activation MatMuls (attention scores), the LM head (a vocab-sized
    weight) unless ``lm_head``, and, with ``intermediate_size``, down_proj (its weight is
    [intermediate, hidden] as a MatMul operand). down_proj's input — act(gate) * up — has outliers
    that one per-tensor activation range cannot hold, smoothed or not (docs/int8.md).
    A head tied to the embedding reads a Transpose, not an initializer: :func:`untie_lm_head` first.
    """
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    linears, others = [], []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((shapes[x] for x in node.input if x in shapes), None)
        if weight is None or len(weight) != 2:  # activation x activation
            others.append(node.name)
        elif vocab_size in weight:  # the LM head
            (linears if lm_head else others).append(node.name)
        elif intermediate_size is not None and weight[0] == intermediate_size and weight[1] != intermediate_size:
            others.append(node.name)  # down_proj
        else:
            linears.append(node.name)
    return linears, others


UNTIED = ".lm_head"  # suffix of the head's own copy of a tied embedding table ([hidden, vocab])


def untie_lm_head(store, vocab_size: int) -> None:
    """Give a LM head tied to the embedding its own [hidden, vocab] initializer (``store``: export/graph_tensors.py).

    Tied, the head reads the table the embedding lookup reads too: E^T, stored once in both graphs
    (export/tied_embedding.py), or ``Transpose(embed_tokens.weight)`` in an ONNX Runtime graph exported before
    that. With its own constant it is quantized (and smoothed) like an untied head; the lookup keeps the float
    table, and a Transpose goes where nothing else reads it. The copy is made when the graph is written.
    """
    from export.smooth import producers_and_consumers

    graph = store.model.graph
    inits = {i.name for i in graph.initializer}
    producers, consumers = producers_and_consumers(graph)
    for node in list(graph.node):
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight in inits and len(store.shape(weight)) == 2 and store.shape(weight)[1] == vocab_size \
                and len(consumers[weight]) > 1:  # E^T read by the lookup too (export/tied_embedding.py)
            name = weight + UNTIED
            store.add(name, np.float32, store.shape(weight), lambda weight=weight: store.array(weight))
            inits.add(name)
            node.input[1] = name
            continue
        transpose = producers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits:
            continue
        table = transpose.input[0]
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0])
        if len(store.shape(table)) != 2 or perm != [1, 0] or vocab_size not in store.shape(table):
            continue
        name = table + UNTIED
        if name not in inits:
            store.add(name, np.float32, store.shape(table)[::-1],
                      lambda table=table: np.ascontiguousarray(store.array(table).T))
            inits.add(name)
        node.input[1] = name
        readers = consumers[transpose.output[0]]
        readers.remove(node)
        if not readers and transpose.output[0] not in {o.name for o in graph.output}:
            graph.node.remove(transpose)


def _feeds(engine: str, graph: Path, config, windows: np.ndarray) -> list[dict]:
    if GRAPHS[engine].internal_cache:
        return [deepsparse_graph_feed(config, windows[i:i + 1]) for i in range(len(windows))]
    import onnx

    names = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}  # no weights loaded
    return [onnxruntime_graph_feed(names, config, windows[i:i + 1]) for i in range(len(windows))]


def quantize_graph(source: Path, target: Path, feeds: list[dict], scheme: Scheme, config,
                   smoothing_strength: float | None = None, lm_head: bool = False,
                   calibration: SharedCalibration | None = None, outlier_fraction: float | None = None,
                   smooth_split: bool = True, embedding_int8: bool = False) -> dict:
    """Quantize ``source`` (model.onnx + model.onnx_data) into ``target`` folder; returns what was done.

    Activation ranges are calibrated once on the float graph (min/max over ``feeds``, ONNX Runtime reading
    the weights file it maps); SmoothQuant divides a smoothed activation's channel j by s_j, so its range
    after smoothing is read from the same per-channel statistics. ``lm_head``: the LM head's MatMul INT8 too.
    ``outlier_fraction``: with a scheme that splits down_proj's outlier channels off, the fraction split (None: the
    scheme's). ``smooth_split``: False leaves the split MatMuls' input unsmoothed (SmoothQuant then acts on the norm
    outputs only). ``calibration``: ranges another graph of the same model recorded (export/shared_calibration.py); used when
    they cover every activation here, else this graph is calibrated and its ranges are recorded there. The float graph is never loaded whole: the rewrite is planned on its structure and each weight is read,
    smoothed, quantized and written in turn (export/graph_tensors.py), so memory does not grow with depth.
    """
    import onnx

    from export.graph_tensors import GraphTensors
    from export.smooth import channel_ranges, smooth, smoothing_groups

    store = GraphTensors.open(source)
    structure = onnx.ModelProto()
    structure.CopyFrom(store.model)  # the float graph as stored, for calibration (no weights: a few MiB)
    if lm_head:
        untie_lm_head(store, config.vocab_size)
    intermediate = getattr(config, "intermediate_size", None)
    linears, others = linear_matmuls(store.model.graph, config.vocab_size, None if scheme.down_proj else intermediate,
                                     lm_head)
    # down_proj, whose input channels with outliers go through a float MatMul beside its INT8 one (outlier_split.py)
    fraction = scheme.outlier_fraction if outlier_fraction is None else outlier_fraction
    split = sorted(set(linears) - set(linear_matmuls(store.model.graph, config.vocab_size, intermediate, lm_head)[0])) \
        if fraction else []
    if not linears:
        raise PipelineError(f"{source} has no MatMul with a weight matrix to quantize", "re-run the export stage")
    done = {"quantized_matmuls": len(linears), "float_matmuls": len(others)}
    nodes = {n.name: n for n in store.model.graph.node}
    activations = sorted({nodes[name].input[0] for name in linears})
    keys = activation_keys(store, linears) if calibration is not None else {}
    stats = calibration.lookup(keys) if calibration is not None else None
    done["calibration"] = "shared" if stats is not None else "own"
    if stats is not None:
        log.info("activation ranges: those of the graph calibrated before (same weights, same activations)")
    if stats is None:
        with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as scratch:
            stats = channel_ranges(structure, activations, feeds, Path(scratch), weights=Path(source).parent)
        if calibration is not None:
            calibration.record(keys, stats)
    del structure
    stats = dict(stats)  # the shared ranges stay unsmoothed
    if smoothing_strength:
        groups = smoothing_groups(store.model.graph, set(linears) - (set() if smooth_split else set(split)))
        maxima = {g.activation: np.maximum(-stats[g.activation][0], stats[g.activation][1]) for g in groups}
        done["smoothing"] = smooth(store, groups, maxima, smoothing_strength)
        for g in groups:  # X is now X / s, channel by channel
            stats[g.activation] = (stats[g.activation][0] / g.scale, stats[g.activation][1] / g.scale)
    ranges = {x: (float(low.min()), float(high.max())) for x, (low, high) in stats.items()}
    kept_float = 0
    if split:
        from export.outlier_split import split_outliers

        split_ranges, done["outlier_split"] = split_outliers(store, split, stats, fraction)
        ranges.update(split_ranges)
        kept_float = done["outlier_split"]["float_weight_bytes"]
    done["float_weight_bytes_saved"] = integer_matmuls(store, linears, ranges, scheme.per_channel) - kept_float
    if lm_head and embedding_int8:  # the float table stays for the lookup alone: int8 too (export/int8_lookup.py)
        from export.int8_lookup import int8_lookups

        if (lookup := int8_lookups(store, config.vocab_size)) is not None:
            done["int8_lookup"] = lookup
            done["float_weight_bytes_saved"] += lookup["float_bytes_saved"]
    store.save(target / "model.onnx")
    return done


def int8_weights(float_graph: Path, int8_graph: Path) -> dict[str, dict]:
    """Per quantized weight (by the float weight's name): its fraction of int8 zeros, and whether every
    float zero is still 0. The int8 weights are the constant inputs of the graph's MatMulInteger nodes;
    both graphs are read one weight at a time."""
    from export.graph_tensors import GraphTensors

    floats, ints = GraphTensors.open(float_graph), GraphTensors.open(int8_graph)
    weights = {n.input[1] for n in ints.model.graph.node if n.op_type == "MatMulInteger"}
    result = {}
    for name in (t.name for t in ints.model.graph.initializer if t.name in weights):
        original = name[: -len(".int8")]
        q = ints.array(name)
        if original in floats.tensors:
            w = floats.array(original)
        else:  # a tied head's own copy (untie_lm_head): the float graph holds the table (E^T, or E it transposes)
            w = floats.array(original[: -len(UNTIED)])
            w = w if w.shape == q.shape else w.T
        result[original] = {
            "shape": list(q.shape), "dtype": str(q.dtype), "float_zeros": float((w == 0).mean()),
            "int8_zeros": float((q == 0).mean()), "pruned_zeros_kept": bool((q[w == 0] == 0).all())}
        del q, w
    return result


def _share_int8_weights(tmp: Path, original: dict, config, check_ids: np.ndarray, int8_logits: dict) -> dict | None:
    """One weights file for the two INT8 graphs (export/shared_weights.py); the onnxruntime graph must give the
    same logits reading it. None when the artifact lacks one of the graphs."""
    from export.graph_formats import ONNX_GRAPHS, graph_logits
    from export.shared_weights import share_weights

    if not set(ONNX_GRAPHS) <= set(original["engines"]):
        return None
    reader = next(name for name in ONNX_GRAPHS if GRAPHS[name].reads_shared_weights)
    shared = share_weights(tmp)
    if shared and shared["hard_link"]:
        after = graph_logits(reader, tmp / reader / "model.onnx", config, check_ids)
        diff = float(np.abs(after - int8_logits[reader]).max())
        if diff > 0:
            raise PipelineError(f"the INT8 onnxruntime graph reading the shared weights file differs from its own "
                                f"by {diff:.2e}", "quantize with export.share_weights: false and report this as a bug")
    return shared


def quantize_artifact(source: Path, target: Path, scheme_name: str, windows: np.ndarray, check_ids: np.ndarray,
                      metadata: dict | None = None, smoothing_strength: float | None = None,
                      check_from: int = 0, lm_head: bool = False, share: bool = True,
                      outlier_fraction: float | None = None, smooth_split: bool = True,
                      embedding_int8: bool = False) -> dict:
    """Quantize every graph of the artifact ``source`` into the artifact ``target`` (atomic); returns its manifest.

    ``share``: when both the deepsparse and onnxruntime graphs are quantized, the onnxruntime graph reads its int8
    weights from the deepsparse graph's weights file (a hard link, as the float artifact's graphs do).

    ``check_ids`` [1, T] is run through the float and INT8 graphs; ``top1_agreement_vs_float`` is the
    fraction of positions >= ``check_from`` where both pick the same next token. With ``check_ids`` =
    prompt + the float graph's greedy continuation (all but its last token) and ``check_from`` =
    len(prompt) - 1, that is the fraction of the float greedy decode's steps at which the INT8 graph
    would choose the same token.
    """
    from transformers import AutoConfig

    from export.artifact import MANIFEST, open_artifact, pad_external_data
    from export.graph_formats import graph_logits

    scheme = check_scheme(scheme_name)
    if outlier_fraction is not None and not scheme.outlier_fraction:
        raise PipelineError(f"an outlier fraction was given with scheme {scheme_name!r}, which splits no channels off",
                            "use scheme w8a8-static-outliers, or leave the fraction out")
    fraction = scheme.outlier_fraction if outlier_fraction is None else outlier_fraction
    source, target = Path(source), Path(target)
    original = open_artifact(source)
    started = time.time()
    with StagingDir(target) as tmp:
        engines, int8_logits, calibration = {}, {}, SharedCalibration()
        for engine, info in original["engines"].items():
            if not GRAPHS[engine].traced:  # OpenVINO's IR: made from the INT8 onnxruntime graph below
                continue
            t0 = time.time()
            folder = tmp / engine
            shutil.copytree(source / engine, folder, ignore=shutil.ignore_patterns("model.onnx", "model.onnx_data"))
            config = AutoConfig.from_pretrained(source / engine)
            graph = source / engine / "model.onnx"
            log.info("quantizing the %s graph (%s, %d calibration windows)", engine, scheme_name, len(windows))
            done = quantize_graph(graph, folder, _feeds(engine, graph, config, windows), scheme, config,
                                  smoothing_strength, lm_head, calibration, fraction, smooth_split, embedding_int8)
            if GRAPHS[engine].pads_weights_file:
                pad_external_data(folder)
            before = graph_logits(engine, graph, config, check_ids)
            after = graph_logits(engine, folder / "model.onnx", config, check_ids)
            int8_logits[engine] = after
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
        shared = _share_int8_weights(tmp, original, config, check_ids, int8_logits) if share else None
        if shared is not None:
            engines["onnxruntime"]["shared_weights"] = shared
        if "openvino" in original["engines"]:  # the INT8 onnxruntime graph in OpenVINO, against ONNX Runtime
            from export.openvino_graph import write_folder

            engines["openvino"] = write_folder(tmp, check_ids, int8_logits["onnxruntime"], versus="onnxruntime")
        files = file_table(tmp)
        manifest = {**{k: v for k, v in original.items() if k not in ("files", "engines", "export_seconds")},
                    **(metadata or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "quantization": {"scheme": scheme_name, **scheme.__dict__, "outlier_fraction": fraction,
                                     "smooth_split": smooth_split, "lm_head": lm_head,
                                     "embedding_int8": embedding_int8, "source": str(source),
                                     "smoothing_strength": smoothing_strength,
                                     "calibration_windows": list(windows.shape)},
                    "engines": engines, "quantize_seconds": time.time() - started, "files": files}
        write_json_atomic(tmp / MANIFEST, manifest)
    log.info("INT8 artifact written to %s in %.1f s", target, time.time() - started)
    return json.loads((target / MANIFEST).read_text())
