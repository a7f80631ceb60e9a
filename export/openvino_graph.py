"""OpenVINO: the artifact's ONNX Runtime graph (float or INT8) in OpenVINO's CPU plugin, and its sparse path.

OpenVINO reads the ONNX Runtime graph (Optimum's with-past graph, the KV cache as inputs and outputs) with its
ONNX front end; ``save_ir`` writes it as OpenVINO IR (``ARTIFACT/openvino/openvino_model.xml`` + ``.bin``, weights
in float32 as exported, never compressed to float16). An INT8 artifact's graph holds DeepSparse's INT8 form,
QuantizeLinear -> MatMulInteger -> Cast -> Mul (export/quantize.py), which OpenVINO's front end would compute in
float32; ``dequantized_matmuls`` rewrites it into QuantizeLinear -> DequantizeLinear -> MatMul with the int8 weight
behind DequantizeLinear (the same numbers: ONNX Runtime gives identical logits for both forms), which OpenVINO turns
into FakeQuantize and int8 constants that its low-precision transformations run as INT8 MatMuls (``kernels`` names
what the CPU plugin chose for each: ``brgemm_avx512_I8`` on AVX-512 VNNI). The int8 constants are the ONNX file's
values, so pruned zeros stay exactly zero (``weights_kept`` checks every one).

Sparse weights decompression (``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``): the CPU plugin packs the non-zeros of
INT8 MatMul weights whose share of zeros exceeds the rate and runs them with AMX sparse kernels
(``brgemm_avx512_amx_sparse_I8``). It needs AMX (Sapphire Rapids or later) and INT8 weights; ``sparse_path``
decides from the CPU and the artifact whether to set it, and says why not when it does not, and the run goes on
dense; whether the plugin then ran sparse kernels is read from the kernels (``sparse_kernels``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.common.cpuinfo import cpu_flags
from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

INSTALL = ("pip install 'dass-pipeline[openvino]' (openvino==2026.4.1; ./install.sh --with-openvino), "
           "or drop openvino from the recipe's engines")
IR_FILE = "openvino_model.xml"
#: the CPU plugin's property (ov::intel_cpu::sparse_weights_decompression_rate)
SPARSE_RATE_PROPERTY = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"
#: /proc/cpuinfo flags the sparse INT8 kernels need
AMX_FLAGS = ("amx_tile", "amx_int8")
NO_AMX = ("off: this CPU has no AMX (amx_tile, amx_int8), which OpenVINO's sparse INT8 kernels need (Intel Sapphire "
          "Rapids or later); running dense")
#: decoder linears with fewer zeros than this count as dense when the rate is chosen
PRUNED_AT_LEAST = 0.25
#: the rate sits this far below the least sparse pruned linear, so that every pruned linear passes it
RATE_MARGIN = 0.02


def openvino():
    """The openvino module, or one clear error naming the install option."""
    try:
        import openvino as ov
    except ImportError:
        raise PipelineError("the openvino engine needs OpenVINO, which is not installed", INSTALL) from None
    return ov


def has_amx(flags: set[str]) -> bool:
    return all(f in flags for f in AMX_FLAGS)


def warn_if_no_amx(flags: set[str] | None = None) -> bool:
    """Log one line, once per process, when sparse weights decompression is asked on a CPU without AMX; returns
    whether the CPU has AMX. (The run goes on with OpenVINO's dense kernels.)"""
    global _warned
    flags = cpu_flags() if flags is None else flags
    if has_amx(flags):
        return True
    if not _warned:
        log.warning("openvino-sparse: sparse weights decompression %s", NO_AMX)
        _warned = True
    return False


_warned = False


@dataclass(frozen=True)
class SparsePath:
    """Whether OpenVINO's sparse weights decompression runs, at which rate, and why (or why not)."""

    asked: bool
    rate: float | None   # the property's value when on; None when off
    reason: str

    @property
    def on(self) -> bool:
        return self.rate is not None

    def as_dict(self) -> dict:
        return {**asdict(self), "on": self.on}


def sparse_path(asked: bool, flags: set[str], int8: bool, layer_sparsity: dict[str, float]) -> SparsePath:
    """Sparse weights decompression for an artifact: on only where asked, the CPU has AMX, the MatMuls are INT8 and
    some decoder linears are pruned; the rate then sits just below the least sparse pruned linear's share of
    zeros (so the dense ones, such as attention in an MLP-only pruning, stay on the dense kernels)."""
    if not asked:
        return SparsePath(False, None, "off: not asked (the openvino-sparse engine asks for it)")
    if not has_amx(flags):
        return SparsePath(True, None, NO_AMX)
    if not int8:
        return SparsePath(True, None, "off: float32 weights; OpenVINO's sparse weights decompression runs INT8 "
                                      "MatMuls only (quantize the artifact: quantize.enabled); running dense")
    pruned = [s for s in layer_sparsity.values() if s >= PRUNED_AT_LEAST]
    if not pruned:
        return SparsePath(True, None, f"off: no decoder linear has {PRUNED_AT_LEAST:.0%} zeros or more; running dense")
    rate = round(max(min(pruned) - RATE_MARGIN, 0.0), 4)
    return SparsePath(True, rate, f"on: rate {rate:g} ({len(pruned)} of {len(layer_sparsity)} decoder linears "
                                  f"pruned, the least sparse at {min(pruned):.1%} zeros)")


def artifact_sparse_path(folder: Path, asked: bool, flags: set[str] | None = None) -> SparsePath:
    """``sparse_path`` for the artifact in ``folder``, from its manifest (INT8 or not, each decoder linear's zeros)
    and this CPU's flags."""
    import json

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return sparse_path(asked, cpu_flags() if flags is None else flags, bool(manifest.get("quantization")),
                       manifest.get("sparsity", {}).get("layers", {}))


def graph_file(folder: Path) -> Path:
    """What OpenVINO reads in an artifact: its IR (ARTIFACT/openvino) when exported, else the ONNX Runtime graph."""
    folder = Path(folder)
    for candidate in (folder / "openvino" / IR_FILE, folder / "onnxruntime" / "model.onnx"):
        if candidate.is_file():
            return candidate
    raise PipelineError(f"{folder} has neither an OpenVINO IR (openvino/{IR_FILE}) nor an ONNX Runtime graph "
                        "(onnxruntime/model.onnx)", "export the artifact with export.engines including onnxruntime")


def read_model(path: Path):
    """The OpenVINO model of an IR or an ONNX file as it is (ONNX front end; external data read beside the file)."""
    return openvino().Core().read_model(str(path))


def openvino_model(folder: Path):
    """The OpenVINO model of an artifact (``folder``): its IR when exported, else its ONNX Runtime graph, an INT8
    one first rewritten into the form OpenVINO runs as INT8 (``dequantized_matmuls``; the rewritten structure is
    read beside a link to the artifact's weights file, which is not copied)."""
    import os
    import tempfile

    import onnx

    path = graph_file(folder)
    if path.suffix == ".xml":
        return read_model(path)
    structure = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type == "MatMulInteger" for n in structure.graph.node):
        return read_model(path)
    from export.openvino_int8 import dequantized_matmuls

    dequantized_matmuls(structure, path.parent)
    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=path.parent.parent) as scratch:
        scratch = Path(scratch)
        onnx.save(structure, str(scratch / "model.onnx"))
        data = path.parent / "model.onnx_data"
        if data.is_file():
            try:
                os.link(data, scratch / data.name)
            except OSError:  # another file system: a symbolic link serves OpenVINO as well
                os.symlink(data.resolve(), scratch / data.name)
        model = read_model(scratch / "model.onnx")
        # every constant's data is resolved while the links exist (OpenVINO maps external data files; a mapping
        # outlives the name it was opened by)
        for op in model.get_ordered_ops():
            if op.get_type_name() == "Constant":
                op.get_data()
        return model


def compile_model(model, threads: int | None = None, sparse: SparsePath | None = None, core=None):
    """The model compiled for the CPU: latency hint, one stream, ``threads`` (None: all cores), float32 inference
    precision (the CPU plugin would otherwise pick bf16 on CPUs that have it), and the sparse rate when on."""
    ov = openvino()
    core = core or ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if sparse is not None and sparse.on:
        config[SPARSE_RATE_PROPERTY] = str(sparse.rate)
    return core.compile_model(model, "CPU", config)


def kernels(compiled) -> dict[str, int]:
    """``layer type: kernel (precision)`` -> count for the MatMuls of a compiled model, from its runtime (execution)
    graph: what the CPU plugin runs, e.g. ``FullyConnected: brgemm_avx512_amx_sparse_I8 (u8)``. Call it after a
    first inference: with dynamic shapes the plugin picks its kernels then (before, they read ``undef``)."""
    found = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer in ("FullyConnected", "MatMul"):
            kind = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            found[f"{layer}: {kind} ({precision})"] += 1
    return dict(sorted(found.items()))


def int8_kernels(found: dict[str, int]) -> int:
    """How many of ``kernels``' MatMuls run an INT8 kernel."""
    return sum(n for k, n in found.items() if "_I8" in k or "(u8)" in k or "(i8)" in k)


def sparse_kernels(found: dict[str, int]) -> int:
    """How many of ``kernels``' MatMuls run a sparse kernel (``..._sparse_I8``)."""
    return sum(n for k, n in found.items() if "sparse" in k)


def machine(core=None) -> dict:
    """What OpenVINO's CPU plugin says about this CPU, and whether it has AMX."""
    ov = openvino()
    core = core or ov.Core()
    return {"device": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
            "capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")],
            "amx": has_amx(cpu_flags()), "version": ov.__version__}


def save_ir(artifact: Path, folder: Path) -> Path:
    """The artifact's OpenVINO model (``openvino_model``) as IR in ``folder``, float32 weights as they are (no
    float16 compression), int8 weights as int8."""
    ov = openvino()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / IR_FILE
    ov.save_model(openvino_model(artifact), str(target), compress_to_fp16=False)
    return target


def weights_kept(model, onnx_path: Path) -> dict:
    """Every int8 weight of the ONNX graph, and every float one with pruned zeros (at least ``PRUNED_AT_LEAST``),
    appears among the OpenVINO model's constants with the same values (as is or transposed), so each pruned zero
    is still exactly zero. The ONNX weights are read one at a time. Raises PipelineError naming the first weight
    that is not kept."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from export.checks import digest

    def key(a):  # digest's float32 cast is exact for int8 values
        return a.shape, digest(a)

    kept = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 2:
            data = np.asarray(op.get_data())
            kept.update((key(data), key(data.T)))
    structure = onnx.load(str(onnx_path), load_external_data=False)
    found = {"int8_weights": 0, "pruned_float_weights": 0, "zeros": 0, "elements": 0}
    for init in structure.graph.initializer:
        if len(init.dims) != 2 or init.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT):
            continue
        w = numpy_helper.to_array(init, base_dir=str(Path(onnx_path).parent))
        zeros = int((w == 0).sum())
        int8 = init.data_type == onnx.TensorProto.INT8
        if not int8 and zeros < PRUNED_AT_LEAST * w.size:
            continue
        if key(w) not in kept:
            raise PipelineError(f"the weight {init.name} of {onnx_path} is not in the OpenVINO model unchanged",
                                "report this with the artifact's manifest.json: OpenVINO altered a pruned or INT8 weight")
        found["int8_weights" if int8 else "pruned_float_weights"] += 1
        found["zeros"] += zeros
        found["elements"] += w.size
    return {"int8_weights": found["int8_weights"], "pruned_float_weights": found["pruned_float_weights"],
            "zeros_in_checked_weights": found["zeros"] / found["elements"] if found["elements"] else 0.0,
            "every_zero_kept": True}


def logits(compiled, feed: dict):
    """The logits of one inference of a compiled model."""
    import numpy as np

    return np.asarray(compiled.create_infer_request().infer(feed)["logits"])


def write_folder(artifact: Path, check_ids=None, reference=None, atol: float | None = None,
                 versus: str = "pytorch") -> dict:
    """ARTIFACT/openvino: the artifact's OpenVINO model as IR (``save_ir``) beside the ONNX Runtime graph's config
    and tokenizer files; checked before it is kept: every pruned or INT8 weight unchanged (``weights_kept``), and,
    when a ``reference`` is given (``versus`` names it), its logits on ``check_ids`` [1, T] against it (within
    ``atol`` when given). Returns its manifest entry."""
    import shutil
    import time

    import numpy as np
    from transformers import AutoConfig

    from export.checks import onnxruntime_graph_feed

    artifact = Path(artifact)
    source, folder = artifact / "onnxruntime", artifact / "openvino"
    t0 = time.time()
    ir = save_ir(artifact, folder)
    for item in source.iterdir():
        if item.name not in ("model.onnx", "model.onnx_data"):
            shutil.copy2(item, folder / item.name)
    model = read_model(ir)
    info = {"path": f"openvino/{IR_FILE}", "weights": weights_kept(model, source / "model.onnx")}
    info["source"] = ("onnxruntime/model.onnx through OpenVINO's ONNX front end"
                      + (", INT8 MatMuls as DequantizeLinear -> MatMul" if info["weights"]["int8_weights"] else ""))
    if reference is None:
        info["logits_check"] = "not run (the whole model does not fit in memory here)"
    else:
        compiled = compile_model(model)
        config = AutoConfig.from_pretrained(folder)
        got = logits(compiled, onnxruntime_graph_feed({i.any_name for i in compiled.inputs}, config, check_ids))
        diff = float(np.abs(got - reference).max())
        if atol is not None and diff > atol:
            raise PipelineError(f"the OpenVINO model's logits differ from {versus}'s by {diff:.2e} (> {atol})",
                                "this is a bug in the OpenVINO conversion; export without openvino and report it")
        info[f"logits_max_abs_diff_vs_{versus}"] = diff
        info[f"top1_agreement_vs_{versus}"] = float((got.argmax(-1) == reference.argmax(-1)).mean())
        del compiled
    info.update(export_seconds=time.time() - t0, kv_cache="external (inputs/outputs)", version=openvino().__version__,
                load='openvino.Core().compile_model("ARTIFACT/openvino/openvino_model.xml", "CPU")')
    return info
