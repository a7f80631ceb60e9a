"""The quantization schemes the quantize stage offers, and the ones it refuses with the reason.

Torch- and onnx-free, so that validating a recipe loads nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.common.errors import PipelineError


@dataclass(frozen=True)
class Scheme:
    weights: str
    activations: str
    per_channel: bool
    about: str
    down_proj: bool = False  # down_proj INT8 too (its input, act(gate) * up, carries the largest outliers)
    #: with down_proj: this fraction of its input channels (the largest calibrated max |x|) goes through a float
    #: MatMul beside the INT8 one (export/outlier_split.py); 0: none, the INT8 range covers every channel
    outlier_fraction: float = 0.0


SCHEMES = {
    "w8a8-static": Scheme("int8 symmetric per output channel, in [-63, 63] (exact in ONNX Runtime on CPUs without VNNI)", "uint8 asymmetric per tensor, static (min/max "
                          "calibration)", True,
                          "q/k/v/o/gate/up as QuantizeLinear -> MatMulInteger -> Cast -> Mul (DeepSparse's INT8 "
                          "form) after SmoothQuant smoothing of their inputs; down_proj, attention scores, norms "
                          "float32"),
    "w8a8-static-all": Scheme("int8 symmetric per output channel, in [-63, 63] (exact in ONNX Runtime on CPUs without VNNI)", "uint8 asymmetric per tensor, static (min/max "
                              "calibration)", True,
                              "as w8a8-static, and down_proj INT8 too (its input smoothed through up_proj's "
                              "columns): every decoder linear INT8", down_proj=True),
    "w8a8-static-outliers": Scheme("int8 symmetric per output channel, in [-63, 63] (exact in ONNX Runtime on CPUs without VNNI)", "uint8 asymmetric per tensor, static (min/max "
                                   "calibration)", True,
                                   "as w8a8-static-all (every decoder linear INT8), and the 1% of down_proj's input "
                                   "channels with the largest calibrated magnitude split off into a small float32 "
                                   "MatMul beside its INT8 one (LLM.int8()-style; their int8 rows are zero bytes)",
                                   down_proj=True, outlier_fraction=0.01),
}
#: schemes users ask for that the DeepSparse path does not run, and what to do instead
NOT_RUNNABLE = {
    "w4a16": "4-bit weights have no DeepSparse kernels; the 4-bit study is simulated in PyTorch for perplexity only "
             "(python -m scripts.ppl_table --weights w4g128)",
    "w4-rtn": "4-bit weights have no DeepSparse kernels; the perplexity study: python -m scripts.ppl_table "
              "--weights w4g128",
    "w8a8-dynamic": "dynamic activation quantization (DynamicQuantizeLinear + MatMulInteger) is not a DeepSparse "
                    "fast path; use w8a8-static",
    "fp8": "DeepSparse 1.8 has no FP8 kernels",
}


def check_scheme(name: str) -> Scheme:
    if name in SCHEMES:
        return SCHEMES[name]
    why = NOT_RUNNABLE.get(name, "unknown scheme")
    raise PipelineError(f"quantize.scheme {name!r} cannot run in DeepSparse: {why}",
                        f"use one of: {', '.join(SCHEMES)}")
