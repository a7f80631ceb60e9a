"""The trade-off table and Pareto plot (benchmarks/tradeoff.py) from a hand-made benchmark result."""

from benchmarks.report import write_report
from benchmarks.stats import summarize
from benchmarks.tradeoff import pareto_front, tradeoff_rows

PPL = {"dataset": "embedded", "windows": 8, "context_length": 512}


def _artifact(key, method, sparsity, ppl, size, graphs=("deepsparse", "onnxruntime"), **extra):
    return {"key": key, "name": key, "path": f"/fake/{key}", "method": method, "requested_sparsity": sparsity,
            "sparsity": sparsity or 0.0, "layers": 2, "graphs": list(graphs), "bytes": size,
            "perplexity": {**PPL, "perplexity": ppl, "measured_in": "llamacpp" if "gguf_type" in extra else "onnxruntime"}
            if ppl else None, **extra}


def _results():
    arts = [_artifact("dense", "none", None, 5.0, 6 << 30),
            _artifact("dass50", "dass", 0.5, 6.0, 6 << 30),
            _artifact("dass50-int8", "dass+int8", 0.5, 6.2, 2 << 30),
            _artifact("q4", "gguf-q4_0", None, 5.6, 1 << 30, graphs=("llamacpp",), gguf_type="q4_0"),
            _artifact("q8", "gguf-q8_0", None, 5.1, 2 << 30, graphs=("llamacpp",), gguf_type="q8_0",
                      perplexity={"dataset": "embedded", "windows": 4, "context_length": 512, "perplexity": 5.1,
                                  "measured_in": "llamacpp"})]
    speed = {("dense", "deepsparse"): 3.0, ("dense", "onnxruntime"): 2.5, ("dass50", "deepsparse"): 5.0,
             ("dass50", "onnxruntime"): 2.4, ("dass50-int8", "deepsparse"): 8.0, ("dass50-int8", "onnxruntime"): 3.0,
             ("q4", "llamacpp"): 9.0, ("q8", "llamacpp"): 6.0}
    measurements = [{"artifact": a, "engine": e, "mode": mode, "round": r, "tokens_per_s": tps * (1 if mode == "decode" else 30),
                     "ms_median": 1000 / tps, "peak_rss_bytes": (1 + r) << 30}
                    for (a, e), tps in speed.items() for mode in ("decode", "prefill") for r in (1, 2)]
    results = {"artifacts": arts, "measurements": measurements, "failures": [], "partial": None,
               "settings": {"sequence_length": 256, "prefill_length": 128, "threads": 2, "repeats": 2, "seconds": 5,
                            "warmup_seconds": 1, "modes": ["decode", "prefill"], "extrapolate_to_layers": None},
               "machine": {"cpu": "test CPU", "cores": 2, "memory_gib": 24, "platform": "linux"}}
    results["summary"] = summarize(results)
    return results


def test_pareto_front_keeps_only_the_points_nothing_beats():
    points = [(9.0, 5.6), (8.0, 6.2), (6.0, 5.1), (3.0, 5.0), (2.5, 5.0), (5.0, 6.0), (None, 4.0), (10.0, None)]
    assert pareto_front(points) == {0, 2, 3}  # (2.5, 5.0) is beaten by (3.0, 5.0); missing values never count


def test_rows_carry_speed_perplexity_size_and_peak_ram_and_mark_the_frontier():
    rows = {(r["artifact"], r["engine"]): r for r in tradeoff_rows(_results())}
    assert len(rows) == 8
    q4 = rows[("q4", "llamacpp")]
    assert q4["tokens_per_s"] == {"decode": 9.0, "prefill": 270.0} and q4["perplexity"] == 5.6
    assert q4["peak_rss_bytes"] == 3 << 30 and q4["bytes"] == 1 << 30  # the largest of its rounds and modes
    on_front = {k for k, r in rows.items() if r["frontier"]}
    assert on_front == {("q4", "llamacpp"), ("q8", "llamacpp"), ("dense", "deepsparse")}
    assert rows[("q8", "llamacpp")]["other_protocol"] and not q4["other_protocol"]
    assert rows[("dass50-int8", "deepsparse")]["label"] == "dass 50% INT8"


def test_report_has_the_table_and_the_pareto_plot(tmp_path):
    made = write_report(_results(), tmp_path)
    assert "tradeoff.png" in made and (tmp_path / "tradeoff.png").stat().st_size > 10_000
    text = (tmp_path / "report.md").read_text()
    assert "## Trade-off: speed, perplexity, size, memory" in text
    assert "| **dense, GGUF q4_0** | llama.cpp | 9.00 | 270.00 | 5.600 | 1,024 | 3,072 |" in text
    # no figure of DeepSparse's own here: ONNX Runtime's, marked (tests/test_engine_perplexity.py: with one)
    assert "| dass 50% INT8 | DeepSparse | 8.00 | 240.00 | 6.200 (in ONNX Runtime) | 2,048 | 3,072 |" in text
    assert "| dass 50% INT8 | ONNX Runtime | 3.00 | 90.00 | 6.200 | 2,048 | 3,072 |" in text
    assert "5.100 (other windows)" in text


def test_each_artifact_of_a_run_gets_the_perplexity_the_run_recorded_for_it(tmp_path):
    import json

    from pipeline.stages.benchmark import recorded_perplexity

    one = {"windows": 8, "context_length": 512, "tokens": 4096}
    (tmp_path / "perplexity_dense.json").write_text(json.dumps({"dataset": "d", "dense": {"perplexity": 5.0, **one}}))
    (tmp_path / "perplexity.json").write_text(json.dumps({"dataset": "d", "pruned": {"perplexity": 6.0, **one}}))
    assert recorded_perplexity(tmp_path / "artifact-dense")["perplexity"] == 5.0
    assert recorded_perplexity(tmp_path / "artifact") == {"dataset": "d", "measured_in": "pytorch", "perplexity": 6.0,
                                                          **one}
    assert recorded_perplexity(tmp_path / "artifact-int8") is None  # not quantized
    (tmp_path / "quantize.json").write_text(json.dumps({"perplexity": {
        "dataset": "d", "graph": "onnxruntime", "float": {"perplexity": 6.01, **one}, "int8": {"perplexity": 6.3, **one}}}))
    assert recorded_perplexity(tmp_path / "artifact")["perplexity"] == 6.01  # the exported graph's own, when measured
    assert recorded_perplexity(tmp_path / "artifact-int8")["measured_in"] == "onnxruntime"
    (tmp_path / "perplexity.json").unlink()
    (tmp_path / "quantize.json").unlink()
    assert recorded_perplexity(tmp_path / "artifact")["perplexity"] == 5.0  # a dense-only run


def test_prefill_lengths_are_measured_modes_of_one_interleaved_run_and_the_crossover_is_stated(tmp_path):
    """Fake engines whose cost is known: llama.cpp fast per step at any length, the sparse artifact slow in decode
    but cheaper per prompt token; the runner measures each prompt length as its own mode in every round, and the
    report states from which length the artifact is faster."""
    from benchmarks.peers import crossover
    from benchmarks.runner import run_benchmark
    from benchmarks.settings import BenchmarkSettings

    arts = [_artifact("int8", "dass+int8", 0.7, 6.2, 2 << 30, graphs=("deepsparse",)),
            _artifact("q4", "gguf-q4_0", None, 5.6, 1 << 30, graphs=("llamacpp",), gguf_type="q4_0")]
    asked = []

    def measure(spec):
        asked.append((spec.engine, spec.mode, spec.prefill_length))
        tokens = 1 if spec.mode == "decode" else spec.prefill_length
        # ms per step: llama.cpp 10 + 1.0 per token; the artifact 20 + 0.5 per token -> equal at 20 tokens
        ms = (10 + 1.0 * tokens) if spec.engine == "llamacpp" else (20 + 0.5 * tokens)
        return {"ms_median": ms, "tokens_per_s": tokens * 1000 / ms, "peak_rss_bytes": 1 << 30}

    settings = BenchmarkSettings(engines=["deepsparse", "llamacpp"], modes=["decode", "prefill"], sequence_length=512,
                                 prefill_lengths=[64, 8, 16], repeats=2, seconds=1, warmup_seconds=0)
    results = run_benchmark(arts, settings, tmp_path, progress=False, measure_fn=measure)
    assert len(asked) == 2 * 2 * 4 and {(m, n) for _, m, n in asked if m == "prefill"} == {
        ("prefill", 8), ("prefill", 16), ("prefill", 64)}
    modes = {c["mode"] for c in results["summary"]["cells"]}
    assert modes == {"decode", "prefill-8", "prefill-16", "prefill-64"}
    ratios = {r["mode"]: r["ratio"] for r in results["summary"]["vs_llamacpp"]}
    assert ratios["decode"] < 1 and ratios["prefill-8"] < 1 and ratios["prefill-16"] < 1 and ratios["prefill-64"] > 1
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Crossover: from which prompt length or batch size the artifact overtakes llama.cpp" in text
    assert "| decode | prefill-8 | prefill-16 | prefill-64 | faster from |" in text
    assert "| no verdict: fewer than 3 rounds |" in text  # two rounds: no win is called
    assert "prefill 8, 16, 64 tokens" in text
    st = results["settings"]

    def rows(**ratios):  # three rounds, each at the given ratio
        return {m.replace("_", "-"): {"ratio": r, "per_round": {"min": r, "max": r, "n": 3}} for m, r in ratios.items()}

    assert crossover(rows(prefill_8=1.2, prefill_16=0.9, prefill_64=1.1), st) == "from 64 tokens"
    assert crossover(rows(prefill_8=1.2, prefill_64=1.1), st) == "at every measured length"
    assert crossover(rows(decode=2.0, prefill_8=0.5), st) == "not faster up to 8 tokens"


def test_batch_sizes_are_measured_modes_and_the_crossover_names_the_batch(tmp_path):
    """Batch-N decode: each N its own mode in every round, the spec carries N sequences (tokens per step = N), and
    the crossover is stated for prompts and batches apart. Fake costs: llama.cpp 10 + 1.0 ms per row, the artifact
    20 + 0.5 -> equal at 20 rows."""
    from benchmarks.peers import crossover
    from benchmarks.runner import run_benchmark
    from benchmarks.settings import BenchmarkSettings

    arts = [_artifact("int8", "dass+int8", 0.7, 6.2, 2 << 30, graphs=("deepsparse",)),
            _artifact("q4", "gguf-q4_0", None, 5.6, 1 << 30, graphs=("llamacpp",), gguf_type="q4_0")]
    asked = []

    def measure(spec):
        asked.append((spec.mode, spec.batch_size, spec.tokens_per_step, spec.step_shape))
        rows = spec.tokens_per_step
        ms = (10 + 1.0 * rows) if spec.engine == "llamacpp" else (20 + 0.5 * rows)
        return {"ms_median": ms, "tokens_per_s": rows * 1000 / ms, "peak_rss_bytes": 1 << 30}

    settings = BenchmarkSettings(engines=["deepsparse", "llamacpp"], modes=["decode", "prefill", "batch"],
                                 sequence_length=128, prefill_lengths=[8, 64], batch_sizes=[32, 4, 16], repeats=2,
                                 seconds=1, warmup_seconds=0)
    results = run_benchmark(arts, settings, tmp_path, progress=False, measure_fn=measure)
    assert ("batch", 16, 16, (16, 1, 127)) in asked and ("decode", 1, 1, (1, 1, 127)) in asked
    assert ("prefill", 1, 64, (1, 64, 0)) in asked and len(asked) == 2 * 2 * 6
    ratios = {r["mode"]: r["ratio"] for r in results["summary"]["vs_llamacpp"]}
    assert ratios["batch-16"] < 1 < ratios["batch-32"]
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| decode | prefill-8 | prefill-64 | batch-4 | batch-16 | batch-32 | faster from |" in text
    assert "| no verdict: fewer than 3 rounds; batch: no verdict: fewer than 3 rounds |" in text
    assert "batch 4 decode tok/s (all sequences)" in text and "batch-N = decode for N sequences at once (N = 4, 16, 32)" in text
    three = {"min": 0.5, "max": 0.9, "n": 3}
    assert crossover({"decode": {"ratio": 2.0, "per_round": three}, "batch-4": {"ratio": 0.5, "per_round": three},
                      "batch-16": {"ratio": 0.9, "per_round": three}}, results["settings"]) == \
        "batch: not faster up to 16 sequences"
    with __import__("pytest").raises(Exception, match="each must be 2 or more"):
        BenchmarkSettings(modes=["batch"], batch_sizes=[1, 4])


def test_weight_bytes_by_kind_counts_zeros_per_dtype_from_the_weights_file(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.weight_kinds import weight_bytes_by_kind

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 128)).astype(np.float32) + 10
    w[:, ::2] = 0  # half zeros
    q = rng.integers(1, 60, (128, 64)).astype(np.int8)
    q[::4] = 0  # a quarter zeros
    bias = np.zeros(64, np.float32)  # small: "other", zeros or not
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(q, "q"),
                               numpy_helper.from_array(bias, "bias")])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    assert weight_bytes_by_kind(tmp_path / "model.onnx") == {
        "float_nonzero": 64 * 64 * 4, "float_zero": 64 * 64 * 4, "int8_nonzero": 96 * 64, "int8_zero": 32 * 64,
        "other": 64 * 4}


def test_report_states_weight_bytes_by_kind(tmp_path):
    results = _results()
    kinds = {"graph": "deepsparse", "float_nonzero": 3 << 20, "float_zero": 3 << 20, "int8_nonzero": 0, "int8_zero": 0,
             "other": 0}
    results["artifacts"][1]["weight_bytes"] = kinds
    results["artifacts"][2]["weight_bytes"] = {**kinds, "float_nonzero": 1 << 20, "float_zero": 0,
                                               "int8_nonzero": 1 << 20, "int8_zero": 1 << 20}
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| dass 50% | deepsparse | 3 | 3 | 0 | 0 | 0 | 6 | 50% |" in text
    assert "| dass 50% INT8 | deepsparse | 1 | 0 | 1 | 1 | 0 | 3 | 67% |" in text
    assert "| dense, GGUF q4_0 | GGUF file | – | – | – | – | – | 1,024 | – |" in text
