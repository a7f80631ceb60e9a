"""The rule that decides when a report may call one artifact faster than another (pure functions, no I/O).

Rounds interleave the two (benchmarks/runner.py), so each round gives one paired ratio, mine over the peer's tokens/s,
with the machine's noise of that moment hitting both. The ratio of medians alone can sit at 1.01x while the rounds
run from 0.88x to 1.15x: nothing is known there. So:

- **faster**: every round's paired ratio is above 1;
- **slower**: every round's paired ratio is below 1;
- **within noise**: the rounds straddle 1 (or one equals it);
- **fewer than 3 rounds**: a verdict needs at least ``MIN_ROUNDS`` paired rounds; with fewer, none is called.

``paired_ratio`` in benchmarks/stats.py gives the per-round spread (min, median, max, n) this reads.
"""

from __future__ import annotations

MIN_ROUNDS = 3

FASTER, SLOWER, NOISE, FEW = "faster", "slower", "within noise", f"fewer than {MIN_ROUNDS} rounds"

RULE = (f"A row is called **faster** only where every interleaved round's paired ratio is above 1, **slower** only "
        f"where every round's is below 1, and **within noise** otherwise; with fewer than {MIN_ROUNDS} paired rounds "
        f"no verdict is called (\"{FEW}\"). The ratio shown is the ratio of medians.")


def verdict(per_round: dict | None) -> str:
    """The verdict of one comparison from the spread of its per-round paired ratios (``{"min", "max", "n"}``)."""
    if not per_round or per_round["n"] < MIN_ROUNDS:
        return FEW
    if per_round["min"] > 1:
        return FASTER
    if per_round["max"] < 1:
        return SLOWER
    return NOISE


def entry_verdict(entry: dict | None) -> str:
    """The verdict of a summary row that carries ``per_round`` (a speedup, a vs_llamacpp row)."""
    return verdict((entry or {}).get("per_round"))


def first_win(points: list[tuple[int, str]], unit: str, every: str) -> str:
    """From which size on (sorted ``points`` of (size, verdict)) every measured size is a verdict of faster; with no
    such size, why not: too few rounds somewhere, or never faster up to the largest size."""
    wins = [size for i, (size, _) in enumerate(points) if all(v == FASTER for _, v in points[i:])]
    if wins:
        return every if wins[0] == points[0][0] else f"from {wins[0]} {unit}"
    if any(v == FEW for _, v in points):
        return f"no verdict: {FEW}"
    return f"not faster up to {points[-1][0]} {unit}"
