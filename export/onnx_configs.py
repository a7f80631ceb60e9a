"""Optimum export configuration for the DeepSparse-shaped decoder graph.

One declarative OnnxConfig (inputs, outputs, dummy inputs) plus one ModelPatcher that swaps
the model's forward for :class:`export.deepsparse_graph.DeepSparseForward` during export; the
export itself is Optimum's (``optimum.exporters.onnx.export``), opset 14, TorchScript exporter.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from optimum.exporters.onnx.config import TextDecoderOnnxConfig
from optimum.exporters.onnx.model_patcher import ModelPatcher
from optimum.utils import NormalizedTextConfig

from export.deepsparse_graph import DeepSparseForward, head_dim

#: DeepSparse 1.8 compiles opset 14 graphs from SparseML; newer opsets are not needed here.
DEEPSPARSE_OPSET = 14


class DeepSparsePatcher(ModelPatcher):
    """Runs DeepSparseForward instead of the model's forward while Optimum traces it."""

    def __init__(self, config, model, model_kwargs=None):
        super().__init__(config, model, model_kwargs)
        forward = DeepSparseForward(model, config.max_positions)

        def deepsparse_forward(input_ids, attention_mask, past_key_values, positions, causal_mask, **ignored):
            # ``ignored``: arguments Optimum passes to every causal LM (logits_to_keep, use_cache)
            return forward(input_ids, attention_mask, past_key_values, positions, causal_mask)

        self._model_forward = self.orig_forward  # what __exit__ must put back
        self.orig_forward = deepsparse_forward
        # Optimum reads the forward's signature (input order, allowed inputs) through __wrapped__.
        self.patched_forward.__wrapped__ = deepsparse_forward

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        setattr(self._model, self.orig_forward_name, self._model_forward)


class DeepSparseDecoderOnnxConfig(TextDecoderOnnxConfig):
    """``input_ids, attention_mask, past_key_values.*, positions, causal_mask`` -> ``logits, present.*``.

    The cache holds all attention heads (``num_attention_heads``), not the KV heads.
    """

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DEFAULT_ONNX_OPSET = DEEPSPARSE_OPSET
    _MODEL_PATCHER = DeepSparsePatcher

    def __init__(self, config, max_positions: int, task: str = "text-generation-with-past"):
        super().__init__(config, task=task, use_past=True, use_past_in_inputs=True)
        self.max_positions = max_positions

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        inputs = OrderedDict()
        inputs["input_ids"] = {0: "batch_size", 1: "sequence_length"}
        inputs["attention_mask"] = {0: "batch_size", 1: "total_sequence_length"}
        for i in range(self._config.num_hidden_layers):
            inputs[f"past_key_values.{i}.key"] = {0: "batch_size", 2: "past_sequence_length"}
            inputs[f"past_key_values.{i}.value"] = {0: "batch_size", 2: "past_sequence_length"}
        inputs["positions"] = {0: "batch_size", 1: "sequence_length"}
        inputs["causal_mask"] = {0: "batch_size", 2: "sequence_length", 3: "total_sequence_length"}
        return inputs

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        outputs = OrderedDict({"logits": {0: "batch_size", 1: "sequence_length"}})
        for i in range(self._config.num_hidden_layers):
            outputs[f"present.{i}.key"] = {0: "batch_size", 2: "total_sequence_length"}
            outputs[f"present.{i}.value"] = {0: "batch_size", 2: "total_sequence_length"}
        return outputs

    def generate_dummy_inputs(self, framework: str = "pt", **kwargs):
        config = self._config
        q, past = 4, 3
        total = q + past
        heads, dim = config.num_attention_heads, head_dim(config)
        gen = torch.Generator().manual_seed(0)
        return {
            "input_ids": torch.randint(0, config.vocab_size, (1, q), generator=gen),
            "attention_mask": torch.ones(1, total, dtype=torch.int64),
            "past_key_values": [(torch.randn(1, heads, past, dim, generator=gen),
                                 torch.randn(1, heads, past, dim, generator=gen))
                                for _ in range(config.num_hidden_layers)],
            "positions": torch.arange(past, total).unsqueeze(0),
            "causal_mask": torch.tril(torch.ones(q, total, dtype=torch.int64), diagonal=past)[None, None],
        }
