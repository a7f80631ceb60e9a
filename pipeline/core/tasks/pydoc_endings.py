"""The items of the ``pydoc_endings`` task (pydoc_endings.yaml), built deterministically from Python's own
``pydoc_data.topics`` text (pipeline/core/data.py ``embedded_text``).

Only the text after ``START`` of its characters is used: the embedded calibration reads the first half of the
text's tokens, so no item is a sentence the pruning saw. A sentence is kept when it is plain prose (10 to 30
words, letters and light punctuation, ending in a full stop). The context is the sentence without its last
``ENDING_WORDS`` words; the choices are those words and the last ``ENDING_WORDS`` words of three other kept
sentences, in a seeded random order. A model that reads English picks the true ending far more often than
1 in 4.
"""

from __future__ import annotations

import random
import re

START = 0.6
ENDING_WORDS = 4
CHOICES = 4
SEED = 0
_WORD = re.compile(r"""^[(‘"']*[A-Za-z0-9][A-Za-z0-9'\-]*[)’"']*[,;:]?$""")


def _sentences(text: str) -> list[list[str]]:
    kept = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        if not lines or any(line.startswith((" ", "\t")) for line in lines) or ">>>" in paragraph:
            continue  # code, tables, grammar rules and examples are indented
        for sentence in re.split(r"(?<=\.)\s+(?=[A-Z])", " ".join(line.strip() for line in lines)):
            words = sentence.split()
            if not 10 <= len(words) <= 30 or not words[-1].endswith(".") or words[-1].endswith(".."):
                continue
            if all(_WORD.match(w) for w in words[:-1] + [words[-1][:-1]]):
                kept.append(words)
    return kept


def held_out_text() -> str:
    """The part of the embedded text the items come from: after ``START`` of its characters."""
    from pipeline.core.data import embedded_text

    text = embedded_text()
    return text[int(len(text) * START):]


def items() -> list[dict]:
    """Every item: {"context", "endings", "label"}, in the text's order."""
    sentences = _sentences(held_out_text())
    endings = [" ".join(words[-ENDING_WORDS:]) for words in sentences]
    rng = random.Random(SEED)
    out = []
    for i, words in enumerate(sentences):
        others = sorted({e for e in endings if e != endings[i]})
        choices = [endings[i], *rng.sample(others, CHOICES - 1)]
        rng.shuffle(choices)
        out.append({"context": " ".join(words[:-ENDING_WORDS]), "endings": choices, "label": choices.index(endings[i])})
    return out


def load(**_) -> dict:
    """lm-eval's ``custom_dataset`` hook: the task's one split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items())})
