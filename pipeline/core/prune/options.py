"""Each pruning method's parameters, as the recipe gives them under ``prune.<method>`` (``prune.dass.alpha``,
``prune.sparsegpt.block_size`` ...). Torch-free, so that reading a recipe stays light; each method class names its
model (``Options``) and is the only code that reads its fields (tests/test_methods_registry.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoOptions(MethodOptions):
    """The method has no parameters."""


class DassOptions(MethodOptions):
    """DaSS: gate/up scored |W_ij| * ||y_i||^alpha (y: the input of down_proj)."""

    alpha: float = Field(0.5, ge=0.0, description="DaSS exponent on the intermediate activation norm")


class SparseGPTOptions(MethodOptions):
    """SparseGPT: OBS reconstruction over blocks of input columns."""

    block_size: int = Field(128, gt=0, description="SparseGPT: input columns reconstructed together")
    dampening_frac: float = Field(0.01, gt=0, description="SparseGPT: damping added to diag(X^T X), as a fraction "
                                                          "of its mean")


#: method name -> its parameter model; the recipe's prune.method choices, in this order
OPTIONS: dict[str, type[MethodOptions]] = {"dass": DassOptions, "wanda": NoOptions, "sparsegpt": SparseGPTOptions,
                                           "magnitude": NoOptions}
METHOD_NAMES = tuple(OPTIONS)
