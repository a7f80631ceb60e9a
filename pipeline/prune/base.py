"""What a pruning method is: a pure function from (role, weight, layer statistics) to scores.

``stats`` maps a role (``q k v o gate up down``) to the sum over calibration tokens of the
squared input activations of that projection, shape ``[in_features]``. So ``stats[r].sqrt()``
is the per-feature L2 norm ||x_j|| Wanda and DaSS use; for ``down`` it is ||y_j|| of the GLU
intermediate activation y = act(gate(x)) * up(x).

A method that reconstructs the weights it keeps (SparseGPT) sets ``statistics = "gram"`` (it
gets ``X^T X`` per role instead) and has ``prune(role, weight, stats, sparsity, name) -> mask``,
which rewrites ``weight`` in place, instead of ``score``.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import torch

from pipeline.prune.masks import Axis

MLP_ROLES = ("gate", "up", "down")
ATTENTION_ROLES = ("q", "k", "v", "o")


class PruningMethod(Protocol):
    name: str
    #: False when scores need no activations (no calibration pass is run).
    needs_calibration: bool

    def axis(self, role: str) -> Axis:
        """Along which axis the scores of this projection compete (see pipeline.prune.masks)."""
        ...

    def score(self, role: str, weight: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Importance of every weight of ``weight`` (higher = keep)."""
        ...
