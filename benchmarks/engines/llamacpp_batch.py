"""N sequences decoded together in llama.cpp (its C API through llama-cpp-python's ctypes bindings: the binding's
``Llama`` class holds one sequence).

Each sequence has its own cache (``n_seq_max`` = N, llama.cpp's default split cache: ``sequence_length`` cells per
sequence). The first sequence is filled with ``sequence_length - 1`` tokens, the others are copies of it
(``llama_memory_seq_cp``). One step is one ``llama_decode`` of a batch of N tokens, token i at the next position of
sequence i, logits for all N; then each sequence's new cell is removed (``llama_memory_seq_rm``), so the next step
costs the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.common.errors import PipelineError


class BatchedDecoder:
    def __init__(self, path: Path, sequences: int, sequence_length: int, threads: int | None, seed: int = 0,
                 flash_attention: bool = False):
        from benchmarks.engines.llamacpp_runner import binding, system_info, uses_extra_buffers

        self.api = api = binding()
        if not Path(path).is_file():
            raise PipelineError(f"no GGUF file at {path}", "write it first (pipeline gguf, or the benchmark stage)")
        api.llama_backend_init()
        model_params = api.llama_model_default_params()
        model_params.use_extra_bufts = uses_extra_buffers(system_info())  # llamacpp_runner.AMX_CRASH
        self.model = api.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise PipelineError(f"llama.cpp could not load {path}", "check the file (pipeline gguf writes it)")
        params = api.llama_context_default_params()
        threads = threads or os.cpu_count()
        params.n_ctx = sequences * sequence_length
        params.n_batch = params.n_ubatch = max(sequence_length, sequences)
        params.n_seq_max, params.n_threads, params.n_threads_batch = sequences, threads, threads
        # on or off as asked, as the single-sequence runner sets it (llama.cpp's own default is "auto")
        params.flash_attn_type = (api.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention
                                  else api.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.ctx = api.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise PipelineError(f"llama.cpp could not make a context of {sequences} x {sequence_length} positions",
                                "lower benchmark.batch_sizes or benchmark.sequence_length")
        self.memory = api.llama_get_memory(self.ctx)
        self.vocab = api.llama_vocab_n_tokens(api.llama_model_get_vocab(self.model))
        self.sequences, self.past = sequences, sequence_length - 1
        self.batch = api.llama_batch_init(max(sequence_length, sequences), 0, 1)
        rng = np.random.default_rng(seed)
        self.prefix = [int(t) for t in rng.integers(0, self.vocab, self.past)]
        self._decode([(t, p, 0, p == self.past - 1) for p, t in enumerate(self.prefix)])
        for seq in range(1, sequences):
            api.llama_memory_seq_cp(self.memory, 0, seq, -1, -1)
        self.tokens = [int(t) for t in rng.integers(0, self.vocab, sequences)]

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        code = self.api.llama_decode(self.ctx, b)
        if code != 0:
            raise PipelineError(f"llama_decode failed ({code}) on a batch of {len(entries)} tokens",
                                "lower benchmark.batch_sizes or benchmark.sequence_length")

    def step(self, tokens: list[int] | None = None) -> None:
        """Token i (default: fixed random ones) at position sequence_length - 1 of sequence i, then forget them."""
        self._decode([(t, self.past, seq, True) for seq, t in enumerate(tokens or self.tokens)])
        self.api.llama_memory_seq_rm(self.memory, -1, self.past, -1)

    def logits(self, row: int) -> np.ndarray:
        """The logits of sequence ``row`` from the last step."""
        return np.ctypeslib.as_array(self.api.llama_get_logits_ith(self.ctx, row), shape=(self.vocab,)).copy()

    def close(self) -> None:
        self.api.llama_batch_free(self.batch)
        self.api.llama_free(self.ctx)
        self.api.llama_model_free(self.model)
