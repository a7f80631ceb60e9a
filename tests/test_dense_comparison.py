"""Dense beside pruned in every run: with ``benchmark.compare: [dense]`` (the default) a run exports the unpruned
model to RUN/artifact-dense, benchmarks it interleaved with the pruned artifact, and report.md opens with the
dense -> pruned summary computed from those measurements; ``compare: []`` makes no dense artifact. The dense
export resumes like every stage and depends on the model and export settings only (real engines, tiny model)."""

import json
import os
import shutil

import pytest

from conftest import save_checkpoint, tiny_model
from export.artifact import disk_bytes
from pipeline.recipe import parse_recipe
from pipeline.runner import run_recipe

TEXT = " ".join(f"word{i % 37} and more text number {i}." for i in range(2000))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    save_checkpoint(root / "tiny", tiny_model("llama"))
    (root / "text.txt").write_text(TEXT)
    return root


def recipe(root, name, sparsity=0.5, **benchmark):
    return parse_recipe({
        "name": name, "output_dir": str(root / name),
        "model": {"source": str(root / "tiny"), "dtype": "float32"},
        "calibration": {"dataset": "file", "path": str(root / "text.txt"), "num_samples": 2, "seq_len": 16},
        "prune": {"method": "magnitude", "sparsity": sparsity, "scope": "attention+mlp"},
        "evaluation": {"dataset": "file", "path": str(root / "text.txt"), "context_length": 32, "max_windows": 2},
        "export": {"enabled": True, "engines": ["onnxruntime"], "max_sequence_length": 64, "smoke_test": False},
        "benchmark": {"enabled": True, "engines": ["onnxruntime"], "modes": ["decode"], "sequence_length": 32,
                      "warmup_seconds": 0.1, "seconds": 0.3, "repeats": 2, **benchmark},
    })


def test_dense_artifact_is_benchmarked_interleaved_and_summarised_then_resumes(source):
    r = recipe(source, "with-dense")
    run = source / "with-dense"
    first = run_recipe(r, progress=False)
    assert first["stages"]["export_dense"].startswith("ran")
    manifest = json.loads((run / "artifact-dense" / "manifest.json").read_text())
    assert manifest["method"] == "none" and manifest["sparsity"]["overall_decoder_linears"] < 0.01

    results = json.loads((run / "benchmark" / "results.json").read_text())
    assert [(m["round"], m["artifact"]) for m in results["measurements"]] == [
        (1, "with-dense-dense"), (1, "with-dense"), (2, "with-dense-dense"), (2, "with-dense")]
    tps = {(m["artifact"], m["round"]): m["tokens_per_s"] for m in results["measurements"]}
    bench = json.loads((run / "benchmark.json").read_text())
    assert bench["variants"] == {"dense": "with-dense-dense", "pruned": "with-dense"}
    [row] = bench["by_variant"]
    ratios = sorted(tps[("with-dense", r)] / tps[("with-dense-dense", r)] for r in (1, 2))
    assert row["pruned"]["speedup_per_round"]["min"] == pytest.approx(ratios[0])
    assert row["pruned"]["speedup_vs_dense"] == pytest.approx(
        (tps[("with-dense", 1)] + tps[("with-dense", 2)]) / (tps[("with-dense-dense", 1)] + tps[("with-dense-dense", 2)]))

    report = (run / "report.md").read_text()
    block = report.split("## Summary")[1].split("\n## ")[0]
    assert report.index("## Summary") < report.index("## Pruning")  # the report opens with it
    assert f"**{row['pruned']['speedup_vs_dense']:.2f}x**" in block
    assert f"{row['dense']['tokens_per_s']['median']:.2f}" in block
    assert "| engine | mode | dense | pruned |" in block and "perplexity" in block and "artifact size on disk: dense" in block
    assert "tokens_by_artifact.png" in bench["files"]
    measured = disk_bytes(run / "artifact-dense")  # the trade-off table's size and the summary's: the files on disk
    assert {a["key"]: a["bytes"] for a in results["artifacts"]}["with-dense-dense"] == measured
    assert f"dense {measured / 2**20:.1f} MiB" in block

    again = run_recipe(r, progress=False)
    assert again["stages"]["export_dense"] == "skipped (complete)"
    repruned = run_recipe(recipe(source, "with-dense", sparsity=0.25), progress=False)
    assert repruned["stages"]["export_dense"] == "skipped (complete)"  # pruning does not change the dense model
    assert repruned["stages"]["export"].startswith("ran") and repruned["stages"]["benchmark"].startswith("ran")


def test_compare_without_dense_makes_no_dense_artifact(source):
    summary = run_recipe(recipe(source, "alone", compare=[], repeats=1), progress=False)
    assert "export_dense" not in summary["stages"]
    assert not (source / "alone" / "artifact-dense").exists()
    results = json.loads((source / "alone" / "benchmark" / "results.json").read_text())
    assert [a["key"] for a in results["artifacts"]] == ["alone"]
    assert "| engine | mode | pruned |" in (source / "alone" / "report.md").read_text()


def test_the_dense_size_is_measured_on_disk_not_the_manifests_figure(tmp_path):
    """A sweep point copies the dense artifact from an earlier point file by file (pipeline/resume.py:adopt_complete),
    so the two graphs' hard-linked weights file becomes two: the run's summary and report give the copy's measured
    size, not the figure the manifest recorded at export."""
    from pipeline.report import summary_block
    from pipeline.stages import export_dense

    donor = tmp_path / "donor" / export_dense.OUTPUT
    for graph in ("deepsparse", "onnxruntime"):
        (donor / graph).mkdir(parents=True)
        (donor / graph / "model.onnx").write_bytes(b"g" * 1000)
    (donor / "deepsparse" / "model.onnx_data").write_bytes(b"w" * (3 << 20))
    os.link(donor / "deepsparse" / "model.onnx_data", donor / "onnxruntime" / "model.onnx_data")  # shared weights
    files = {p.relative_to(donor).as_posix(): {"bytes": p.stat().st_size} for p in donor.rglob("*") if p.is_file()}
    manifest = {"export_seconds": 1.0, "files": files, "disk_bytes": disk_bytes(donor),
                "sparsity": {"overall_decoder_linears": 0.0},
                "engines": {g: {"logits_max_abs_diff_vs_pytorch": 1e-5} for g in ("deepsparse", "onnxruntime")}}
    (donor / "manifest.json").write_text(json.dumps(manifest))
    copy = tmp_path / "point" / export_dense.OUTPUT
    for p in sorted(donor.rglob("*")):
        if p.is_file():
            (copy / p.relative_to(donor)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, copy / p.relative_to(donor))

    measured = disk_bytes(copy)
    assert measured == disk_bytes(donor) + (3 << 20) > manifest["disk_bytes"] + (3 << 20)  # the weights file twice now
    assert export_dense.summary(None, donor.parent)["export_dense"]["disk_bytes"] == disk_bytes(donor)
    summary = export_dense.summary(None, copy.parent)
    assert summary["export_dense"]["disk_bytes"] == measured
    assert f"artifact size on disk: dense {measured / 2**20:.1f} MiB" in "\n".join(summary_block(summary))
    assert f"{measured / 2**20:.1f} MiB on disk" in export_dense.report(summary)[2]
