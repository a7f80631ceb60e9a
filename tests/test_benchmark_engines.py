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
                          "benchmark": {"enabled": True, "compare": [str(folder.parent)]}})
    assert [a["key"] for a in preflight_benchmark(other)] == [name]
