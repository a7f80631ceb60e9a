"""The benchmark settings: one model for the recipe's ``benchmark`` section, the ``pipeline benchmark``
command line and the runner (benchmarks/runner.py). Pydantic only, so that reading a recipe stays light.

Modes:
- ``decode``: one new token with a KV cache already holding ``sequence_length - 1`` tokens (batch 1).
- ``prefill``: ``prefill_length`` prompt tokens into an empty cache; with ``prefill_lengths``, one measured mode
  per length, named ``prefill-L`` (the compute-bound regime, where sparse kernels remove work).
- ``batch``: decode for N sequences at once, one measured mode ``batch-N`` per N in ``batch_sizes``: each step is
  one new token for each of N sequences, each after ``sequence_length - 1`` cached tokens; tokens/s counts all N
  (what a server decoding N requests together gets; each linear multiplies N rows, as a prefill of N tokens does).
"""

from __future__ import annotations

import typing
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.common.errors import PipelineError

Engine = Literal["deepsparse", "onnxruntime", "pytorch", "llamacpp", "openvino", "openvino-sparse"]
Mode = Literal["decode", "prefill", "batch"]


class BenchmarkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engines: list[Engine] = Field(default_factory=lambda: ["deepsparse", "onnxruntime", "pytorch"], min_length=1,
                                  description="engines that measure each artifact")
    modes: list[Mode] = Field(default_factory=lambda: ["decode", "prefill"], min_length=1,
                              description="decode: one new token after sequence_length - 1 cached tokens; prefill: "
                                          "prefill_length prompt tokens into an empty cache (batch 1); batch: "
                                          "decode of batch_sizes sequences at once")
    sequence_length: int = Field(512, gt=1, description="context: decode runs with sequence_length - 1 cached tokens")
    prefill_length: int = Field(64, gt=0, description="prompt tokens of a prefill measurement")
    prefill_lengths: Optional[list[int]] = Field(None, min_length=1, description="with prefill in modes: several "
                                                 "prompt lengths, each measured as its own mode prefill-L in the same "
                                                 "interleaved rounds (the crossover table); null: prefill_length alone")
    batch_sizes: list[int] = Field(default_factory=lambda: [4, 16], min_length=1,
                                   description="with batch in modes: the numbers of sequences decoded together, each "
                                               "measured as its own mode batch-N")
    threads: Optional[int] = Field(None, gt=0, description="engine threads; null: all cores")
    warmup_seconds: float = Field(2.0, ge=0, description="untimed seconds before each measurement")
    seconds: float = Field(10.0, gt=0, description="timed seconds per measurement")
    repeats: int = Field(3, gt=0, description="interleaved rounds")
    time_budget_seconds: float = Field(3 * 3600, gt=0, description="stop (keeping partial results) past this")
    llamacpp_flash_attention: list[Mode] = Field(
        default_factory=lambda: ["prefill"],
        description="the modes in which llama.cpp runs with flash attention on (off in the others; [] in a recipe: off "
                    "everywhere): on an AVX-512 Xeon it prefilled 2,048 tokens 10-13% faster, decoded 6-8% slower and "
                    "changed nothing in batch decode (benchmarks/results/qwen2.5-coder-1.5b/deploy-xeon/"
                    "llamacpp_flash_attention*.json), so the peer is measured at its best per mode")
    extrapolate_to_layers: Optional[int] = Field(None, gt=0, description="fit ms/token over the artifacts' depths "
                                                                         "and extrapolate to this many layers")

    @model_validator(mode="after")
    def _prefill_fits(self):
        lengths = (self.prefill_lengths or [self.prefill_length]) if "prefill" in self.modes else []
        too_long = [n for n in lengths if n >= self.sequence_length]
        if too_long:  # a prompt of L tokens into an empty cache needs a context of L + 1 (DeepSparse's graph, too)
            raise ValueError(f"prefill length {max(too_long)} is not below sequence_length {self.sequence_length} "
                             f"(the context a prompt of L tokens needs is at least L + 1) — fix: raise sequence_length "
                             f"to {max(too_long) + 1} or more (in a recipe, export.max_sequence_length with it) or drop "
                             f"the prefill lengths from {min(too_long)} up")
        if any(n < 1 for n in lengths):
            raise ValueError(f"prefill lengths {lengths}: each must be 1 or more")
        if "batch" in self.modes and min(self.batch_sizes) < 2:
            raise ValueError(f"batch_sizes {self.batch_sizes}: each must be 2 or more (batch 1 is the decode mode)")
        return self

    def measured_modes(self) -> list[tuple[str, str, int]]:
        """(label, mode, size) of every measured mode: decode, prefill once per prompt length (size: the length),
        batch once per batch size (size: the number of sequences)."""
        out = []
        for mode in self.modes:
            if mode == "batch":
                out += [(f"batch-{n}", mode, n) for n in sorted(set(self.batch_sizes))]
            elif mode == "prefill" and self.prefill_lengths:
                out += [(f"prefill-{n}", mode, n) for n in sorted(set(self.prefill_lengths))]
            else:
                out.append((mode, mode, self.prefill_length))
        return out

    def settings(self) -> "BenchmarkSettings":
        """The settings alone (a subclass, such as the recipe's section, adds keys of its own)."""
        return BenchmarkSettings(**{name: getattr(self, name) for name in BenchmarkSettings.model_fields})


def add_settings_arguments(parser, **defaults) -> None:
    """Every setting as a command-line option (``--sequence-length`` ...); ``defaults`` override the model's."""
    for name, field in BenchmarkSettings.model_fields.items():
        default = defaults.get(name, field.get_default(call_default_factory=True))
        option = "--" + name.replace("_", "-")
        help_text = field.description.replace("%", "%%")  # argparse formats help with %
        kind = field.annotation
        listed = next((t for t in typing.get_args(kind) if typing.get_origin(t) is list), None)  # Optional[list[int]]
        if listed is not None:
            parser.add_argument(option, nargs="+", type=typing.get_args(listed)[0], default=default,
                                help=help_text)
        elif typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            if typing.get_origin(item) is Literal:  # engines, modes: their names
                parser.add_argument(option, nargs="+", default=default, choices=typing.get_args(item),
                                    help=help_text)
            else:  # numbers
                parser.add_argument(option, nargs="+", type=item, default=default, help=help_text)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # Optional[int] -> int
            parser.add_argument(option, type=base, default=default, help=help_text)


def settings_from_arguments(args) -> BenchmarkSettings:
    try:
        return BenchmarkSettings(**{name: getattr(args, name) for name in BenchmarkSettings.model_fields})
    except ValidationError as exc:
        problems, fixes = [], []
        for e in exc.errors():
            message, _, fix = e["msg"].removeprefix("Value error, ").partition(" — fix: ")
            problems.append(f"--{'.'.join(map(str, e['loc'])).replace('_', '-') or 'settings'}: {message}")
            if fix:
                fixes.append(fix.replace("sequence_length", "--sequence-length"))
        raise PipelineError(f"bad benchmark settings: {'; '.join(problems)}",
                            "; ".join(fixes) or "see pipeline benchmark --help") from None
