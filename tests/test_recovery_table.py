"""benchmarks/recovery_table.py: finished runs become one table of method x reconstruction against pattern, each
cell the perplexity's change against dense on the same windows, with the paired noise and the targets."""

import json

from benchmarks.recovery_table import collect, render


def fake_run(folder, method, sparsity, reconstruct, nll_shift, scope="mlp"):
    folder.mkdir(parents=True)
    dense_nll = [1.0, 1.5, 2.0, 2.5]
    pruned_nll = [v + nll_shift for v in dense_nll]
    ppl = lambda nll: {"perplexity": 2.718281828 ** (sum(nll) / len(nll)), "windows": 4, "window_nll": nll}
    (folder / "perplexity_dense.json").write_text(json.dumps(
        {"dataset": "embedded", "dense": ppl(dense_nll), "also": {"stdlib": ppl(dense_nll)}}))
    (folder / "perplexity.json").write_text(json.dumps(
        {"dataset": "embedded", "pruned": ppl(pruned_nll), "also": {"stdlib": ppl([v + 0.01 for v in pruned_nll])}}))
    (folder / "summary.json").write_text(json.dumps(
        {"method": method, "sparsity": sparsity, "scope": scope, "prune_seconds": 100.0,
         "reconstruct": None if reconstruct == "none" else {"mode": reconstruct},
         "sparsity_achieved": {"overall": 0.5}, "resources": {"prune": {"peak_rss_bytes": 8 * 2**30}}}))


def test_cells_targets_and_noise(tmp_path):
    fake_run(tmp_path / "a", "dass", "0.5", "none", 0.5)
    fake_run(tmp_path / "b", "dass_outlier", "0.5", "obs", 0.1)
    fake_run(tmp_path / "c", "wanda", "2:4", "obs", 0.2)
    (tmp_path / "unfinished").mkdir()
    rows = collect([tmp_path])
    assert len(rows) == 3
    text = render(rows, "pipeline sweep ...", "Test CPU")
    assert "| dass_outlier + obs | " in text and "(+11%)" in text  # exp(0.1) - 1
    assert "| 0.5 MLP | +15% | dass_outlier + obs (uniform) | +10.5% (met); stdlib +12% |" in text
    assert "| 2:4 MLP | +35% | not run" in text
    assert "## stdlib" in text and "paired standard error" in text and "pipeline sweep ..." in text


def test_the_calibration_text_block_time_and_a_cost_note_are_shown(tmp_path):
    fake_run(tmp_path / "earlier" / "a", "dass_outlier", "0.5", "obs", 0.3)
    fake_run(tmp_path / "now" / "b", "dass_outlier", "0.5", "obs+block", 0.2)
    summary = json.loads((tmp_path / "now" / "b" / "summary.json").read_text())
    summary["reconstruct"]["block_seconds"] = 42.0
    summary["calibration"] = {"dataset": "stdlib"}
    (tmp_path / "now" / "b" / "summary.json").write_text(json.dumps(summary))
    text = render(collect([tmp_path]), None, "Test CPU", {"earlier": "another CPU instance"})
    assert "| dass_outlier + obs+block, calibrated on stdlib | 0.5 | 100 | 42 | 8.00 |  |" in text
    assert "| dass_outlier + obs | 0.5 | 100 | – | 8.00 | another CPU instance |" in text


def test_a_target_inside_the_noise_is_called_so():
    """Two paired standard errors of the mean loss change that reach across the target: the verdict says the windows
    cannot tell; beyond them it is a plain met / not met."""
    from benchmarks.recovery_table import verdict

    assert verdict({"ratio": 2.92, "paired_standard_error": 0.03}, 3.0).startswith("(met, within the noise: x1.062")
    assert verdict({"ratio": 3.05, "paired_standard_error": 0.03}, 3.0).startswith("(not met, within the noise")
    assert verdict({"ratio": 2.5, "paired_standard_error": 0.03}, 3.0) == "(met)"
    assert verdict({"ratio": 1.25, "paired_standard_error": 0.01}, 1.15) == "(not met)"
    assert verdict({"ratio": 1.10, "paired_standard_error": None}, 1.15) == "(met)"


def test_a_run_with_another_number_of_calibration_windows_says_so(tmp_path):
    """Two runs of one method that differ only in how many calibration windows they saw are two rows, and the one
    that differs from the usual count names its count; the usual ones keep their plain label."""
    for name, windows in (("a", 16), ("b", 16), ("c", 64)):
        fake_run(tmp_path / name, "wanda" if name != "b" else "dass_outlier", "0.5", "obs", 0.2)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary["calibration"] = {"dataset": "embedded", "num_samples": windows}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    text = render(collect([tmp_path]), None, "Test CPU")
    assert "| wanda + obs, 64 calibration windows | " in text
    assert "| wanda + obs | " in text and "| dass_outlier + obs | " in text
    assert "16 calibration windows" not in text


def test_a_run_with_other_block_steps_says_so_and_is_its_own_row(tmp_path):
    for name, steps in (("a", 16), ("b", 32)):
        fake_run(tmp_path / name, "wanda", "0.5", "obs+block", 0.2 if steps == 16 else 0.1)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary["reconstruct"]["block"] = {"steps": steps, "batch_windows": 2}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    text = render(collect([tmp_path]), None, "Test CPU")
    assert "| wanda + obs+block | " in text and "| wanda + obs+block, block 32 steps | " in text
    assert "block 16 steps" not in text


def test_a_run_trained_on_whole_windows_says_so_and_is_its_own_row(tmp_path):
    for name, tokens in (("a", 256), ("b", None)):
        fake_run(tmp_path / name, "wanda", "0.5", "obs+block", 0.2 if tokens else 0.1)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary["reconstruct"]["block"] = {"steps": 32, "batch_windows": 2, "tokens": tokens}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    text = render(collect([tmp_path]), None, "Test CPU")
    assert "| wanda + obs+block, block 32 steps | " in text
    assert "| wanda + obs+block, block 32 steps on whole windows | " in text


def test_the_rule_that_wins_under_the_same_update_is_named_with_its_margin(tmp_path):
    """Two rules with the same reconstruction on the same windows: the better one, and the other's paired ratio
    against it in standard errors; a run with another reconstruction is not paired with them."""
    fake_run(tmp_path / "w", "wanda", "0.5", "obs", 0.10)
    fake_run(tmp_path / "d", "dass_outlier", "0.5", "obs", 0.20)
    fake_run(tmp_path / "m", "magnitude", "0.5", "obs+block", 0.05)
    perplexity = json.loads((tmp_path / "d" / "perplexity.json").read_text())
    nll = perplexity["pruned"]["window_nll"]
    perplexity["pruned"]["window_nll"] = [v + e for v, e in zip(nll, (0.01, -0.01, 0.02, -0.02))]  # a spread
    (tmp_path / "d" / "perplexity.json").write_text(json.dumps(perplexity))
    text = render(collect([tmp_path]), None, "Test CPU")
    section = text.split("## Which rule wins under the same weight update")[1].split("## Targets")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 0.5")]
    assert len(rows) == 1 and rows[0].startswith("| 0.5 | obs | wanda | dass_outlier | x1.105 (")  # exp(0.1)
    assert "In every pair measured, wanda is the better rule on every text" in section
    assert "magnitude" not in section


def test_the_cpu_line_names_what_it_is_given(tmp_path):
    from benchmarks.recovery_table import main

    fake_run(tmp_path / "runs" / "a", "wanda", "0.5", "obs", 0.2)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--cpu", "CPU A for run a, CPU B for the rest"])
    assert "CPU: CPU A for run a, CPU B for the rest." in (tmp_path / "out" / "recovery.md").read_text()
    assert json.loads((tmp_path / "out" / "recovery.json").read_text())["cpu"] == "CPU A for run a, CPU B for the rest"
