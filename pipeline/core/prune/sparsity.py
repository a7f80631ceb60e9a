"""The sparsity a recipe asks for (unstructured fraction or N:M) and the axes along which scores compete.

Torch-free, so that reading and validating a recipe loads nothing heavy.

- ``"row"``: within each output row (Wanda, DaSS down_proj). N:M groups are M consecutive
  weights of a row, i.e. along the input dimension.
- ``"column"``: within each input column (DaSS gate_proj / up_proj, "input-balanced").
  N:M groups are M consecutive weights of a column, i.e. along the output dimension.
- ``"matrix"``: over the whole matrix (magnitude, as in the Wanda reference). N:M groups
  lie along the input dimension, as for ``"row"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pipeline.common.errors import PipelineError

Axis = Literal["row", "column", "matrix"]

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class SparsitySpec:
    """Unstructured (``fraction`` pruned) or N:M (keep ``n`` of every ``m``)."""

    fraction: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.fraction:g}"

    @classmethod
    def parse(cls, value: float | int | str) -> "SparsitySpec":
        """Parse ``0.5``, ``"0.5"``, ``"50%"`` or ``"2:4"``; raise PipelineError on nonsense."""
        if isinstance(value, str):
            match = _NM.match(value)
            if match:
                n, m = int(match.group(1)), int(match.group(2))
                if m < 2 or not 0 < n < m:
                    raise PipelineError(
                        f"sparsity {value!r} is not a valid N:M pattern (need 0 < N < M)",
                        "keep N of every M weights, e.g. '2:4' or '4:8'",
                    )
                return cls(fraction=1.0 - n / m, n=n, m=m)
            text = value.strip()
            try:
                number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                raise PipelineError(
                    f"sparsity {value!r} is neither a fraction nor an N:M pattern",
                    "write a fraction in (0, 1) such as 0.5, or a pattern such as '2:4'",
                ) from None
            value = number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"sparsity {value!r} has the wrong type", "write 0.5 or '2:4'")
        if not 0.0 < float(value) < 1.0:
            raise PipelineError(
                f"sparsity {value} is outside (0, 1)",
                "give the fraction of weights to remove, e.g. 0.5 for 50%",
            )
        return cls(fraction=float(value))

    def check_fits(self, shape: tuple[int, int], axis: Axis, name: str) -> None:
        """N:M needs M to divide the grouped dimension of the weight."""
        if not self.is_nm:
            return
        dim = shape[0] if axis == "column" else shape[1]
        which = "output" if axis == "column" else "input"
        if dim % self.m:
            raise PipelineError(
                f"{self} sparsity does not fit {name}: its {which} dimension {dim} is not a multiple of {self.m}",
                f"choose an M that divides {dim}, or list {name} under prune.ignore",
            )
