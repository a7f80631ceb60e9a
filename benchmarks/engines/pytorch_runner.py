"""PyTorch eager, float32, with transformers' own KV cache: the dense peer.

The model is rebuilt from the artifact's config.json with freshly initialised weights: PyTorch's
dense kernels take the same time whatever the values (zeros included), so this is the speed of
the same shapes in PyTorch, not of the artifact's weights.
"""

from __future__ import annotations

import time

import torch

from benchmarks.engines import MeasureSpec, graph_folder
from benchmarks.engines.counted import decoded
from benchmarks.engines.timing import time_steps


def measure(spec: MeasureSpec) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    if spec.threads:
        torch.set_num_threads(spec.threads)
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(graph_folder(spec))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    rows, _, past = spec.step_shape
    last = []  # the latest step's logits, to count what it decoded
    if spec.mode != "prefill":  # decode, one sequence or a batch of them
        with torch.no_grad():
            cache = DynamicCache()
            prefix = torch.randint(0, config.vocab_size, (rows, past), generator=gen)
            model(input_ids=prefix, past_key_values=cache, use_cache=True)
        ids = torch.randint(0, config.vocab_size, (rows, 1), generator=gen)
        mask = torch.ones(rows, past + 1, dtype=torch.long)
        position = torch.full((rows, 1), past)

        def step():
            with torch.no_grad():
                last[:] = [model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                                 use_cache=True).logits]
            cache.crop(past)
    else:
        ids = torch.randint(0, config.vocab_size, (1, spec.prefill_length), generator=gen)

        def step():
            with torch.no_grad():
                last[:] = [model(input_ids=ids, use_cache=True).logits]

    result = time_steps(step, spec.warmup_seconds, spec.seconds)
    return {**result, "decoded": decoded(last[0].numpy()), "load_seconds": load_s, "threads": torch.get_num_threads(),
            "engine_version": torch.__version__,
            "kv_cache": "transformers DynamicCache", "weights": "re-initialised from config.json (dense)"}
