"""Every bad input we know of, through the real `pipeline` CLI in a child process.

Each must end with: a non-zero exit; exactly one `error: <problem> — fix: <fix>` line, the last one on
the terminal; no traceback on the terminal, the full one in the log file; nothing half-written
(no run folder for input refused up front, no temporaries and no changed files otherwise).
"""

import hashlib
import json
import shutil

import pytest

from conftest import run_cli, write_recipe
from export.deepsparse_families import ARCHITECTURES

COVERED = ", ".join(sorted(ARCHITECTURES))

#: case -> (recipe changes, text the error line must contain)
RECIPES = {
    "unknown-method": ({"prune__method": "obs"}, "prune.method"),
    "sparsity-too-big": ({"prune__sparsity": 1.5}, "outside (0, 1)"),
    "n-not-below-m": ({"prune__sparsity": "4:4"}, "N < M"),
    "m-does-not-divide": ({"prune__sparsity": "3:7"}, "not a multiple of 7"),
    "unknown-key": ({"prune__sparsityy": 0.5}, "prune.sparsityy: unknown key"),
    "allocation-with-nm": ({"prune__allocation": "owl"}, "needs an unstructured sparsity, not the N:M pattern 2:4"),
    "allocation-band-outside": ({"prune__allocation": "sensitivity", "prune__sparsity": 0.9,
                                 "prune__sensitivity_band": 0.15}, "outside (0, 1)"),
    "unknown-allocation": ({"prune__allocation": "layerwise", "prune__sparsity": 0.5}, "prune.allocation"),
    "unknown-section": ({"quantise__enabled": True}, "quantise: unknown key"),
    "file-dataset-without-path": ({"calibration__path": None}, "dataset 'file' needs path"),
    "missing-model": ({"model__source": "/nonexistent/model/folder"}, "does not exist"),
    "unreachable-hub-id": ({"model__source": "no-such-org/no-such-model-xyz"}, "cannot load model"),
    "missing-gguf-file": ({"model__gguf_file": "nope.gguf"}, "model.gguf_file 'nope.gguf' not found"),
    "pickled-weights": ({"model__source": "PICKLED"}, "holds only pickled weights"),
    "non-glu-with-dass": ({"model__source": "TINY_OPT"}, "needs a GLU MLP"),
    "empty-calibration": ({"calibration__path": "EMPTY"}, "empty"),
    "short-calibration": ({"calibration__path": "SHORT"}, "not more than seq_len=32"),
    "evaluation-shorter-than-context": ({"evaluation__path": "SHORT", "evaluation__context_length": 64},
                                        "fewer than context_length=64"),
    "not-enough-ram": ({"calibration__num_samples": 10_000_000, "calibration__seq_len": 4096},
                       "stage prune needs about"),
    "benchmark-without-export": ({"benchmark__enabled": True}, "benchmark measures the exported artifact"),
    "benchmark-longer-than-export": ({"export__enabled": True, "export__max_sequence_length": 64,
                                      "benchmark__enabled": True, "benchmark__sequence_length": 128},
                                     "exceeds export.max_sequence_length"),
    "benchmark-prefill-beyond-context": ({"export__enabled": True, "export__max_sequence_length": 64,
                                          "benchmark__enabled": True, "benchmark__sequence_length": 64,
                                          "benchmark__prefill_lengths": [16, 64]},
                                         "prefill length 64 is not below sequence_length 64"),
    "benchmark-compare-missing": ({"export__enabled": True, "benchmark__enabled": True,
                                   "benchmark__compare": ["/nonexistent/run"]},
                                  "benchmark.compare: /nonexistent/run holds no artifact"),
    "benchmark-too-many-threads": ({"export__enabled": True, "benchmark__enabled": True, "benchmark__threads": 4096},
                                   "benchmark threads=4096 but this machine has"),
    "quantize-before-export": ({"quantize__enabled": True}, "quantize works on the exported ONNX artifact"),
    "quantize-scheme-deepsparse-cannot-run": ({"export__enabled": True, "quantize__enabled": True,
                                               "quantize__scheme": "w4a16"}, "'w4a16' cannot run in DeepSparse"),
    "missing-shard": ({"model__source": "NO_SHARD"}, "model-00002-of-00002.safetensors is missing"),
    "truncated-shard": ({"model__source": "TRUNCATED"}, "model-00002-of-00002.safetensors is truncated or corrupt"),
    "shard-shape-disagrees-with-config": ({"model__source": "WRONG_SHAPE"},
                                          "model.layers.0.mlp.gate_proj.weight has shape [128, 64] but config.json "
                                          "implies [96, 64]"),
    "deepsparse-uncovered-architecture": ({"model__source": "TINY_OPT", "prune__method": "wanda",
                                           "export__enabled": True}, "DeepSparse export covers"),
    "deepsparse-uncovered-family-before-weights": ({"model__source": "OLMO2_CONFIG_ONLY", "export__enabled": True},
                                                   f"covers {COVERED}, not 'olmo2' — fix: "
                                                   "export for ONNX Runtime only (export.engines: [onnxruntime])"),
    "deepsparse-context-beyond-sliding-window": ({"model__source": "GEMMA3_WINDOW_64", "export__enabled": True},
                                                 "gemma3_text attends within a sliding window of 64 tokens and the "
                                                 "DeepSparse graph has no window, so its context (256 tokens) must not "
                                                 "exceed 64 — fix: set export.max_sequence_length to at most 64"),
    "accuracy-unknown-task": ({"accuracy__enabled": True, "accuracy__tasks": ["hellaswagg"]},
                              "unknown lm-eval task hellaswagg (hellaswagg: did you mean hellaswag"),
    "accuracy-task-data-not-offline": ({"accuracy__enabled": True, "accuracy__tasks": ["absent_data"],
                                        "accuracy__include_path": ["TASKS"]},
                                       "accuracy task absent_data: its data is not available offline"),
    "accuracy-limit-neither-count-nor-fraction": ({"accuracy__enabled": True, "accuracy__limit": 2.5},
                                                  "limit 2.5 is neither a count nor a fraction below 1"),
}


def assert_one_clear_line(proc, expected, log_dir):
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr
    assert expected in errors[0] and " — fix: " in errors[0], errors[0]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    logs = sorted(log_dir.glob("pipeline-*.log"))
    assert logs, "every invocation writes a log file"
    text = logs[-1].read_text()
    assert "Traceback (most recent call last)" in text and expected in text, "the full trace goes to the log file"
    assert f"full log: {logs[-1]}" in errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def bad_workspace(workspace):
    from conftest import tiny_model, tiny_tokenizer

    folder = workspace / "pickled"
    tiny_model("llama").save_pretrained(folder, safe_serialization=False)
    tiny_tokenizer().save_pretrained(folder)
    for name in ("no-shard", "truncated", "wrong-shape"):  # sharded checkpoints, damaged three ways
        folder = workspace / name
        tiny_model("llama").save_pretrained(folder, safe_serialization=True, max_shard_size="200KB")
        tiny_tokenizer().save_pretrained(folder)
    (workspace / "no-shard" / "model-00002-of-00002.safetensors").unlink()
    shard = workspace / "truncated" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    config = json.loads((workspace / "wrong-shape" / "config.json").read_text())
    (workspace / "wrong-shape" / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    config_only(workspace / "olmo2-config-only", "olmo2")
    config_only(workspace / "gemma3-window-64", "gemma3", sliding_window=64)
    (workspace / "tasks").mkdir(exist_ok=True)  # an lm-eval task whose dataset is in no cache
    (workspace / "tasks" / "absent.yaml").write_text(
        "task: absent_data\ndataset_path: nobody-here/no-such-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_target: 0\ndoc_to_choice: ['a', 'b']\n")
    return workspace


def config_only(folder, family: str, **extra):
    """A config.json of a tiny ``family`` model and nothing else: no weights, no tokenizer."""
    from transformers import Gemma3TextConfig, Olmo2Config

    kind = {"olmo2": Olmo2Config, "gemma3": Gemma3TextConfig}[family]
    folder.mkdir(exist_ok=True)
    kind(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, head_dim=16, max_position_embeddings=256, **extra).to_json_file(folder / "config.json")
    return folder


@pytest.mark.parametrize("case", list(RECIPES))
def test_bad_recipe(bad_workspace, case, tmp_path):
    root = bad_workspace
    changes, expected = RECIPES[case]
    subst = {"TINY_OPT": root / "tiny-opt", "EMPTY": root / "empty.txt", "SHORT": root / "short.txt",
             "PICKLED": root / "pickled", "NO_SHARD": root / "no-shard", "TRUNCATED": root / "truncated",
             "WRONG_SHAPE": root / "wrong-shape", "OLMO2_CONFIG_ONLY": root / "olmo2-config-only",
             "GEMMA3_WINDOW_64": root / "gemma3-window-64",
             "TASKS": root / "tasks"}
    changes = {k: str(subst[v]) if isinstance(v, str) and v in subst else
               [str(subst.get(x, x)) for x in v] if isinstance(v, list) else v for k, v in changes.items()}
    path = write_recipe(root, case, **changes)
    proc = run_cli("run", str(path), cwd=root, log_dir=tmp_path / "logs")
    assert_one_clear_line(proc, expected, tmp_path / "logs")
    assert not (root / "runs" / case).exists(), "nothing may be written for bad input"


def test_uncovered_family_refused_before_any_weights_load(bad_workspace, tmp_path):
    """The DeepSparse family check reads config.json alone: the folder has no weights (nor tokenizer), and the
    refusal is still the family's, not a load error; no model load was logged, no calibration ran."""
    folder = bad_workspace / "olmo2-config-only"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    path = write_recipe(bad_workspace, "uncovered-family", model__source=str(folder), export__enabled=True)
    proc = run_cli("run", str(path), cwd=bad_workspace, log_dir=tmp_path / "logs")
    line = assert_one_clear_line(proc, f"the DeepSparse export covers {COVERED}, not 'olmo2'",
                                 tmp_path / "logs")
    assert "export.engines: [onnxruntime]" in line
    log = sorted((tmp_path / "logs").glob("pipeline-*.log"))[-1].read_text()
    assert "loading model" not in log and "calibration:" not in log
    assert not (bad_workspace / "runs" / "uncovered-family").exists()
    # ONNX Runtime only: the same folder gets past the family check to the model load, which refuses it for
    # having no weights; so the family refusal above came first
    path = write_recipe(bad_workspace, "uncovered-family-ort", model__source=str(folder), export__enabled=True,
                        export__engines=["onnxruntime"])
    proc = run_cli("run", str(path), cwd=bad_workspace, log_dir=tmp_path / "logs-ort")
    assert proc.returncode != 0 and "DeepSparse export covers" not in proc.stderr
    assert f"model folder {folder} has no weights" in proc.stderr


@pytest.mark.parametrize("text, expected", [
    (None, "does not exist"),
    ("model: [unclosed", "is not valid YAML"),
    ("- a list\n- not a mapping\n", "is not a YAML mapping"),
    ("name: x\n", "model: required key is missing"),
])
def test_bad_recipe_file(workspace, tmp_path, text, expected):
    path = tmp_path / "recipe.yaml"
    if text is not None:
        path.write_text(text)
    for command in ("run", "validate"):
        proc = run_cli(command, str(path), cwd=workspace, log_dir=tmp_path / "logs")
        assert_one_clear_line(proc, expected, tmp_path / "logs")


def test_from_a_stage_the_recipe_does_not_have(workspace, tmp_path):
    path = write_recipe(workspace, "bad-from")
    proc = run_cli("run", str(path), "--from", "export", cwd=workspace, log_dir=tmp_path / "logs")
    assert_one_clear_line(proc, "--from export: this recipe has no such stage", tmp_path / "logs")
    assert not (workspace / "runs" / "bad-from").exists()


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "pipeline.log"}


def test_a_corrupt_stage_output_on_resume(workspace, tmp_path):
    """A finished stage's JSON altered to the same size: the rerun names the file and changes nothing."""
    path = write_recipe(workspace, "bad-resume")
    assert run_cli("run", str(path), cwd=workspace, log_dir=tmp_path / "logs").returncode == 0
    run = workspace / "runs" / "bad-resume"
    target = run / "perplexity.json"
    target.write_bytes(b"#" * target.stat().st_size)
    before = digest(run)
    proc = run_cli("run", str(path), cwd=workspace, log_dir=tmp_path / "logs")
    assert_one_clear_line(proc, "perplexity.json is not valid JSON", tmp_path / "logs")
    assert digest(run) == before
    proc = run_cli("run", str(path), "--from", "evaluate", cwd=workspace, log_dir=tmp_path / "logs2")
    assert proc.returncode == 0, proc.stderr


def test_report_and_benchmark_refuse_folders_that_are_not_theirs(workspace, tmp_path):
    proc = run_cli("report", str(tmp_path), cwd=workspace, log_dir=tmp_path / "logs")
    assert_one_clear_line(proc, "holds neither summary.json nor a benchmark's results.json", tmp_path / "logs")
    proc = run_cli("benchmark", str(tmp_path), "--out", str(tmp_path / "out"), cwd=workspace, log_dir=tmp_path / "l2")
    assert_one_clear_line(proc, "holds no artifact", tmp_path / "l2")
    assert not (tmp_path / "out").exists()


def rewrite_manifest(folder):
    """Make the manifest agree with altered files, so that only the engine can object."""
    from export.checks import sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    for rel in manifest["files"]:
        manifest["files"][rel] = {"bytes": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, expected", [
    ("no-manifest", "has no manifest.json, so it is not an artifact of this tool"),
    ("missing-tokenizer", "the artifact is missing deepsparse/tokenizer.json"),
    ("truncated-data", "(truncated or altered)"),
    ("corrupt-onnx", "is not a readable ONNX file"),
    ("graph-the-engine-rejects", "in stage generate"),
])
def test_bad_artifact_for_generate(tiny_artifact, tmp_path, damage, expected):
    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact[1], folder)
    ds = folder / "deepsparse"
    if damage == "no-manifest":
        (folder / "manifest.json").unlink()
    elif damage == "missing-tokenizer":
        (ds / "tokenizer.json").unlink()
    elif damage == "truncated-data":
        (ds / "model.onnx_data").write_bytes((ds / "model.onnx_data").read_bytes()[:100])
    elif damage == "corrupt-onnx":
        (ds / "model.onnx").write_bytes(b"\xff" * (ds / "model.onnx").stat().st_size)
    else:  # Optimum's standard graph (position_ids, KV heads) where DeepSparse expects its own
        for name in ("model.onnx", "model.onnx_data"):
            shutil.copy(folder / "onnxruntime" / name, ds / name)
        rewrite_manifest(folder)
    before = digest(folder)
    proc = run_cli("generate", str(folder), "Hello", "--engine", "deepsparse", "--max-new-tokens", "4",
                   cwd=tmp_path, log_dir=tmp_path / "logs")
    line = assert_one_clear_line(proc, expected, tmp_path / "logs")
    if damage == "graph-the-engine-rejects":
        assert f"deepsparse on {ds}" in line
    assert digest(folder) == before, "a failed load must not alter the artifact"


def test_a_folder_without_weights_or_tokenizer_is_named(tmp_path):
    """A config-only folder, or weights without a tokenizer, is refused by name (it used to end in an
    AttributeError from inside transformers' tokenizer conversion)."""
    from conftest import tiny_model

    from pipeline.common.errors import PipelineError
    from pipeline.core.models import load_model, load_tokenizer

    folder = tmp_path / "model"
    tiny_model().config.save_pretrained(folder)
    with pytest.raises(PipelineError, match=r"has no weights .* fix: put the checkpoint's weight files"):
        load_model(str(folder), dtype="float32")
    tiny_model().save_pretrained(folder, safe_serialization=True)
    for load in (lambda: load_model(str(folder), dtype="float32"), lambda: load_tokenizer(str(folder))):
        with pytest.raises(PipelineError, match="has no tokenizer .* fix: copy the tokenizer files"):
            load()


def test_prefill_or_context_beyond_the_exported_graph_is_refused_up_front(workspace, tiny_artifact, tmp_path):
    """A prefill length or a context longer than the graph holds: ``pipeline validate`` refuses the recipe, and
    ``pipeline benchmark`` / a recipe comparing an existing artifact refuse by the artifact's manifest (its DeepSparse
    graph holds 128 positions), before any engine loads a model and before anything is written."""
    recipe = write_recipe(workspace, "long-prompt", export__enabled=True, export__max_sequence_length=128,
                          benchmark__enabled=True, benchmark__sequence_length=128, benchmark__prefill_lengths=[32, 512])
    proc = run_cli("validate", str(recipe), cwd=workspace, log_dir=tmp_path / "logs")
    line = assert_one_clear_line(proc, "benchmark: prefill length 512 is not below sequence_length 128",
                                 tmp_path / "logs")
    assert "fix: raise sequence_length to 513 or more (in a recipe, export.max_sequence_length with it)" in line
    recipe = write_recipe(workspace, "long-context", export__enabled=True, export__max_sequence_length=128,
                          benchmark__enabled=True, benchmark__sequence_length=600, benchmark__prefill_lengths=[32, 512])
    proc = run_cli("validate", str(recipe), cwd=workspace, log_dir=tmp_path / "logs-context")
    line = assert_one_clear_line(proc, "benchmark.sequence_length 600 exceeds export.max_sequence_length 128",
                                 tmp_path / "logs-context")
    assert "raise export.max_sequence_length to 600 or more" in line

    folder = tiny_artifact[1]
    out = tmp_path / "out"
    proc = run_cli("benchmark", str(folder), "--out", str(out), "--engines", "deepsparse", "--sequence-length", "256",
                   "--prefill-lengths", "32", "200", cwd=tmp_path, log_dir=tmp_path / "logs-benchmark")
    line = assert_one_clear_line(proc, "its deepsparse graph, which deepsparse runs, holds at most 128 tokens, but the "
                                 "benchmark asks for sequence_length 256 (prefill lengths up to 200)",
                                 tmp_path / "logs-benchmark")
    assert "fix: lower --sequence-length to at most 128" in line
    assert not out.exists()
    log = sorted((tmp_path / "logs-benchmark").glob("pipeline-*.log"))[-1].read_text()
    assert "round 1" not in log
    proc = run_cli("benchmark", str(folder), "--out", str(out), "--sequence-length", "64", "--prefill-lengths", "32",
                   "64", cwd=tmp_path, log_dir=tmp_path / "logs-settings")
    line = assert_one_clear_line(proc, "bad benchmark settings: --settings: prefill length 64 is not below "
                                 "sequence_length 64", tmp_path / "logs-settings")
    assert "fix: raise --sequence-length to 65 or more" in line

    recipe = write_recipe(workspace, "compare-short", export__enabled=True, export__max_sequence_length=256,
                          benchmark__enabled=True, benchmark__sequence_length=200, benchmark__engines=["deepsparse"],
                          benchmark__prefill_lengths=[32, 128], benchmark__compare=[str(folder)])
    for command in ("validate", "run"):  # validate reads the compared artifact's manifest as the run's preflight does
        proc = run_cli(command, str(recipe), cwd=workspace, log_dir=tmp_path / f"logs-compare-{command}")
        line = assert_one_clear_line(proc, f"artifact {folder.parent.name} ({folder}): its deepsparse graph, which "
                                     "deepsparse runs, holds at most 128 tokens", tmp_path / f"logs-compare-{command}")
        assert "fix: lower benchmark.sequence_length to at most 128" in line
        assert not (workspace / "runs" / "compare-short").exists()


def test_each_graph_has_its_own_limit():
    """DeepSparse's graph holds what its manifest says; the ONNX Runtime graph computes positions as it goes, so the
    model's max_position_embeddings bounds it: a context of 200 fits ONNX Runtime and not DeepSparse."""
    from benchmarks.graph_limits import check_lengths, graph_limits
    from benchmarks.settings import BenchmarkSettings
    from pipeline.common.errors import PipelineError

    limits = graph_limits({"engines": {"deepsparse": {"max_sequence_length": 128}, "onnxruntime": {}}},
                          {"max_position_embeddings": 256})
    assert limits == {"deepsparse": 128, "onnxruntime": 256}
    art = [{"key": "a", "path": "/a", "max_sequence_length": limits}]
    check_lengths(art, BenchmarkSettings(engines=["onnxruntime", "pytorch"], sequence_length=200))
    with pytest.raises(PipelineError, match="its deepsparse graph, which deepsparse runs, holds at most 128"):
        check_lengths(art, BenchmarkSettings(engines=["onnxruntime", "deepsparse"], sequence_length=200))
    with pytest.raises(PipelineError, match="its onnxruntime graph, which openvino runs, holds at most 256"):
        check_lengths(art, BenchmarkSettings(engines=["openvino"], sequence_length=300))


def test_validate_reads_the_manifest_the_export_writes():
    """benchmarks/artifact_folders.py names the manifest without importing the export layer (onnx, torch)."""
    from benchmarks.artifact_folders import MANIFEST
    from export.artifact import MANIFEST as WRITTEN

    assert MANIFEST == WRITTEN
