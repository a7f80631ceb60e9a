"""The deployable artifact: one folder, one complete model folder per engine, one manifest.

    ARTIFACT/
      manifest.json            recipe, method, sparsity (per layer, read back from the ONNX file),
                               versions, sizes and sha256 of every file, export time, checks
      deepsparse/              model.onnx (DeepSparse-shaped graph, internal KV cache) + config + tokenizer
      onnxruntime/             model.onnx (Optimum's standard with-past graph) + config + tokenizer
      openvino/                (when asked) openvino_model.xml/.bin: the onnxruntime graph as OpenVINO IR
                               + config + tokenizer (export/openvino_graph.py)

Why two graphs: DeepSparse accepts only its own input names (``positions``, ``causal_mask``) and a
cache holding every attention head; ONNX Runtime's ``ORTModelForCausalLM`` feeds Optimum's names
(``position_ids``) and a cache of the KV heads. No one graph serves both. Each
subfolder loads as is:

    deepsparse.TextGeneration(model_path="ARTIFACT/deepsparse")
    optimum.onnxruntime.ORTModelForCausalLM.from_pretrained("ARTIFACT/onnxruntime")
    openvino.Core().compile_model("ARTIFACT/openvino/openvino_model.xml", "CPU")  # the KV cache as inputs

Weights: the DeepSparse graph always keeps them in ``model.onnx_data`` (DeepSparse rewrites
``model.onnx`` in place with static shapes when it loads; our loaders hand it a scratch copy of
that small file, see export/engines.py). With both graphs (and ``share``), the ONNX Runtime graph reads
the same file: its ``model.onnx_data`` is a hard link to the DeepSparse one (export/shared_weights.py says
why not a reference); otherwise it keeps its own above 2 GB, or always with ``external_data=True``.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch

from export.checks import (
    file_table,
    onnx_weight_sparsity,
    onnxruntime_graph_logits,
    sha256_file,
)
from export.deepsparse_families import quirks_for
from export.deepsparse_graph import PATCHES
from export.graph_formats import GRAPHS, ONNX_GRAPHS, graph_logits
from export.shared_weights import share_weights
from export.tied_embedding import store_tied_once
from pipeline.common.errors import PipelineError
from pipeline.common.outputs import StagingDir, read_json, write_json_atomic

log = logging.getLogger(__name__)

ENGINES = tuple(GRAPHS)  # every graph an export can write (export/graph_formats.py)
#: the ONNX graphs (OpenVINO's IR is made from the onnxruntime one)
MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: max |logit difference| between an exported graph and PyTorch (float32) accepted at export time
LOGITS_ATOL = 1e-3


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "deepsparse")
    found = {}
    for name in names:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    return found


#: Bytes of zeros appended to the DeepSparse graph's model.onnx_data. DeepSparse 1.8's kernels read a
#: little past the last weight; when that weight ends exactly at the end of the memory-mapped file on
#: a page boundary, the engine dies with SIGBUS at run time (seen with INT8 graphs of LLaMA-2-7B
#: shapes: "Received signal: Bus error"). External data is addressed by offset and length, so the
#: tail changes nothing else, and ONNX Runtime ignores it.
DEEPSPARSE_DATA_TAIL = 1 << 16


def pad_external_data(folder: Path) -> None:
    data = Path(folder) / "model.onnx_data"
    if data.is_file():
        with open(data, "ab") as handle:
            handle.write(b"\0" * DEEPSPARSE_DATA_TAIL)


def disk_bytes(folder: Path) -> int:
    """Bytes the files under ``folder`` take, a file with several names (hard links) counted once."""
    seen = {}
    for p in Path(folder).rglob("*"):
        if p.is_file():
            st = p.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def estimated_bytes(params: int, engines: tuple[str, ...]) -> int:
    """Disk an export of ``params`` weights needs: float32 once per engine, plus the exporter's temporaries."""
    return int(params * 4 * (len(engines) + 1) * 1.1) + (64 << 20)


def check_disk(target: Path, needed: int) -> None:
    existing = next(p for p in (target, *target.parents) if p.exists())  # checked without creating anything
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise PipelineError(
            f"not enough disk for the export to {target}: needs about {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free",
            "free some space or set output_dir on a larger disk",
        )


def preflight_export(model, target: Path, engines: tuple[str, ...], disk: int | None = None) -> None:
    """Everything an export can be refused for, checked before anything is written (``disk``: bytes it will write,
    when not a whole export's)."""
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        raise PipelineError(f"unknown export engine(s) {sorted(unknown) or engines}", f"choose from {', '.join(ENGINES)}")
    if "openvino" in engines:
        check_openvino_engines(engines)
    if "deepsparse" in engines:
        quirks_for(model.config)  # an architecture the patches do not cover
    check_disk(Path(target), disk or estimated_bytes(sum(p.numel() for p in model.parameters()), engines))


def check_openvino_engines(engines) -> None:
    """OpenVINO's IR is made from the onnxruntime graph, and needs OpenVINO installed."""
    from export.openvino_graph import openvino

    if "onnxruntime" not in engines:
        raise PipelineError("export engine openvino converts the onnxruntime graph, which is not exported",
                            "add onnxruntime to export.engines")
    openvino()


def _export_deepsparse(model, folder: Path, max_positions: int) -> None:
    from optimum.exporters.onnx import export

    from export.onnx_configs import DEEPSPARSE_OPSET, DeepSparseDecoderOnnxConfig

    config = DeepSparseDecoderOnnxConfig(model.config, max_positions=max_positions)
    export(model, config, folder / "model.onnx", opset=DEEPSPARSE_OPSET)


def _export_onnxruntime(model, folder: Path) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, folder, task="text-generation-with-past", do_validation=False)


def artifact_manifest(folder: Path, metadata: dict | None, model_type: str, engine_info: dict,
                      sizes: dict[str, int], export_seconds: float, **extra) -> dict:
    """An artifact's manifest.json content: identity, the decoder linears' sparsity as the first graph holds it
    (weighted by ``sizes``, their element counts), the engines, versions, and every file's size and sha256."""
    layers = next(iter(engine_info.values()))["sparsity_in_onnx"]
    total = sum(sizes[n] for n in layers)
    return {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(metadata or {}),
        "model_type": model_type,
        "sparsity": {"overall_decoder_linears": sum(layers[n] * sizes[n] for n in layers) / total if total else 0.0,
                     "layers": layers},
        "engines": engine_info,
        "export_seconds": export_seconds,
        **extra,
        "versions": _versions(),
        "files": file_table(folder),
        "disk_bytes": disk_bytes(folder),
    }


def export_artifact(model, tokenizer, target: Path, engines: tuple[str, ...] = ONNX_GRAPHS, max_positions: int = 2048,
                    metadata: dict | None = None, external_data: bool = False, check_prompt: str = "The quick brown fox",
                    share: bool = True) -> dict:
    """Export ``model`` (pruned or not) for each engine into ``target``, atomically. Returns the manifest.
    ``share``: with both graphs, the ONNX Runtime one reads the DeepSparse one's weights file (export/shared_weights.py)."""
    target = Path(target)
    preflight_export(model, target, engines)
    max_positions = min(max_positions, getattr(model.config, "max_position_embeddings", max_positions))

    model = model.float().eval()
    model.config.use_cache = True
    weights = {name: module.weight for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name != "lm_head" and ".layers." in f".{name}"}
    prompt = tokenizer(check_prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(input_ids=prompt, use_cache=False).logits.numpy()

    started = time.time()
    previous = os.environ.get("FORCE_ONNX_EXTERNAL_DATA")
    try:
        with StagingDir(target) as tmp:
            engine_info = {}
            for engine in (e for e in engines if e in ONNX_GRAPHS):
                folder = tmp / engine
                folder.mkdir()
                t0 = time.time()
                log.info("exporting the %s graph", engine)
                graph = GRAPHS[engine]
                # The DeepSparse graph always keeps its weights in model.onnx_data: the engine rewrites
                # model.onnx in place when it loads, so loaders give it a copy, which must be small.
                if graph.weights_always_external or external_data:
                    os.environ["FORCE_ONNX_EXTERNAL_DATA"] = "1"
                else:
                    os.environ.pop("FORCE_ONNX_EXTERNAL_DATA", None)
                if graph.internal_cache:
                    _export_deepsparse(model, folder, max_positions)
                else:
                    _export_onnxruntime(model, folder)
                tied = store_tied_once(folder / "model.onnx", model.config.vocab_size) \
                    if getattr(model.config, "tie_word_embeddings", False) else None
                if graph.pads_weights_file:
                    pad_external_data(folder)
                logits = graph_logits(engine, folder / graph.graph_file, model.config, prompt.numpy())
                model.config.save_pretrained(folder)
                model.generation_config.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                diff = float(np.abs(logits - reference).max())
                if diff > LOGITS_ATOL:
                    raise PipelineError(
                        f"the {engine} graph's logits differ from PyTorch by {diff:.2e} (> {LOGITS_ATOL})",
                        "this is a bug in the export patches; please report it with the model id",
                    )
                sparsity = onnx_weight_sparsity(folder / "model.onnx", weights)
                engine_info[engine] = {
                    "path": f"{engine}/model.onnx",
                    "external_data": (folder / "model.onnx_data").exists(),
                    "export_seconds": time.time() - t0,
                    "logits_max_abs_diff_vs_pytorch": diff,
                    "kv_cache": graph.kv_cache,
                    "sparsity_in_onnx": sparsity,
                }
                if tied:
                    engine_info[engine]["tied_embedding"] = tied
                if graph.internal_cache:
                    engine_info[engine].update(max_sequence_length=max_positions, patches=list(PATCHES))
                engine_info[engine]["load"] = graph.load
            if share and len(engine_info) == 2:
                shared = share_weights(tmp)
                if shared and shared["hard_link"]:  # the rewritten graph must still compute the same logits
                    logits = onnxruntime_graph_logits(tmp / "onnxruntime" / "model.onnx", model.config, prompt.numpy())
                    diff = float(np.abs(logits - reference).max())
                    if diff > LOGITS_ATOL:
                        raise PipelineError(f"the onnxruntime graph reading the shared weights file differs from "
                                            f"PyTorch by {diff:.2e} (> {LOGITS_ATOL})",
                                            "export with export.share_weights: false and report this as a bug")
                    engine_info["onnxruntime"].update(external_data=True, logits_max_abs_diff_vs_pytorch=diff)
                engine_info["onnxruntime"]["shared_weights"] = shared
            if "openvino" in engines:
                from export.openvino_graph import write_folder

                log.info("converting the onnxruntime graph to OpenVINO IR")
                engine_info["openvino"] = write_folder(tmp, prompt.numpy(), reference, LOGITS_ATOL)  # vs PyTorch
            manifest = artifact_manifest(tmp, metadata, model.config.model_type, engine_info,
                                         {n: w.numel() for n, w in weights.items()}, time.time() - started)
            write_json_atomic(tmp / MANIFEST, manifest)
    finally:
        if previous is None:
            os.environ.pop("FORCE_ONNX_EXTERNAL_DATA", None)
        else:
            os.environ["FORCE_ONNX_EXTERNAL_DATA"] = previous
    return manifest


def open_artifact(folder: Path, engine: str | None = None, verify_checksums: bool = False) -> dict:
    """Validate an artifact folder (manifest, files present with the recorded sizes, ONNX parses).

    Raises PipelineError with the problem and the fix; returns the manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"artifact folder {folder} does not exist", "give the folder an export wrote (RUN/artifact)")
    if not (folder / MANIFEST).is_file():
        raise PipelineError(f"{folder} has no {MANIFEST}, so it is not an artifact of this tool", "re-run the export stage")
    manifest = read_json(folder / MANIFEST, "re-run the export stage")
    engines = [engine] if engine else list(manifest.get("engines", {}))
    for name in engines:
        if name not in manifest.get("engines", {}):
            raise PipelineError(f"the artifact {folder} was not exported for {name}", f"export it with engines: [{name}]")
        sub = folder / name
        for required in (GRAPHS[name].graph_file, "config.json", *TOKENIZER_FILES):
            if not (sub / required).is_file():
                raise PipelineError(f"the artifact is missing {name}/{required}", "re-run the export stage")
    for rel, info in manifest.get("files", {}).items():
        if engine and not rel.startswith(f"{engine}/"):
            continue
        path = folder / rel
        if not path.is_file():
            raise PipelineError(f"the artifact is missing {rel}", "re-run the export stage")
        if path.stat().st_size != info["bytes"]:
            raise PipelineError(f"{rel} has {path.stat().st_size} bytes, the manifest says {info['bytes']} (truncated or altered)",
                                "re-run the export stage")
        if verify_checksums and sha256_file(path) != info["sha256"]:
            raise PipelineError(f"{rel} does not match its sha256 in the manifest (corrupt)", "re-run the export stage")
    import onnx

    for name in (e for e in engines if e in ONNX_GRAPHS):
        try:
            onnx.load(str(folder / name / "model.onnx"), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise PipelineError(f"{name}/model.onnx is not a readable ONNX file ({type(exc).__name__})",
                                "re-run the export stage") from None
    return manifest
