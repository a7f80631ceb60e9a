"""Loading causal LMs (hub id, local folder, GGUF file, or a file shipped in a Python package)
and finding their decoder layers and projections.

Architectures name their projections differently; the table ``ROLE_PATHS`` maps each role
(q k v o gate up down) to the module paths that play it inside one decoder layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.common.errors import PipelineError
from pipeline.core.model_store import resolve_source

log = logging.getLogger(__name__)

#: role -> module paths inside a decoder layer, first match wins.
ROLE_PATHS: dict[str, tuple[str, ...]] = {
    "q": ("self_attn.q_proj", "attention.wq"),
    "k": ("self_attn.k_proj", "attention.wk"),
    "v": ("self_attn.v_proj", "attention.wv"),
    "o": ("self_attn.o_proj", "attention.wo"),
    "gate": ("mlp.gate_proj", "feed_forward.w1"),
    "up": ("mlp.up_proj", "feed_forward.w3"),
    "down": ("mlp.down_proj", "feed_forward.w2"),
}
GLU_ROLES = ("gate", "up", "down")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Projection:
    role: str  # q k v o gate up down, or the module path for non-GLU models
    path: str  # module path inside the decoder layer
    kind: str  # "attention" or "mlp"
    rows: tuple[int, int] | None = None  # a fused linear's output rows that are this role (Phi-3), else all

    @property
    def name(self) -> str:
        """The projection's name in results: its path, with the role for a part of a fused linear."""
        return self.path if self.rows is None else f"{self.path}[{self.role}]"

    def weight(self, layer: nn.Module) -> torch.Tensor:
        """Its weight ``[out, in]`` in ``layer``: the parameter's data, or the view of its rows (writes go through)."""
        data = layer.get_submodule(self.path).weight.data
        return data if self.rows is None else data[self.rows[0]:self.rows[1]]


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_are_safe(location: str, gguf_file: str | None, allow_pickle: bool) -> None:
    """Refuse a local folder whose weights are pickled (loading a pickle can run code) unless the user opts in."""
    folder = Path(location).expanduser()
    if gguf_file or allow_pickle or not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise PipelineError(
            f"model folder {folder} holds only pickled weights ({', '.join(pickled[:3])}); loading a pickle can run "
            "arbitrary code",
            "convert them to safetensors, or set model.allow_pickle: true if you trust where they came from")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", *PICKLE_SUFFIXES, ".bin.index.json")


def check_local_folder(location: str, gguf_file: str | None, weights: bool) -> None:
    """A local model folder holds a tokenizer (and, when ``weights``, weights) before transformers is asked to load
    it: without them it fails deep inside with errors that do not name the folder."""
    folder = Path(location).expanduser()
    if gguf_file or not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if weights and not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        raise PipelineError(f"model folder {folder} has no weights (no model.safetensors or sharded safetensors "
                            "with their index)", "put the checkpoint's weight files beside its config.json")
    if not names & set(TOKENIZER_FILES):
        raise PipelineError(f"model folder {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                            "copy the tokenizer files that came with the checkpoint into that folder")


def _source_kwargs(source: str, gguf_file: str | None, trust_remote_code: bool, revision: str | None) -> tuple[str, dict]:
    location = resolve_source(source)
    if gguf_file and not (Path(location) / gguf_file).is_file() and Path(location).is_dir():
        raise PipelineError(
            f"model.gguf_file {gguf_file!r} not found in {location}",
            "check the file name (ls the folder) or drop gguf_file for a safetensors checkpoint",
        )
    if location.startswith((".", "/", "~")) and not Path(location).expanduser().exists():
        raise PipelineError(f"model folder {location} does not exist", "fix model.source or download the weights there")
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return location, kwargs


def _load_error(source: str, exc: Exception, allow_pickle: bool) -> PipelineError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    fix = ("use a local folder with config.json and weights, or a hub id you can reach "
           "(log in with `huggingface-cli login` for gated models such as Llama-2)")
    if not allow_pickle and "safetensors" in str(exc):
        fix += "; if the checkpoint has only pickled (.bin) weights and you trust it, set model.allow_pickle: true"
    return PipelineError(f"cannot load model {source!r}: {first}", fix)


def _resolve(source: str, gguf_file: str | None, trust_remote_code: bool, revision: str | None,
             allow_pickle: bool) -> tuple[str, dict]:
    """(location, from_pretrained kwargs) after the checks that need no download: paths, pickles."""
    location, kwargs = _source_kwargs(source, gguf_file, trust_remote_code, revision)
    check_weights_are_safe(location, gguf_file, allow_pickle)
    return location, kwargs


def _config(source: str, location: str, kwargs: dict, allow_pickle: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc, allow_pickle) from exc


def load_config(source: str, gguf_file: str | None = None, trust_remote_code: bool = False,
                revision: str | None = None, allow_pickle: bool = False):
    """The model's config alone (no weights), e.g. for resource estimates before loading."""
    location, kwargs = _resolve(source, gguf_file, trust_remote_code, revision, allow_pickle)
    return _config(source, location, kwargs, allow_pickle)


def load_tokenizer(source: str, gguf_file: str | None = None, trust_remote_code: bool = False,
                   revision: str | None = None):
    from transformers import AutoTokenizer

    location, kwargs = _source_kwargs(source, gguf_file, trust_remote_code, revision)
    check_local_folder(location, gguf_file, weights=False)
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc, False) from exc


def load_model(source: str, gguf_file: str | None = None, dtype: str = "float16", trust_remote_code: bool = False,
               revision: str | None = None, allow_pickle: bool = False, config=None):
    """Load (model, tokenizer). Errors name the source and the fix.

    Weights load from safetensors (or GGUF) only, unless ``allow_pickle``; remote code runs only with
    ``trust_remote_code``. ``config``: the one ``load_config`` already read (a GGUF's takes seconds).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, kwargs = _resolve(source, gguf_file, trust_remote_code, revision, allow_pickle)
    if config is None:
        config = _config(source, location, kwargs, allow_pickle)  # the cheapest file first: fail fast
    check_local_folder(location, gguf_file, weights=True)
    log.info("loading model %s%s as %s", source, f" ({gguf_file})" if gguf_file else "", dtype)
    weights = {} if gguf_file or allow_pickle else {"use_safetensors": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, config=config, dtype=DTYPES[dtype],
                                                     low_cpu_mem_usage=True, **weights, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc, allow_pickle) from exc
    model.eval()
    model.config.use_cache = False
    return model, tokenizer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList with num_hidden_layers entries."""
    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise PipelineError(
        f"cannot find the decoder layers of {type(model).__name__}",
        "this architecture is not supported yet; please file an issue with its model id",
    )


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


#: fused projections (Phi-3): module path -> the roles its output rows hold, in order
FUSED_PATHS: dict[str, tuple[str, ...]] = {"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")}


def fused_rows(layer: nn.Module, path: str) -> list[tuple[int, int]]:
    """The row ranges of each role of a fused linear: q / k / v by head counts, gate / up by halves."""
    rows = layer.get_submodule(path).out_features
    if path == "mlp.gate_up_proj":
        return [(0, rows // 2), (rows // 2, rows)]
    attn = layer.self_attn
    q = attn.config.num_attention_heads * attn.head_dim
    kv = attn.num_key_value_heads * attn.head_dim
    if q + 2 * kv != rows:
        raise PipelineError(f"{path} has {rows} output rows, not q {q} + k {kv} + v {kv}",
                            "this fused attention layout is not supported yet; please file an issue with the model id")
    return [(0, q), (q, q + kv), (q + kv, rows)]


def _fused(layer: nn.Module) -> bool:
    return isinstance(_get(layer, "mlp.gate_up_proj"), nn.Linear) and isinstance(_get(layer, "mlp.down_proj"), nn.Linear)


def is_glu(layer: nn.Module) -> bool:
    """Gate, up and down projections: three linears (LLaMA ...) or gate and up fused into one (Phi-3)."""
    return _fused(layer) or all(any(isinstance(_get(layer, p), nn.Linear) for p in ROLE_PATHS[r]) for r in GLU_ROLES)


def layer_projections(layer: nn.Module) -> list[Projection]:
    """Every prunable linear projection of one decoder layer, with its role; a fused linear (Phi-3's qkv_proj,
    gate_up_proj) is one projection per role, each a range of its output rows, so every method scores and
    balances (DaSS per input column, N:M along the output) within a role, as on separate linears."""
    found: list[Projection] = []
    if is_glu(layer):
        for path, roles in FUSED_PATHS.items():
            if isinstance(_get(layer, path), nn.Linear):
                kind = "mlp" if path.startswith("mlp.") else "attention"
                found += [Projection(role, path, kind, rows) for role, rows in zip(roles, fused_rows(layer, path))]
        fused = {p.role for p in found}
        for role, paths in ROLE_PATHS.items():
            path = next((p for p in paths if isinstance(_get(layer, p), nn.Linear)), None)
            if role not in fused and path is not None:
                found.append(Projection(role, path, "mlp" if role in GLU_ROLES else "attention"))
        return sorted(found, key=lambda p: list(ROLE_PATHS).index(p.role))  # q k v o gate up down
    # Not a GLU: every linear, classified by name (Wanda and magnitude still apply).
    for path, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            kind = "attention" if ("attn" in path or "attention" in path) else "mlp"
            found.append(Projection(path, path, kind))
    return found


def require_glu(model: nn.Module, method: str) -> None:
    if not is_glu(decoder_layers(model)[0]):
        raise PipelineError(
            f"{method} needs a GLU MLP (gate_proj, up_proj, down_proj) but {type(model).__name__} has none",
            "use a GLU model (LLaMA, Mistral, Qwen2, Gemma, ...) or method wanda / magnitude",
        )
