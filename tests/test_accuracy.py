"""Task accuracy through lm-evaluation-harness (pipeline/core/accuracy.py, the accuracy stages, export/onnx_accuracy.py).

Offline and on tiny random models: each test builds a small lm-eval task (a YAML file and a local jsonl file) whose
answer key is made from log-likelihoods computed here with plain torch, so the accuracy lm-eval reports is known
in advance; the ONNX Runtime artifact adapter must give the PyTorch model's log-likelihoods request by request.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from conftest import save_checkpoint, tiny_model, tiny_tokenizer
from pipeline.common.errors import PipelineError
from pipeline.core.accuracy import check_task_data, evaluate, task_manager, torch_lm

ALPHABET = "abcdefghij klmnopqrstuvwxyz"


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) with plain torch: lm-eval's split of the whole text's tokens at the context's."""
    ctx = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    cont = whole[len(ctx):]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)[len(ctx) - 1:]
    return float(sum(logprobs[i, t] for i, t in enumerate(cont)))


def write_task(folder, name: str, docs: list[dict]) -> None:
    """An lm-eval multiple-choice task reading ``docs`` from a local jsonl file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{context}}'\ndoc_to_target: label\n"
        "doc_to_choice: choices\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def known_answer_task(model, tokenizer, n: int = 24, right: int = 15, seed: int = 0):
    """``n`` items of 3 choices (every other item of different lengths); the label of the first ``right`` is the choice the model
    scores highest, of the others the one it scores lowest: acc is right / n. acc_norm (log-likelihood per
    character of the choice, lm-eval's rule) is computed from the same scores. Returns (docs, acc, acc_norm)."""
    rng = random.Random(seed)
    docs, hits_norm = [], 0
    for i in range(n):
        context = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(6, 12))).strip() or "x"
        lengths = rng.sample(range(1, 6), 3) if i % 2 else [3, 3, 3]  # equal lengths: the model's preference decides
        choices = ["".join(rng.choice(ALPHABET.strip()) for _ in range(length)) for length in lengths]
        lls = [continuation_logprob(model, tokenizer, context, " " + c) for c in choices]  # lm-eval's " " delimiter
        label = max(range(3), key=lls.__getitem__) if i < right else min(range(3), key=lls.__getitem__)
        hits_norm += max(range(3), key=lambda k: lls[k] / len(choices[k])) == label
        docs.append({"context": context, "choices": choices, "label": label})
    return docs, right / n, hits_norm / n


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) * n / (n - 1) / n)


@pytest.fixture(scope="module")
def dense():
    model = tiny_model("llama")
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.bos_token_id = 1, 1
    return model, tiny_tokenizer()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, dense):
    folder = tmp_path_factory.mktemp("tasks")
    docs, acc, acc_norm = known_answer_task(*dense)
    write_task(folder, "known_answers", docs)
    return folder, acc, acc_norm


def test_lm_eval_reports_the_accuracy_the_task_was_built_to_give(dense, task_dir):
    folder, acc, acc_norm = task_dir
    assert 0 < acc < 1 and acc_norm != 1  # the task is not trivially all right
    manager = task_manager(["known_answers"], [str(folder)])
    assert check_task_data(manager, ["known_answers"], True, None) == {"known_answers": 24}
    model, tokenizer = dense
    result = evaluate(torch_lm(model, tokenizer, batch_size=4, max_length=256), manager, ["known_answers"],
                      num_fewshot=0, limit=None, offline=True, data_dir=None)["known_answers"]
    assert result["acc"] == pytest.approx(acc) and result["acc_norm"] == pytest.approx(acc_norm)
    assert result["acc_stderr"] == pytest.approx(stderr(acc, 24))
    assert result["items"] == 24 and result["items_in_task"] == 24
    limited = evaluate(torch_lm(model, tokenizer, batch_size=4, max_length=256), manager, ["known_answers"], 0, 10,
                       True, None)["known_answers"]
    assert limited["items"] == 10 and limited["acc"] == pytest.approx(1.0)  # the first 15 items are the right ones


def instances(docs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc=d, arguments=(d["context"], " " + c), idx=k)
            for d in docs for k, c in enumerate(d["choices"])]


def test_the_artifact_adapter_scores_what_the_pytorch_model_scores(tiny_artifact):
    """Same requests, same tokens: the ONNX Runtime graph's log-likelihood of every continuation equals the PyTorch
    model's (HFLM) within 1e-4, and so do the greedy flags, hence the accuracy."""
    from export.onnx_accuracy import OnnxLM

    model, folder, _ = tiny_artifact
    docs, _, _ = known_answer_task(model, tiny_tokenizer(), n=10, right=5, seed=3)
    requests = instances(docs)
    torch_scores = torch_lm(model, tiny_tokenizer(), batch_size=4, max_length=128).loglikelihood(requests)
    onnx = OnnxLM(folder, "onnxruntime", max_length=128)
    onnx_scores = onnx.loglikelihood(requests)
    assert len(onnx_scores) == len(torch_scores) == 30
    for (a, greedy_a), (b, greedy_b) in zip(onnx_scores, torch_scores):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    # the graph's own log-likelihood, against plain torch on the same model (not HFLM's batching and padding)
    assert onnx_scores[0][0] == pytest.approx(continuation_logprob(model, tiny_tokenizer(), docs[0]["context"],
                                                                   " " + docs[0]["choices"][0]), abs=1e-4)
    with pytest.raises(NotImplementedError, match="does not generate"):
        onnx.generate_until([])


def test_the_artifact_adapter_cuts_long_inputs_as_hflm_does(tiny_artifact):
    from export.onnx_accuracy import OnnxLM

    model, folder, _ = tiny_artifact
    docs = [{"context": "abcdefghij" * 4, "choices": ["klm", "no"], "label": 0}]
    requests = instances(docs)
    torch_scores = torch_lm(model, tiny_tokenizer(), batch_size=2, max_length=16).loglikelihood(requests)
    onnx_scores = OnnxLM(folder, "onnxruntime", max_length=16).loglikelihood(requests)
    assert [round(s, 4) for s, _ in onnx_scores] == [round(s, 4) for s, _ in torch_scores]
    full = OnnxLM(folder, "onnxruntime", max_length=128).loglikelihood(requests)
    assert abs(full[0][0] - onnx_scores[0][0]) > 1e-3  # the cut changed the score: 16 tokens were really all it saw


def test_an_unknown_task_is_one_error_with_near_names(tmp_path):
    write_task(tmp_path, "known_answers", [{"context": "a", "choices": ["b", "c"], "label": 0}])
    with pytest.raises(PipelineError, match=r"unknown lm-eval task known_answer \(known_answer: did you mean "
                                            r"known_answers") as err:
        task_manager(["known_answer"], [str(tmp_path)])
    assert "accuracy.include_path" in err.value.fix


def test_a_task_without_its_data_offline_names_the_task_and_the_way_to_get_it(tmp_path):
    (tmp_path / "absent.yaml").write_text(
        "task: absent_data\ndataset_path: nobody-here/no-such-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_target: 0\ndoc_to_choice: ['a', 'b']\n")
    manager = task_manager(["absent_data"], [str(tmp_path)])
    with pytest.raises(PipelineError, match="accuracy task absent_data: its data is not available offline in the "
                                            r"datasets cache .*no-such-dataset") as err:
        check_task_data(manager, ["absent_data"], offline=True, data_dir=str(tmp_path / "cache"))
    assert "accuracy.data_dir" in err.value.fix and "lm-eval run --model dummy --tasks absent_data" in err.value.fix


def test_a_run_measures_dense_pruned_and_artifact_on_the_same_items(tmp_path, dense, task_dir):
    """The stages: dense (accuracy_dense), pruned (accuracy), the exported ONNX Runtime graph (accuracy_artifact);
    the dense figure is the one the task was built for, the pruned one that of the model in RUN/pruned, the
    artifact's the pruned one's; the report's table shows all three; a changed accuracy section reruns only them."""
    from transformers import AutoModelForCausalLM

    from pipeline.recipe import parse_recipe
    from pipeline.runner import run_recipe

    folder, acc, _ = task_dir
    model, tokenizer = dense
    save_checkpoint(tmp_path / "tiny", model)
    (tmp_path / "text.txt").write_text(" ".join(f"word{i % 37} and more text number {i}." for i in range(2000)))
    data = {"name": "acc", "output_dir": str(tmp_path / "run"),
            "model": {"source": str(tmp_path / "tiny"), "dtype": "float32"},
            "calibration": {"dataset": "file", "path": str(tmp_path / "text.txt"), "num_samples": 2, "seq_len": 16},
            "prune": {"method": "magnitude", "sparsity": 0.5},
            "evaluation": {"enabled": False},
            "export": {"enabled": True, "engines": ["onnxruntime"], "smoke_test": False, "max_sequence_length": 64},
            "accuracy": {"enabled": True, "tasks": ["known_answers"], "include_path": [str(folder)], "batch_size": 4}}
    summary = run_recipe(parse_recipe(data), progress=False)
    got = summary["accuracy"]
    assert got["dense"]["tasks"]["known_answers"]["acc"] == pytest.approx(acc)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "pruned").eval()
    docs = [json.loads(line) for line in (folder / "known_answers.jsonl").read_text().splitlines()]
    picks = {name: [max(range(3), key=lambda k: continuation_logprob(m, tokenizer, d["context"], " " + d["choices"][k]))
                    for d in docs] for name, m in (("dense", model), ("pruned", pruned))}
    assert picks["dense"] != picks["pruned"]  # pruning changed answers: the two columns measure two models
    expected = sum(pick == d["label"] for pick, d in zip(picks["pruned"], docs)) / len(docs)
    assert got["pruned"]["tasks"]["known_answers"]["acc"] == pytest.approx(expected)
    for metric in ("acc", "acc_norm"):
        assert got["artifact"]["tasks"]["known_answers"][metric] == pytest.approx(got["pruned"]["tasks"]["known_answers"][metric])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Task accuracy (lm-evaluation-harness 0.4.13, 0-shot)" in report
    assert "| known_answers | 24 | acc | " in report and "magnitude 0.5" in report and "ONNX Runtime graph" in report
    assert (f"- task accuracy (acc on known_answers, 0-shot): dense {acc:.4f} → pruned "
            f"{got['pruned']['tasks']['known_answers']['acc']:.4f} → artifact ") in report

    data["accuracy"]["limit"] = 8
    again = run_recipe(parse_recipe(data), progress=False)
    assert {k for k, v in again["stages"].items() if v.startswith("ran")} == {"accuracy_dense", "accuracy",
                                                                            "accuracy_artifact"}
    assert again["accuracy"]["dense"]["tasks"]["known_answers"]["items"] == 8


def test_an_unknown_task_stops_the_run_before_any_model_loads(tmp_path):
    from pipeline.recipe import parse_recipe
    from pipeline.runner import run_recipe

    save_checkpoint(tmp_path / "tiny", tiny_model("llama"))
    (tmp_path / "text.txt").write_text(" ".join(f"word{i} and more." for i in range(2000)))
    recipe = parse_recipe({"name": "bad", "output_dir": str(tmp_path / "run"),
                           "model": {"source": str(tmp_path / "tiny"), "dtype": "float32"},
                           "calibration": {"dataset": "file", "path": str(tmp_path / "text.txt"), "num_samples": 2,
                                           "seq_len": 16},
                           "prune": {"method": "magnitude"}, "evaluation": {"enabled": False},
                           "accuracy": {"enabled": True, "tasks": ["arc_easy", "hellaswagg"]}})
    with pytest.raises(PipelineError, match="unknown lm-eval task hellaswagg .*did you mean hellaswag"):
        run_recipe(recipe, progress=False)
    assert not (tmp_path / "run" / "pruned").exists() and not (tmp_path / "run" / ".stages").exists()


def test_the_embedded_task_is_built_from_held_out_prose():
    from pipeline.core.tasks import pydoc_endings

    items = pydoc_endings.items()
    assert len(items) > 100
    assert all(len(d["endings"]) == 4 and len(set(d["endings"])) == 4 for d in items)
    held_out = " ".join(pydoc_endings.held_out_text().split())
    assert all(d["context"] + " " + d["endings"][d["label"]] in held_out for d in items)
    labels = [d["label"] for d in items]
    assert min(labels.count(k) for k in range(4)) > len(items) / 8  # the right answer is not always in one place


def hub_dataset_cache(root, repo: str, rows: list[dict]):
    """A datasets cache folder holding ``repo`` as a machine that downloaded it would (what accuracy.data_dir points at):
    the builder's Arrow file under ``namespace___name/default/0.0.0/HASH``, named after the dataset."""
    import shutil

    import datasets

    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    builder = datasets.load_dataset_builder("json", data_files={"test": str(root / "rows.jsonl")},
                                            cache_dir=str(root / "build"))
    builder.download_and_prepare()
    built = next((root / "build" / "json").glob("default-*/0.0.0/*/"))
    namespace, name = repo.split("/")
    target = root / "cache" / f"{namespace}___{name}" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target)
    (target / "json-test.arrow").rename(target / f"{name}-test.arrow")
    return root / "cache"


def test_task_data_comes_from_the_data_dir_offline(tmp_path, dense):
    """A hub dataset copied into a cache folder: found there with the hub unreachable, and only there."""
    cache = hub_dataset_cache(tmp_path, "someorg/tiny_choices",
                              [{"context": f"abc{i}", "choices": ["d", "ef"], "label": i % 2} for i in range(6)])
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub.yaml").write_text(
        "task: hub_choices\ndataset_path: someorg/tiny_choices\noutput_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: '{{context}}'\ndoc_to_target: label\ndoc_to_choice: choices\n")
    manager = task_manager(["hub_choices"], [str(tmp_path / "tasks")])
    assert check_task_data(manager, ["hub_choices"], offline=True, data_dir=str(cache)) == {"hub_choices": 6}
    model, tokenizer = dense
    result = evaluate(torch_lm(model, tokenizer, 2, 256), manager, ["hub_choices"], 0, None, True, str(cache))
    assert result["hub_choices"]["items"] == 6
    with pytest.raises(PipelineError, match="hub_choices: its data is not available offline"):
        check_task_data(manager, ["hub_choices"], offline=True, data_dir=str(tmp_path / "empty-cache"))


def test_the_code_task_is_built_from_held_out_standard_library_code():
    from pipeline.core.data import stdlib_files
    from pipeline.core.tasks import stdlib_lines

    items = stdlib_lines.items()
    assert len(items) == stdlib_lines.MAX_ITEMS  # a standard error near 0.015, small enough to tell methods apart
    held_out = "\n\n".join(stdlib_lines.held_out_files())
    files = stdlib_files()
    first_half = "\n\n".join(files)[: len("\n\n".join(files)) // 2]
    for d in items:
        assert len(d["endings"]) == 4 and len(set(d["endings"])) == 4
        line = d["context"] + d["endings"][d["label"]]
        assert line in held_out and line not in first_half
        last = line.splitlines()[-1].strip()
        assert not last.startswith(("#", '"', "'")), "code, not a comment or a docstring"
        lengths = [len(e) for e in d["endings"]]
        assert max(lengths) <= 1.5 * min(lengths), "the length of an ending gives nothing away"
    labels = [d["label"] for d in items]
    assert min(labels.count(k) for k in range(4)) > len(items) / 5
