"""The real engine runners on a tiny artifact: each measures in its own process, DeepSparse leaves the
artifact untouched, and a missing engine or a folder that is not an artifact is a clear error."""

import pytest

from benchmarks import engines
from benchmarks.engines import MeasureSpec, measure
from benchmarks.runner import find_artifact
from benchmarks.settings import BenchmarkSettings
from export.artifact import open_artifact
from pipeline.common.errors import PipelineError


@pytest.mark.parametrize("engine", ["deepsparse", "onnxruntime", "pytorch"])
def test_each_engine_measures_decode_and_prefill(tiny_artifact, engine):
    _, folder, _ = tiny_artifact
    settings = BenchmarkSettings(sequence_length=64, prefill_length=16, warmup_seconds=0.2, seconds=1)
    decode = measure(MeasureSpec.of(engine, folder, "decode", settings))
    prefill = measure(MeasureSpec.of(engine, folder, "prefill", settings))
    batch = measure(MeasureSpec.of(engine, folder, "batch", settings, size=4))  # 4 sequences, one new token each
    for r in (decode, prefill, batch):
        assert r["iterations"] >= 3 and r["ms_median"] > 0
    assert decode["tokens_per_s"] == pytest.approx(1000 / decode["ms_median"])
    assert prefill["tokens_per_s"] == pytest.approx(16 * 1000 / prefill["ms_median"])
    assert batch["tokens_per_s"] == pytest.approx(4 * 1000 / batch["ms_median"])
    if engine == "deepsparse":
        assert decode["kv_cache"] == "internal" and decode["fraction_of_supported_ops"] == 1.0
        assert decode["machine"]["isa"]
        open_artifact(folder, verify_checksums=True)  # the engine's benchmark ran on a scratch copy


def test_missing_engine_and_non_artifact_are_clear_errors(tiny_artifact, tmp_path, monkeypatch):
    _, folder, _ = tiny_artifact
    fake = engines.EngineFacts("no_such_engine_pkg", "pip install it", "deepsparse", "x", True, "No such engine")
    monkeypatch.setitem(engines.ENGINES, "deepsparse", fake)
    with pytest.raises(PipelineError, match="the deepsparse engine is not installed — fix: pip install it"):
        measure(MeasureSpec.of("deepsparse", folder, "decode", BenchmarkSettings()))
    with pytest.raises(PipelineError, match="holds no artifact"):
        find_artifact(tmp_path)
    assert find_artifact(folder)["method"] == "dass" and find_artifact(folder)["layers"] == 2


def test_recipe_comparing_with_a_run_of_its_own_name_is_refused_up_front(tiny_artifact):
    from pipeline.recipe import parse_recipe
    from pipeline.stages.benchmark import check
    from pipeline.stages.stage import Context

    def preflight_benchmark(recipe):
        return check(Context(recipe, recipe.run_dir(), None, progress=False))

    _, folder, _ = tiny_artifact
    name = folder.parent.name  # the key a compared run folder gets
    recipe = parse_recipe({"name": name, "model": {"source": "x"}, "export": {"enabled": True},
                           "benchmark": {"enabled": True, "compare": [str(folder.parent)]}})
    with pytest.raises(PipelineError, match="two benchmarked artifacts would share a name"):
        preflight_benchmark(recipe)
    other = parse_recipe({"name": "other", "model": {"source": "x"}, "export": {"enabled": True},
                          "benchmark": {"enabled": True, "compare": [str(folder.parent)],
                                        "sequence_length": 96, "prefill_length": 32}})  # the tiny graph holds 128
    assert [a["key"] for a in preflight_benchmark(other)] == [name]


@pytest.mark.parametrize("engine", ["onnxruntime", "pytorch", "openvino"])
def test_a_batch_measurement_decodes_each_of_its_sequences(tiny_artifact, engine):
    """Counted from the timed step's own logits (the runner in this process): batch-4 decodes 4 sequences, one new
    token each, all 4 different (each its own prompt and cache, no row a copy); a prefill of 16 tokens is one
    sequence of 16 positions. So batch-N tokens/s counts N sequences really decoded."""
    import importlib

    if engine == "openvino":
        pytest.importorskip("openvino")
    _, folder, _ = tiny_artifact
    runner = importlib.import_module(engines.ENGINES[engine].runner)
    settings = BenchmarkSettings(sequence_length=64, prefill_length=16, warmup_seconds=0, seconds=0.1)
    for batch in (4, 7) if engine != "openvino" else (4,):  # OpenVINO compiles per measurement: one is enough
        assert runner.measure(MeasureSpec.of(engine, folder, "batch", settings, size=batch))["decoded"] == {
            "sequences": batch, "new_tokens": 1, "distinct": batch}
    if engine == "openvino":
        return
    assert runner.measure(MeasureSpec.of(engine, folder, "decode", settings))["decoded"] == {
        "sequences": 1, "new_tokens": 1, "distinct": 1}
    assert runner.measure(MeasureSpec.of(engine, folder, "prefill", settings))["decoded"] == {
        "sequences": 1, "new_tokens": 16, "distinct": 1}


def test_a_step_that_decodes_other_sequences_than_asked_is_refused(monkeypatch):
    """measure() checks the runner's count against the spec: one sequence, or four copies of one, where batch-4 was
    asked is an error, not a tokens/s four times too high."""
    import re

    import numpy as np

    from benchmarks.engines.counted import decoded

    spec = MeasureSpec.of("onnxruntime", "/fake/artifact", "batch", BenchmarkSettings(), size=4)
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 1, 32))
    for logits, expected in ((one, "decoded 1 sequence(s) x 1 token(s), 1 of them distinct"),
                             (np.repeat(one, 4, axis=0), "decoded 4 sequence(s) x 1 token(s), 1 of them distinct")):
        monkeypatch.setattr(engines, "run_child", lambda *a, counted=decoded(logits): {"ms_median": 10.0,
                                                                                        "decoded": counted})
        with pytest.raises(PipelineError, match=re.escape(f"{expected}, where the measurement asks for 4 x 1")):
            measure(spec)
    monkeypatch.setattr(engines, "run_child", lambda *a: {"ms_median": 10.0,
                                                          "decoded": decoded(rng.standard_normal((4, 1, 32)))})
    assert measure(spec)["tokens_per_s"] == pytest.approx(400.0)


def test_deepsparse_times_again_until_a_cell_rests_on_three_steps(monkeypatch, tmp_path):
    """DeepSparse's benchmark times whole seconds; a step slower than a third of them (a slow or loaded machine) is
    timed again for long enough to give MIN_STEPS steps, as the other runners' loop guarantees."""
    import deepsparse.benchmark.benchmark_model as bm

    from benchmarks.engines import MeasureSpec
    from benchmarks.engines import deepsparse_runner
    from benchmarks.engines.timing import MIN_STEPS

    (tmp_path / "deepsparse").mkdir()
    (tmp_path / "deepsparse" / "model.onnx").write_bytes(b"")
    calls = []

    def fake(path, time, **kw):  # 800 ms a step: one second holds one step
        calls.append(time)
        return {"benchmark_result": {"median": 800.0, "mean": 800.0, "iterations": max(1, int(time / 0.8))},
                "num_cores": 2}

    monkeypatch.setattr(bm, "benchmark_model", fake)
    monkeypatch.setattr(deepsparse_runner, "machine", lambda: {})
    spec = MeasureSpec("deepsparse", str(tmp_path), "decode", 64, 16, 2, 0.5, 1.0)
    got = deepsparse_runner.measure(spec)
    assert calls == [1, 4] and got["iterations"] >= MIN_STEPS
