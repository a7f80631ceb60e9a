"""CPU kinds (benchmarks/cpu_kinds.py): read from /proc/cpuinfo, one node per kind, one report over the kinds."""

import json

from benchmarks.cpu_kinds import cpu_kind, kind_folder, one_node_per_kind, ratio_rows, rewrite_report, write_report

XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
"""
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu sse2 avx avx2 fma\n"


def test_a_cpu_kind_is_the_model_name_and_the_instruction_sets_the_kernels_choose_by():
    assert cpu_kind(XEON) == "Intel(R) Xeon(R) Platinum 8480+ [AVX2 AVX-512 VNNI AMX]"
    assert cpu_kind(EPYC) == "AMD EPYC 7B13 64-Core Processor [AVX2]"
    assert cpu_kind("processor\t: 0\nflags\t\t: sse2\n") == "unknown CPU [no AVX2]"
    assert cpu_kind(EPYC.replace("avx2 fma", "avx2 avx_vnni")).endswith("[AVX2 VNNI]")  # a client CPU's AVX VNNI
    assert kind_folder(cpu_kind(XEON)) == "intel-r-xeon-r-platinum-8480-avx2-avx-512-vnni-amx"


def test_one_node_per_kind_takes_the_largest_node_of_each_and_gives_each_its_own_folder():
    nodes = [{"id": "c", "cpus": 4, "kind": "A x"}, {"id": "a", "cpus": 8, "kind": "B"},
             {"id": "b", "cpus": 8, "kind": "A x"}, {"id": "d", "cpus": 2, "kind": "A-x"}]
    chosen = one_node_per_kind(nodes)
    assert list(chosen) == ["A x", "A-x", "B"]
    assert [chosen[k]["id"] for k in chosen] == ["b", "d", "a"]
    assert [chosen[k]["folder"] for k in chosen] == ["a-x", "a-x-2", "b"]


def _results(cpu: str, medians: dict) -> dict:
    cells = [{"artifact": art, "name": art, "layers": 2, "method": "none" if art == "dense" else "dass",
              "sparsity": 0.0 if art == "dense" else 0.5, "engine": "onnxruntime", "mode": "decode",
              "tokens_per_s": {"median": m, "min": m - 1, "max": m + 1, "n": 1}} for art, m in medians.items()]
    artifacts = [{"key": art, "name": art, "method": c["method"], "requested_sparsity": None if art == "dense" else 0.5,
                  "sparsity": c["sparsity"], "layers": 2} for art, c in zip(medians, cells)]
    return {"machine": {"cpu": cpu, "cores": 2, "memory_gib": 8.0}, "settings": {"modes": ["decode"]},
            "artifacts": artifacts, "summary": {"cells": cells, "speedups": []}}


def test_the_report_over_the_kinds_has_a_table_per_kind_and_the_ratios_over_the_first(tmp_path):
    kinds = [{"kind": "AMD EPYC [AVX2]", "node": "n1", "node_id": "1", "folder": "amd-epyc-avx2",
              "results": _results("AMD EPYC", {"dense": 10.0, "pruned": 12.0}), "error": None},
             {"kind": "Xeon [AVX2 AVX-512 VNNI AMX]", "node": "n2", "node_id": "2", "folder": "xeon",
              "results": _results("Xeon", {"dense": 20.0, "pruned": 30.0}), "error": None},
             {"kind": "Other [AVX2]", "node": "n3", "node_id": "3", "folder": "other", "results": None,
              "error": "the folder /x on node n3 is not the one the command writes to — fix: ..."}]
    rows = ratio_rows(kinds)
    assert [(r["artifact"], r["ratio_over_first"]) for r in rows] == [
        ("dense", {"Xeon [AVX2 AVX-512 VNNI AMX]": 2.0}), ("pruned", {"Xeon [AVX2 AVX-512 VNNI AMX]": 2.5})]
    assert write_report(kinds, tmp_path, "pipeline benchmark a b --out o --ray auto --every-cpu-kind") == [
        "report.md", "cpu_kinds.json"]
    report = (tmp_path / "report.md").read_text()
    for heading in ("## AMD EPYC [AVX2]", "## Xeon [AVX2 AVX-512 VNNI AMX]", "## Other [AVX2]", "## Across CPU kinds"):
        assert heading in report
    assert report.count("### Decode tokens/s, every measurement") == 2
    assert "failed on node n3: the folder /x on node n3" in report
    assert "| pruned | ONNX Runtime | decode | 12.00 (11.00–13.00) | 30.00 (29.00–31.00) | 2.50x |" in report
    listed = json.loads((tmp_path / "cpu_kinds.json").read_text())
    assert [k["folder"] for k in listed["kinds"]] == ["amd-epyc-avx2", "xeon", "other"]
    assert "results" not in listed["kinds"][0]


def test_pipeline_report_redraws_the_report_over_the_kinds(tmp_path, monkeypatch):
    import benchmarks.runner

    kinds = [{"kind": k, "node": k, "node_id": k, "folder": k, "results": _results(k, {"dense": m}), "error": None}
             for k, m in (("a", 10.0), ("b", 5.0))]
    write_report(kinds, tmp_path, "cmd")
    for k in kinds:
        (tmp_path / k["folder"]).mkdir()
        (tmp_path / k["folder"] / "results.json").write_text("{}")
    monkeypatch.setattr(benchmarks.runner, "load_results", lambda folder: _results(folder.name, {"dense": 10.0 if folder.name == "a" else 5.0}))
    (tmp_path / "report.md").unlink()
    assert rewrite_report(tmp_path) == ["report.md", "cpu_kinds.json"]
    assert "| dense | ONNX Runtime | decode | 10.00 (9.00–11.00) | 5.00 (4.00–6.00) | 0.50x |" in (
        tmp_path / "report.md").read_text()
