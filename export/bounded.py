"""The artifact of a safetensors checkpoint in memory independent of depth: trace 2 layers, write N.

``export_artifact`` (export/artifact.py) traces the whole model in float32, so its peak is about twice the
model (a 7B model: about 51 GiB). Here the model is never whole in memory:

1. **Template**: the checkpoint's architecture with 2 decoder layers and distinct random weights is exported
   by ``export_artifact`` itself, for each engine, with that function's logits check against PyTorch (the
   graph patches are exercised exactly as in a whole export).
2. **Depth**: each engine's template graph gets layer 1's nodes copied for layers 2 .. N-1
   (export/depth.py).
3. **Weights**: every initializer is written to ``model.onnx_data`` one tensor at a time, from the
   checkpoint's shards (read tensor by tensor, cast to float32, transposed where the exporter stored the
   transpose). Which parameter an initializer holds is found on the template by its bytes (as is or
   transposed), which the distinct random weights make unambiguous; any other initializer (rotary rows,
   shape constants) is the template's own bytes. With both graphs the ONNX Runtime graph points at the
   DeepSparse graph's file (a hard link, as export/shared_weights.py explains) instead of a second copy.
4. **Read-back**: each decoder linear's bytes are read back from the written file (one at a time, plain
   reads), compared with the digest of the checkpoint's tensor taken as it was written, and counted for zeros: the sparsity in the manifest is
   what the file holds. Where the whole model fits in memory three times over, both graphs' logits are also
   compared with PyTorch's on the check prompt; otherwise the manifest says that check was not run at full
   depth (the template's was).

Peak memory: the template export (2 layers plus embeddings, float32, about twice that while tracing) or
the largest single tensor, whichever is larger — not the depth.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from export.graph_formats import GRAPHS, ONNX_GRAPHS
from export.shared_weights import DATA, point_at
from pipeline.common.errors import PipelineError
from pipeline.common.outputs import StagingDir, write_json_atomic

log = logging.getLogger(__name__)

TEMPLATE_LAYERS = 2
#: whole-model checks run when this many copies of the float32 model fit in the memory available
CHECK_COPIES = 3


def template_config(config):
    """``config`` with 2 decoder layers (per-layer lists cut to match)."""
    shallow = copy.deepcopy(config)
    shallow.num_hidden_layers = TEMPLATE_LAYERS
    if isinstance(getattr(shallow, "layer_types", None), list):
        shallow.layer_types = shallow.layer_types[:TEMPLATE_LAYERS]
    return shallow


def template_model(config, seed: int = 0):
    """The 2-layer model of ``config`` with every parameter drawn at random, so no two tensors are equal."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(template_config(config), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    return model


#: how an initializer can hold a parameter: as is, transposed (a Linear's MatMul), or plus one (the constant
#: folding of Gemma's ``(1 + weight)`` norm scale)
FORMS = {"as_is": lambda w: w, "transposed": lambda w: w.T, "plus_one": lambda w: w + np.float32(1.0)}


def parameter_of_initializers(graph_path: Path, model) -> dict[str, tuple[str, str]]:
    """{initializer name: (parameter name, form)} for the template graph at ``graph_path`` (``FORMS``)."""
    import onnx
    from onnx import numpy_helper

    from export.checks import digest

    wanted: dict[tuple, tuple[str, str]] = {}
    for name, param in model.named_parameters():
        value = param.detach().float().numpy()
        for form, make in FORMS.items():
            if form != "transposed" or value.ndim == 2:
                made = np.ascontiguousarray(make(value))
                wanted.setdefault((made.shape, digest(made)), (name, form))
    shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
    graph = onnx.load(str(graph_path), load_external_data=True).graph
    found = {}
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        match = wanted.get((value.shape, digest(value))) if value.dtype == np.float32 else None
        if match:
            found[init.name] = match
        elif value.dtype == np.float32 and value.ndim >= 1 and tuple(value.shape) in shapes and value.size > 1:
            raise PipelineError(f"the exported graph holds {init.name} {list(value.shape)}, computed from a weight "
                                "in a way this exporter does not know, so it cannot be written from the checkpoint",
                                "set export.bounded_memory: false for this model (it is then exported whole)")
    return found


def _layer_name(name: str, layer: int) -> str:
    return name.replace(".layers.1.", f".layers.{layer}.", 1)


class WeightsFile:
    """Appends tensors to one external-data file; ``add`` says where each went (offset, length)."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        self.handle = open(path, "ab" if append else "wb")
        self.offset = self.handle.tell()

    def add(self, array: np.ndarray) -> tuple[int, int]:
        data = np.ascontiguousarray(array).tobytes()
        spot = (self.offset, len(data))
        self.handle.write(data)
        self.offset += len(data)
        return spot

    def close(self) -> None:
        self.handle.close()


class Source:
    """The checkpoint's tensors by parameter name, one at a time, as float32 numpy (tied names resolved)."""

    def __init__(self, checkpoint, tied: dict[str, str]):
        self.checkpoint, self.tied = checkpoint, tied

    def get(self, name: str, form: str) -> np.ndarray:
        import torch

        stored = name if name in self.checkpoint.shapes else self.tied.get(name, name)
        if stored not in self.checkpoint.shapes:
            raise PipelineError(f"checkpoint {self.checkpoint.folder} has no tensor {name}",
                                "check that config.json belongs to these weights")
        value = self.checkpoint.read([stored], torch.float32)[stored].numpy()
        return np.ascontiguousarray(FORMS[form](value))


def _template_value(tensor, template_dir: Path) -> np.ndarray:
    """A tensor of the template graph as numpy, its bytes read from the template's data file where they live."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    value = copy.deepcopy(tensor)
    if value.data_location == onnx.TensorProto.EXTERNAL:
        load_external_data_for_tensor(value, str(template_dir))
        value.data_location = onnx.TensorProto.DEFAULT
        del value.external_data[:]
    return numpy_helper.to_array(value)


def write_deep_graph(template_dir: Path, target_dir: Path, depth: int, params: dict[str, tuple[str, str]],
                     source: Source, digests: dict, shared: dict | None = None, shared_file: Path | None = None,
                     progress=None) -> dict:
    """Deepen ``template_dir/model.onnx`` to ``depth`` layers into ``target_dir`` with the checkpoint's weights.

    ``shared``: {(parameter, form): (offset, length)} already in ``shared_file`` (the DeepSparse graph's
    data file); the graph points there, what the file lacks is appended to it, and ``target_dir``'s data file
    becomes a hard link to it. Returns {(parameter, form): (offset, length)} of the parameters the graph reads;
    ``digests`` gets the digest of each parameter it writes, for the read-back.
    """
    import onnx

    from export.checks import digest
    from export.depth import deepen

    template = onnx.load(str(template_dir / "model.onnx"), load_external_data=False)
    deep, copies = deepen(template, depth)
    constants = {init.name: init for init in template.graph.initializer if init.name not in params}
    where: dict[tuple[str, str], tuple[int, int]] = dict(shared or {})
    used: dict[tuple[str, str], tuple[int, int]] = {}
    weights = WeightsFile(shared_file if shared is not None else target_dir / DATA, append=shared is not None)
    try:
        for init in deep.graph.initializer:
            original, layer = copies.get(init.name, (init.name, None))
            if original in params:
                name, form = params[original]
                key = (_layer_name(name, layer) if layer is not None else name, form)
                if key not in where:
                    array = source.get(*key)
                    where[key] = weights.add(array)
                    digests[key] = digest(array)
                used[key] = where[key]
                point_at(init, DATA, *where[key])
            else:
                point_at(init, DATA, *weights.add(_template_value(constants[original], template_dir)))
            if progress is not None:
                progress.update(1)
        for node in deep.graph.node:  # large Constant nodes (the DeepSparse graph's rotary rows) keep data outside too
            for attribute in node.attribute:
                if attribute.HasField("t") and attribute.t.data_location == onnx.TensorProto.EXTERNAL:
                    point_at(attribute.t, DATA, *weights.add(_template_value(attribute.t, template_dir)))
    finally:
        weights.close()
    if shared is not None:
        os.link(shared_file, target_dir / DATA)
    onnx.save_model(deep, str(target_dir / "model.onnx"))
    return used


def read_back_sparsity(folder: Path, written: dict, linears: list[str], digests: dict) -> dict[str, float]:
    """Fraction of zeros of each decoder linear as stored in ``folder/model.onnx_data``, read back one at a time
    (plain reads, not a memory map: mapped pages would count as this process's resident memory) and compared
    with the digest of the checkpoint's tensor taken when it was written."""
    from export.checks import digest

    result = {}
    with open(folder / DATA, "rb") as data:
        for name in linears:
            key = next((k for k in ((f"{name}.weight", "transposed"), (f"{name}.weight", "as_is")) if k in written),
                       None)
            if key is None:
                raise PipelineError(f"weight {name} was not written to {folder / DATA}", "this is a bug; please report it")
            offset, length = written[key]
            data.seek(offset)
            stored = np.fromfile(data, dtype=np.float32, count=length // 4)
            if digest(stored) != digests[key]:
                raise PipelineError(f"{name} in {folder / DATA} differs from the checkpoint", "re-run the export stage")
            result[name] = float((stored == 0).mean())
    return result


def disk_needed(params: int, template_params: int, engines: tuple[str, ...], share: bool) -> int:
    """Disk a bounded export writes: the float32 weights once (both graphs reading one file) or once per graph,
    plus the template's own export while it exists."""
    from export.artifact import estimated_bytes

    graphs = tuple(e for e in engines if e in ONNX_GRAPHS)
    converted = sum(not GRAPHS[e].traced for e in engines)  # OpenVINO's IR: one more float32 copy
    copies = (1 if share and len(graphs) == 2 else len(graphs)) + converted
    return int(params * 4 * copies * 1.02) + estimated_bytes(template_params, graphs)


def fits_whole(params: int) -> bool:
    import psutil

    return params * 4 * CHECK_COPIES < psutil.virtual_memory().available


def export_checkpoint_artifact(folder: Path, tokenizer, target: Path, engines: tuple[str, ...],
                               max_positions: int = 2048, metadata: dict | None = None, share: bool = True,
                               check_prompt: str = "The quick brown fox", progress: bool = True) -> dict:
    """The artifact of the safetensors checkpoint in ``folder`` (config.json beside it), depth-independent in
    memory. Same folder layout and manifest as ``export_artifact``; the manifest says how it was made."""
    from tqdm import tqdm
    from transformers import AutoConfig

    from export.depth import layers_alike
    from export.artifact import (DEEPSPARSE_DATA_TAIL, MANIFEST, artifact_manifest, check_disk,
                                 check_openvino_engines, export_artifact, pad_external_data)
    from pipeline.core.checkpoint import Checkpoint, skeleton, tied_names
    from pipeline.core.models import decoder_layers

    folder, target = Path(folder), Path(target)
    openvino = "openvino" in engines
    if openvino:
        check_openvino_engines(engines)
    engines = tuple(e for e in engines if e in ONNX_GRAPHS)  # OpenVINO's IR is made from the deep onnxruntime graph
    config = AutoConfig.from_pretrained(folder)
    depth = config.num_hidden_layers
    if not layers_alike(config):
        raise PipelineError(f"{folder}: the layers of this {config.model_type} model alternate between attention "
                            "types, so one copied layer cannot stand for all of them",
                            "export it whole (export.bounded_memory: false)")
    checkpoint = Checkpoint(folder)
    shell = skeleton(config, "float32")
    checkpoint.check_against(shell, tied_names(shell))
    total = sum(p.numel() for p in shell.parameters())
    layer_params = sum(p.numel() for p in decoder_layers(shell)[0].parameters())
    check_disk(target, disk_needed(total, total - (depth - TEMPLATE_LAYERS) * layer_params,
                                   engines + (("openvino",) if openvino else ()), share))
    layer_prefix = f"{next(n for n, m in shell.named_modules() if m is decoder_layers(shell))}."
    linears = [name for name, module in shell.named_modules()
               if name.startswith(layer_prefix) and module.__class__.__name__ == "Linear"]
    tied = {name: "model.embed_tokens.weight" for name in tied_names(shell)}
    source = Source(checkpoint, tied)
    del shell

    started = time.time()
    with StagingDir(target) as tmp:
        template = template_model(config)
        log.info("exporting a %d-layer template of the %d-layer model", TEMPLATE_LAYERS, depth)
        template_manifest = export_artifact(template, tokenizer, tmp / "template", engines, max_positions,
                                            external_data=True, check_prompt=check_prompt, share=False)
        params = {engine: parameter_of_initializers(tmp / "template" / engine / "model.onnx", template)
                  for engine in engines}
        del template
        engine_info, shared, digests = {}, None, {}
        count = sum(len(params[e]) for e in engines) * depth // TEMPLATE_LAYERS
        with tqdm(total=count, desc="writing weights", unit="tensor", disable=not progress) as bar:
            for engine in ONNX_GRAPHS:
                if engine not in engines:
                    continue
                graph = GRAPHS[engine]
                t0 = time.time()
                out = tmp / engine
                out.mkdir()
                reuse = shared if (graph.reads_shared_weights and share) else None
                before = (tmp / "deepsparse" / DATA).stat().st_size if reuse is not None else 0
                written = write_deep_graph(tmp / "template" / engine, out, depth, params[engine], source, digests,
                                           reuse, tmp / "deepsparse" / DATA, bar)
                if graph.pads_weights_file:
                    pad_external_data(out)
                if not graph.reads_shared_weights:  # the file the other graph's weights are found in
                    shared = written
                for name in os.listdir(tmp / "template" / engine):
                    if name not in ("model.onnx", DATA):
                        os.replace(tmp / "template" / engine / name, out / name)
                config.save_pretrained(out)
                if reuse is not None and all(reuse.get(k) == spot for k, spot in written.items()):
                    sparsity = engine_info["deepsparse"]["sparsity_in_onnx"]  # the same bytes, read back already
                else:
                    sparsity = read_back_sparsity(out, written, linears, digests)
                info = dict(template_manifest["engines"][engine])
                info.update(export_seconds=time.time() - t0, external_data=True, sparsity_in_onnx=sparsity,
                            template_logits_max_abs_diff_vs_pytorch=info.pop("logits_max_abs_diff_vs_pytorch"),
                            logits_max_abs_diff_vs_pytorch=None,
                            built_from=f"{TEMPLATE_LAYERS}-layer template deepened to {depth} layers")
                if reuse is not None:
                    appended = (out / DATA).stat().st_size - before
                    info["shared_weights"] = {
                        "shared_bytes": sum(length for key, (_, length) in written.items() if key in reuse),
                        "hard_link": True, "appended_bytes": appended}
                engine_info[engine] = info
        shutil.rmtree(tmp / "template")
        whole = fits_whole(total)
        if whole:
            _check_whole(folder, tokenizer, tmp, engine_info, config, check_prompt)
        else:
            for info in engine_info.values():
                info["logits_check"] = (f"not run at full depth: it needs about {CHECK_COPIES * total * 4 / 2**30:.1f} "
                                        "GiB; the 2-layer template's graphs were checked against PyTorch")
        if openvino:  # checked against the onnxruntime graph, itself checked against PyTorch above
            from export.checks import onnxruntime_graph_logits
            from export.openvino_graph import write_folder

            from export.artifact import LOGITS_ATOL

            prompt = tokenizer(check_prompt, return_tensors="np").input_ids
            reference = onnxruntime_graph_logits(tmp / "onnxruntime" / "model.onnx", config, prompt) if whole else None
            engine_info["openvino"] = write_folder(tmp, prompt, reference, LOGITS_ATOL, versus="onnxruntime")
        sizes = {n: int(np.prod(checkpoint.shapes[f"{n}.weight"])) for n in linears}
        manifest = artifact_manifest(tmp, metadata, config.model_type, engine_info, sizes, time.time() - started,
                                     bounded_memory={"template_layers": TEMPLATE_LAYERS, "depth": depth,
                                                     "deepsparse_data_tail_bytes": DEEPSPARSE_DATA_TAIL
                                                     if "deepsparse" in engines else 0})
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _check_whole(folder: Path, tokenizer, artifact: Path, engine_info: dict, config, check_prompt: str) -> None:
    """Both graphs' logits against the checkpoint's model in PyTorch (only where all of it fits in memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from export.artifact import LOGITS_ATOL
    from export.graph_formats import graph_logits

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    prompt = tokenizer(check_prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(input_ids=prompt, use_cache=False).logits.numpy()
    del model
    for engine, info in engine_info.items():
        logits = graph_logits(engine, artifact / engine / GRAPHS[engine].graph_file, config, prompt.numpy())
        diff = float(np.abs(logits - reference).max())
        if diff > LOGITS_ATOL:
            raise PipelineError(f"the deepened {engine} graph's logits differ from PyTorch by {diff:.2e} "
                                f"(> {LOGITS_ATOL})", "set export.bounded_memory: false and report this as a bug")
        info["logits_max_abs_diff_vs_pytorch"] = diff
        info["logits_check"] = "full depth, against PyTorch"
