"""The items of the ``stdlib_lines`` task (stdlib_lines.yaml): code completion as multiple choice, built
deterministically from Python's own standard-library source (pipeline/core/data.py ``stdlib_text``), the domain of
a code model, with enough items (``MAX_ITEMS``) to tell pruned models apart (a standard error near 0.015).

Only the modules after ``START`` of its characters are used: calibration on ``stdlib`` reads the first half of its
tokens, so no item is code the pruning saw. A line is kept when it is code (Python's tokenizer: not a comment, not a
docstring, not inside a string that spans lines) of ``MIN_CHARS`` to ``MAX_CHARS`` characters that can be cut at a space near its middle. The context is the
``CONTEXT_LINES`` lines before it and the line up to that space; the choices are the rest of the line and the rests
of three other kept lines of about the same length (so length gives nothing away), in a seeded random order. Items
are spread evenly over the held-out text. The items depend on the Python that runs it (its standard library).
"""

from __future__ import annotations

import random

START = 0.6
CONTEXT_LINES = 8
MIN_CHARS, MAX_CHARS = 40, 100
MAX_ITEMS = 1000
CHOICES = 4
SEED = 0


def held_out_files() -> list[str]:
    """The standard-library modules the items come from: those that start after ``START`` of the text's characters
    (calibration on ``stdlib`` reads the first half of its tokens)."""
    from pipeline.core.data import stdlib_files

    files = stdlib_files()
    total = sum(len(f) + 2 for f in files)
    out, offset = [], 0
    for text in files:
        if offset >= total * START:
            out.append(text)
        offset += len(text) + 2
    return out


def _code_lines(text: str) -> list[int]:
    """Indexes (0-based) of the lines of one module that are code of the right length: not blank, not a comment,
    not part of a string that spans lines, not a line that starts with a string (a docstring)."""
    import io
    import tokenize

    skipped: set[int] = set()
    first_token: dict[int, int] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
                continue
            first_token.setdefault(tok.start[0], tok.type)
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                skipped.update(range(tok.start[0], tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        return []
    lines = text.splitlines()
    return [row - 1 for row, kind in sorted(first_token.items())
            if row not in skipped and kind not in (tokenize.STRING, tokenize.COMMENT)
            and row <= len(lines) and MIN_CHARS <= len(lines[row - 1].strip()) <= MAX_CHARS]


def _cut(line: str) -> int | None:
    """Where the line is cut: the space nearest its middle, with code on both sides; None where there is none."""
    start = len(line) - len(line.lstrip())
    middle = start + (len(line) - start) // 2
    spaces = [k for k in range(start + 8, len(line) - 8) if line[k] == " " and line[k - 1] != " " and line[k + 1] != " "]
    return min(spaces, key=lambda k: abs(k - middle)) if spaces else None


def items() -> list[dict]:
    """Every item: {"context", "endings", "label"}, in the text's order; each ending starts with its space."""
    candidates = []  # (lines of its module, line index, cut)
    for text in held_out_files():
        lines = text.splitlines()
        for i in _code_lines(text):
            cut = _cut(lines[i].rstrip()) if i >= CONTEXT_LINES else None
            if cut is not None:
                candidates.append((lines, i, cut))
    step = max(1, len(candidates) // MAX_ITEMS)
    chosen = candidates[::step][:MAX_ITEMS]
    endings = [lines[i].rstrip()[cut:] for lines, i, cut in chosen]
    by_length = sorted(range(len(chosen)), key=lambda k: (len(endings[k]), endings[k]))
    position = {k: p for p, k in enumerate(by_length)}
    rng = random.Random(SEED)
    out = []
    for k, (lines, i, cut) in enumerate(chosen):
        near = by_length[max(0, position[k] - 12): position[k] + 13]  # the endings closest in length
        others = sorted({endings[j] for j in near if endings[j] != endings[k]})
        choices = [endings[k], *rng.sample(others, CHOICES - 1)]
        rng.shuffle(choices)
        context = "\n".join(lines[i - CONTEXT_LINES: i] + [lines[i][:cut]])
        out.append({"context": context, "endings": choices, "label": choices.index(endings[k])})
    return out


def load(**_) -> dict:
    """lm-eval's ``custom_dataset`` hook: the task's one split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items())})
