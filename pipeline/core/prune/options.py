"""Each pruning method's parameters, as the recipe gives them under ``prune.<method>`` (``prune.dass.alpha``,
``prune.sparsegpt.block_size`` ...). Torch-free, so that reading a recipe stays light; each method class names its
model (``Options``) and is the only code that reads its fields (tests/test_methods_registry.py)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoOptions(MethodOptions):
    """The method has no parameters."""


class DassOptions(MethodOptions):
    """DaSS: gate/up scored |W_ij| * ||y_i||^alpha (y: the input of down_proj)."""

    alpha: float = Field(0.5, ge=0.0, description="DaSS exponent on the intermediate activation norm")


class DassOutlierOptions(DassOptions):
    """DaSS with outlier input columns of gate/up kept dense (pipeline/core/prune/dass_outlier.py)."""

    outlier_ratio: float = Field(3.0, gt=1.0, description="an input column is an outlier where its activation norm "
                                                          "exceeds this many times the median column's")
    max_outlier_fraction: float = Field(0.01, ge=0.0, lt=0.5, description="at most this share of the input columns "
                                                                          "is kept dense (the largest norms)")


class SparseGPTOptions(MethodOptions):
    """SparseGPT: OBS reconstruction over blocks of input columns."""

    block_size: int = Field(128, gt=0, description="SparseGPT: input columns reconstructed together")
    dampening_frac: float = Field(0.01, gt=0, description="SparseGPT: damping added to diag(X^T X), as a fraction "
                                                          "of its mean")


#: method name -> its parameter model; the recipe's prune.method choices, in this order
OPTIONS: dict[str, type[MethodOptions]] = {"dass": DassOptions, "dass_outlier": DassOutlierOptions, "wanda": NoOptions,
                                           "sparsegpt": SparseGPTOptions, "magnitude": NoOptions}
METHOD_NAMES = tuple(OPTIONS)


class ObsOptions(MethodOptions):
    """reconstruct: obs — SparseGPT's OBS update of the kept weights, the chosen mask fixed."""

    block_size: int = Field(128, gt=0, description="input columns updated together (as SparseGPT's block_size)")
    dampening_frac: float = Field(0.01, gt=0, description="damping added to diag(X^T X), as a fraction of its mean")
    precision: Literal["float32", "float64"] = Field("float32", description="arithmetic of X^T X and of its inverse "
                                                     "factor (float32, as SparseGPT's reference; float64 is about 2x "
                                                     "slower)")

    @property
    def value_bytes(self) -> int:
        """Bytes of one entry of X^T X and its factor (for memory estimates)."""
        return 4 if self.precision == "float32" else 8


class BlockOptions(MethodOptions):
    """reconstruct: block — each decoder layer trained (Adam, the mask fixed) to reproduce the dense layer's outputs
    on the calibration inputs that reach it through the already-pruned layers below."""

    steps: int = Field(16, gt=0, description="optimizer steps per decoder layer")
    batch_windows: int = Field(2, gt=0, description="calibration windows per step (cycled in a seeded order)")
    tokens: Optional[int] = Field(256, gt=1, description="train on at most the first tokens of each window (exact "
                                                         "targets: the layer is causal); null: the whole window")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate: 1e-4 (on Qwen2.5-Coder-1.5B 1e-3 raised every "
                                              "tried layer's error, 1e-4 halved layer 0's: benchmarks/results/"
                                              "qwen2.5-coder-1.5b/recovery/block_lr.json; the embedded model "
                                              "prefers 1e-3: block_tuning_embedded.json)")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate over the steps: constant, or cosine (a linear warm-up over the first "
                                "tenth of the steps, then a cosine decay to a tenth of lr)")
    retries: int = Field(1, ge=0, description="where training raised a layer's error, it is redone from the same start "
                                              "at a third of the learning rate, up to this many times (then the "
                                              "layer is kept as it was)")
    train: list[Literal["pruned", "dense", "norms", "biases"]] = Field(
        default_factory=lambda: ["pruned", "norms"], min_length=1,
        description="what is trained: pruned (the kept weights of the pruned projections), dense (the layer's "
                    "projections left dense), norms (the layer's normalisation weights), biases")
    seed: int = Field(0, description="seed of the window order")
