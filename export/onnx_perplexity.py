"""Perplexity of an artifact's graph, computed in ONNX Runtime (or, for ``openvino``, in OpenVINO on the IR or the
ONNX Runtime graph), with the same windows and loss as pipeline/core/evaluate.py (it is reused: the session is
wrapped as a module that returns logits).

This is how the INT8 artifact's perplexity is measured: the INT8 graph itself, not a PyTorch imitation.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from export.checks import ort_session
from export.graph_formats import GRAPHS, graph_feed
from pipeline.core.evaluate import perplexity


class OnnxLogits(nn.Module):
    """``model(input_ids=...).logits`` of one graph of an artifact (prefill with an empty cache); ``openvino``: the
    artifact's OpenVINO model (export/openvino_graph.py) in OpenVINO's CPU plugin."""

    def __init__(self, folder: Path, engine: str):
        super().__init__()
        from transformers import AutoConfig

        self.engine = engine
        if GRAPHS[engine].in_openvino:
            from export import openvino_graph as ovg

            self.config = AutoConfig.from_pretrained(ovg.graph_file(folder).parent)
            compiled = ovg.compile_model(ovg.openvino_model(folder))
            self.names = {i.any_name for i in compiled.inputs}
            request = compiled.create_infer_request()
            self.run = lambda feed: np.asarray(request.infer(feed)["logits"])
        else:
            self.config = AutoConfig.from_pretrained(folder / engine)
            session = ort_session(folder / engine / "model.onnx", mapped=True)  # evaluation, not timing
            self.names = {i.name for i in session.get_inputs()}
            self.run = lambda feed: session.run(["logits"], feed)[0]
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # evaluate() asks for a device

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        ids = input_ids.cpu().numpy()
        feed = graph_feed(self.engine, self.names, self.config, ids)
        return SimpleNamespace(logits=torch.from_numpy(self.run(feed)))


def artifact_perplexity(folder: Path, tokens: torch.Tensor, context_length: int, max_windows: int | None = None,
                        engine: str = "onnxruntime", progress: bool = True, bos_token_id: int | None = None) -> dict:
    """``bos_token_id``: a BOS before every window (pipeline/core/evaluate.py), as for the PyTorch model."""
    model = OnnxLogits(Path(folder), engine)
    return perplexity(model, tokens, context_length, max_windows, progress=progress,
                      desc=f"perplexity ({Path(folder).name}, {engine} graph)", bos_token_id=bos_token_id)


@torch.no_grad()
def top1_agreement(reference: Path, candidate: Path, tokens: torch.Tensor, context_length: int, windows: int,
                   engine: str = "onnxruntime", bos_token_id: int | None = None) -> dict:
    """Teacher-forced agreement of two artifacts' graphs on text: over the first ``windows`` evaluation windows
    (the perplexity protocol's), the fraction of positions at which ``candidate`` predicts the same next token
    as ``reference`` (both read the same text, so one disagreement never shifts the positions after it)."""
    from pipeline.core.evaluate import evaluation_windows

    batches = evaluation_windows(tokens, context_length, windows, bos_token_id)
    picks = []
    for folder in (reference, candidate):  # one graph in memory at a time
        model = OnnxLogits(Path(folder), engine)
        picks.append(torch.stack([model(input_ids=ids.unsqueeze(0)).logits[0, :-1].argmax(-1) for ids in batches]))
        del model
    same, total = int((picks[0] == picks[1]).sum()), picks[0].numel()
    return {"fraction": same / total, "positions": total, "windows": batches.shape[0],
            "context_length": context_length, "graph": engine,
            "run_in": GRAPHS[engine].runtime}
