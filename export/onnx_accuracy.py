"""An lm-evaluation-harness model that scores log-likelihoods with an artifact's ONNX graph, run in ONNX Runtime:
task accuracy of the file a user ships, not of the PyTorch model it came from.

The graph runs through export/onnx_perplexity.py's ``OnnxLogits`` (prefill with an empty cache, the same feeds as
the artifact's perplexity). Text becomes tokens exactly as lm-eval's HFLM does it (lm-eval's ``TemplateLM``
splits context and continuation; ``tok_encode`` follows HFLM's rule for special tokens), and an input longer than
``max_length`` keeps its last tokens as HFLM does, so the PyTorch model and its graph are scored on the same
token sequences (tests/test_accuracy.py compares them request by request).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lm_eval.api.model import TemplateLM

from export.onnx_perplexity import OnnxLogits
from pipeline.core.accuracy import max_length as model_max_length

log = logging.getLogger(__name__)


class OnnxLM(TemplateLM):
    """``lm_eval`` model over ``FOLDER/ENGINE/model.onnx`` (an artifact folder; ``engine`` picks its graph)."""

    def __init__(self, folder: Path | str, engine: str = "onnxruntime", max_length: int | None = None,
                 add_bos_token: bool | None = None, progress: bool = False):
        super().__init__()
        from transformers import AutoTokenizer

        folder = Path(folder)
        self.graph = OnnxLogits(folder, engine)
        self.tokenizer = AutoTokenizer.from_pretrained(folder / engine)
        self.max_length = max_length or model_max_length(self.graph.config)
        self.add_bos_token = add_bos_token
        self.progress = progress

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is replaced by: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """HFLM's rule: an explicit ``add_special_tokens`` wins, then ``add_bos_token``, else the tokenizer's own
        default; a string that already starts with the BOS text gets no second one."""
        from lm_eval.models.utils import has_bos_prefix

        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        else:
            special = {}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = True, **kwargs) -> list[tuple[float, bool]]:
        """Per request: the sum of log P(continuation token | everything before it) and whether every continuation
        token is the graph's greedy choice. One graph call per request (batch 1, as the graph was exported)."""
        from tqdm.auto import tqdm

        out = []
        for _, context, continuation in tqdm(requests, desc="accuracy (artifact, ONNX Runtime)", leave=False,
                                             disable=not self.progress):
            ids = (context + continuation)[-(self.max_length + 1):][:-1]
            logits = self.graph(torch.tensor([ids], dtype=torch.long)).logits[0, -len(continuation):]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            target = torch.tensor(continuation, dtype=torch.long)
            picked = logprobs.gather(1, target[:, None])[:, 0]
            out.append((float(picked.sum()), bool((logprobs.argmax(-1) == target).all())))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the artifact adapter scores multiple-choice tasks (loglikelihood); perplexity "
                                  "tasks (loglikelihood_rolling) are measured by the pipeline's own perplexity stages")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("the artifact adapter does not generate: use log-likelihood (multiple-choice) tasks, "
                                  "or `pipeline generate RUN/artifact PROMPT` to see the artifact generate")
