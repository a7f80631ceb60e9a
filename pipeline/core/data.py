"""Calibration and evaluation text: C4, WikiText2, a local file, or the embedded text.

- ``c4``: the ``en`` shards of ``allenai/c4`` that Wanda and SparseGPT use (train shard 0 for
  calibration, validation shard 0 for evaluation). ``path`` may name a local mirror folder
  with the same ``en/...json.gz`` layout.
- ``wikitext2``: ``Salesforce/wikitext``, ``wikitext-2-raw-v1`` parquet files (train for
  calibration, test for evaluation), or a local mirror folder with that layout.
- ``file``: a ``.txt`` file (one text), or ``.jsonl`` / ``.json`` with a ``text`` field per record.
- ``embedded``: Python's own ``pydoc_data.topics`` (about 465 KB of English reference prose,
  shipped with every CPython). Calibration windows come from its first half of tokens,
  evaluation from its second half, so they never overlap.
- ``stdlib``: code — the source of Python's own standard library (the top-level ``*.py`` modules of the running
  interpreter, in name order, up to 1 MB), for a model in the code domain. As with ``embedded``, calibration reads
  the first half of its tokens and evaluation the second half; calibrating on ``embedded`` never sees it at all.

Calibration windows are sampled like Wanda/SparseGPT: with a seeded RNG, a random document
long enough for the window, then a random window inside it. With ``bos_token_id`` (the BOS-per-window
protocol, pipeline/core/window_protocol.py) the text is tokenized without special tokens and each
window is that BOS + ``seq_len - 1`` sampled text tokens; without it, windows are what they always were.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Literal

import torch

from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

Part = Literal["calibration", "evaluation"]

C4_REPO = "allenai/c4"
C4_FILES = {
    "calibration": ("train", "en/c4-train.00000-of-01024.json.gz"),
    "evaluation": ("validation", "en/c4-validation.00000-of-00008.json.gz"),
}
WIKITEXT_REPO = "Salesforce/wikitext"
WIKITEXT_FILES = {
    "calibration": ("train", "wikitext-2-raw-v1/train-*.parquet"),
    "evaluation": ("test", "wikitext-2-raw-v1/test-*.parquet"),
}
#: Wanda evaluates C4 on the first 1100 validation documents.
C4_EVAL_DOCS = 1100


def embedded_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


STDLIB_CHARACTERS = 1_000_000


def stdlib_files(limit: int = STDLIB_CHARACTERS) -> list[str]:
    """The running Python's standard-library modules (top-level ``*.py`` files, name order), up to ``limit``
    characters (whole files only)."""
    import sysconfig

    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if size + len(text) > limit and parts:
            break
        parts.append(text)
        size += len(text)
    if not parts:
        raise PipelineError("the standard library's source was not found next to this Python",
                            "use another evaluation text (embedded, file)")
    return parts


def stdlib_text(limit: int = STDLIB_CHARACTERS) -> str:
    """:func:`stdlib_files` joined."""
    return "\n\n".join(stdlib_files(limit))


def _hub_texts(repo: str, files: dict, part: Part, local: str | None) -> list[str]:
    import datasets

    split, pattern = files[part]
    source = local or repo
    if local and not Path(local).is_dir():
        raise PipelineError(f"dataset mirror folder {local} does not exist", "fix the data path or drop it to use the hub")
    log.info("loading %s (%s) from %s", pattern, split, source)
    try:
        ds = datasets.load_dataset(source, data_files={split: pattern}, split=split)
    except Exception as exc:  # datasets raises many types for "cannot reach / cannot find"
        raise PipelineError(
            f"cannot load {pattern} from {source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            f"check your network access to the hub, or set the data path to a local folder holding {pattern}",
        ) from exc
    return list(ds["text"])


def _file_texts(path: str | None) -> list[str]:
    if not path:
        raise PipelineError("dataset 'file' needs a path", "set path: to a .txt, .jsonl or .json file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise PipelineError(f"text file {file} does not exist", "fix the path in the recipe")
    if file.suffix in (".jsonl", ".json"):
        texts = []
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PipelineError(
                        f"{file}:{number} is not a JSON object with a 'text' field",
                        "write one {\"text\": ...} object per line",
                    ) from None
        return texts
    return [file.read_text(encoding="utf-8")]


def load_texts(dataset: str, part: Part, path: str | None = None) -> list[str]:
    """The documents of a dataset for calibration or evaluation."""
    if dataset == "embedded":
        return [embedded_text()]
    if dataset == "stdlib":
        return [stdlib_text()]
    if dataset == "file":
        return _file_texts(path)
    if dataset == "c4":
        texts = _hub_texts(C4_REPO, C4_FILES, part, path)
        return texts[:C4_EVAL_DOCS] if part == "evaluation" else texts
    if dataset == "wikitext2":
        return _hub_texts(WIKITEXT_REPO, WIKITEXT_FILES, part, path)
    raise PipelineError(f"unknown dataset {dataset!r}", "use c4, wikitext2, file, embedded or stdlib")


HALVED = ("embedded", "stdlib")  # one text, split: calibration the first half, evaluation the second


def _halves(dataset: str, ids: torch.Tensor, part: Part) -> torch.Tensor:
    if dataset not in HALVED:
        return ids
    half = ids.numel() // 2
    return ids[:half] if part == "calibration" else ids[half:]


def _tokens(tokenizer, text: str, special: bool) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt", add_special_tokens=special).input_ids[0]


def _with_bos(window: torch.Tensor, bos_token_id: int | None) -> torch.Tensor:
    if bos_token_id is None:
        return window
    return torch.cat([torch.tensor([bos_token_id], dtype=window.dtype), window])


def calibration_windows(tokenizer, dataset: str, num_samples: int, seq_len: int, seed: int = 0,
                        path: str | None = None, bos_token_id: int | None = None) -> torch.Tensor:
    """``[num_samples, seq_len]`` token windows, reproducible for a given seed.

    ``bos_token_id``: every window is that token + ``seq_len - 1`` text tokens (BOS per window);
    None: ``seq_len`` tokens of the stream as the tokenizer writes it (Wanda / SparseGPT)."""
    texts = [t for t in load_texts(dataset, "calibration", path) if t.strip()]
    if not texts:
        raise PipelineError(f"the calibration text ({dataset}) is empty", "point the calibration data at a non-empty text")
    special = bos_token_id is None  # with a BOS per window the windows carry it, not the text
    span = seq_len - (0 if special else 1)  # text tokens per window
    rng = random.Random(seed)
    if len(texts) == 1 or dataset in (*HALVED, "wikitext2"):
        joined = "\n\n".join(texts)
        ids = _halves(dataset, _tokens(tokenizer, joined, special), "calibration")
        if ids.numel() <= span:
            raise PipelineError(
                f"the calibration text ({dataset}) has {ids.numel()} tokens, not more than seq_len={seq_len}",
                "use a longer text or a smaller calibration.seq_len",
            )
        starts = [rng.randint(0, ids.numel() - span - 1) for _ in range(num_samples)]
        return torch.stack([_with_bos(ids[s : s + span], bos_token_id) for s in starts])
    windows = []
    tries = 0
    while len(windows) < num_samples:
        tries += 1
        if tries > 100 * num_samples:
            raise PipelineError(
                f"found only {len(windows)} of {num_samples} documents longer than {seq_len} tokens in {dataset}",
                "use a smaller calibration.seq_len or a corpus with longer documents",
            )
        ids = _tokens(tokenizer, texts[rng.randint(0, len(texts) - 1)], special)
        if ids.numel() <= span:
            continue
        start = rng.randint(0, ids.numel() - span - 1)
        windows.append(_with_bos(ids[start : start + span], bos_token_id))
    return torch.stack(windows)


def mixed_calibration_windows(tokenizer, datasets: list[str], num_samples: int, seq_len: int, seed: int = 0,
                              path: str | None = None, bos_token_id: int | None = None) -> torch.Tensor:
    """``num_samples`` windows split evenly between ``datasets`` (the first ones take the remainder), each text's share
    drawn as ``calibration_windows`` draws it (``path`` belongs to the first), stacked in the order given."""
    shares = [num_samples // len(datasets) + (i < num_samples % len(datasets)) for i in range(len(datasets))]
    return torch.cat([calibration_windows(tokenizer, dataset, share, seq_len, seed, path if i == 0 else None,
                                          bos_token_id)
                      for i, (dataset, share) in enumerate(zip(datasets, shares)) if share])


def evaluation_tokens(tokenizer, dataset: str, path: str | None = None, bos_per_window: bool = False) -> torch.Tensor:
    """One long token stream for perplexity (documents joined as Wanda does). ``bos_per_window``: the text
    without special tokens (pipeline/core/evaluate.py puts a BOS before each window's share of it)."""
    texts = load_texts(dataset, "evaluation", path)
    joiner = " " if dataset == "c4" else "\n\n"
    ids = _tokens(tokenizer, joiner.join(texts), not bos_per_window)
    return _halves(dataset, ids, "evaluation")


def bos_id(tokenizer) -> int:
    """The tokenizer's BOS id, refused when it has none (a BOS-per-window protocol needs one)."""
    if getattr(tokenizer, "bos_token_id", None) is None:
        raise PipelineError("bos_per_window is on, but the model's tokenizer has no BOS token",
                            "set calibration.bos_per_window and evaluation.bos_per_window to false")
    return int(tokenizer.bos_token_id)
