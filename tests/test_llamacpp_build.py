"""Which llama.cpp build the llamacpp engine runs (benchmarks/engines/llamacpp_build.py): its compiled instruction
sets against the CPU's flags, install.sh's record of a native build and its check, the one-line warning of the
benchmark and the report's line beside DeepSparse's instruction set. Synthetic system info and /proc/cpuinfo text
here, except the last test, which asks the installed llama.cpp."""

from __future__ import annotations

import importlib.util
import logging
import platform

import pytest

from benchmarks.engines import llamacpp_build as lb

AVX2_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
             "OPENMP = 1 | REPACK = 1 | ")
ZEN4_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
             "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
BASE_FLAGS = "fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2"


def cpuinfo(model: str, flags: str) -> str:
    return f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: nothing\n"


AVX2_CPU = cpuinfo("AMD EPYC 7B13", BASE_FLAGS)
ZEN4_CPU = cpuinfo("AMD EPYC 9B14", BASE_FLAGS + " avx512f avx512vbmi avx512_vnni avx512_bf16")


def test_system_info_is_parsed_per_backend_and_only_instruction_sets_count():
    info = ZEN4_INFO + "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | "
    parsed = lb.parse_system_info(info)
    assert parsed["CUDA"] == {"ARCHS": "890", "USE_GRAPHS": "1"} and parsed["CPU"]["OPENMP"] == "1"
    assert lb.compiled_features(info) == ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512",
                                          "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]
    assert lb.compiled_features("CPU : AVX = 0 | NEON = 1 | ") == []


def test_a_build_made_on_another_cpu_is_named_in_one_line(tmp_path):
    facts = lb.describe(ZEN4_INFO, AVX2_CPU, path=tmp_path / "none.json", library=tmp_path / "none.so")
    assert facts["cpu_lacks"] == ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"] and facts["unused"] == []
    assert facts["build"] == "unrecorded"
    assert facts["warning"].startswith("llama.cpp was built for another CPU: it uses AVX512, AVX512_VBMI, ")
    assert "AMD EPYC 7B13" in facts["warning"] and "\n" not in facts["warning"]


def test_a_portable_build_on_an_avx512_cpu_says_what_it_leaves_unused(tmp_path):
    facts = lb.describe(AVX2_INFO, ZEN4_CPU, path=tmp_path / "none.json", library=tmp_path / "none.so")
    assert facts["cpu_lacks"] == [] and facts["unused"] == ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]
    assert "does not use AVX512, AVX512_VBMI, AVX512_VNNI, AVX512_BF16" in facts["warning"]
    fits = lb.describe(ZEN4_INFO, ZEN4_CPU, path=tmp_path / "none.json", library=tmp_path / "none.so")
    assert fits["cpu_lacks"] == fits["unused"] == [] and fits["warning"] is None


def test_install_records_a_native_build_and_rebuilds_on_another_cpu_or_library(tmp_path):
    library, record = tmp_path / "libggml-cpu.so", tmp_path / lb.RECORD
    library.write_bytes(b"built here")
    assert "no record" in lb.check(AVX2_CPU, record, library)
    lb.write_record("native", "-DGGML_NATIVE=ON", AVX2_INFO, record, library, AVX2_CPU)
    assert lb.check(AVX2_CPU, record, library) is None  # install.sh skips the build
    why = lb.check(ZEN4_CPU, record, library)
    assert "another CPU (AMD EPYC 7B13; this one: AMD EPYC 9B14" in why and "avx512f" in why
    facts = lb.describe(AVX2_INFO, ZEN4_CPU, record, library)  # the benchmark on the other CPU, not rebuilt
    assert facts["build"] == "native" and facts["built_on"] == "AMD EPYC 7B13"
    assert facts["warning"].startswith("llama.cpp was built natively on another CPU (AMD EPYC 7B13)")
    assert lb.describe(AVX2_INFO, AVX2_CPU, record, library)["warning"] is None
    library.write_bytes(b"another build")  # pip replaced the library: the record no longer speaks for it
    assert "no record" in lb.check(AVX2_CPU, record, library)
    assert lb.describe(AVX2_INFO, AVX2_CPU, record, library)["build"] == "unrecorded"
    lb.write_record("portable", "-DGGML_NATIVE=OFF", AVX2_INFO, record, library, AVX2_CPU)
    assert "not native" in lb.check(AVX2_CPU, record, library)


def test_the_benchmark_warns_once_and_the_report_shows_the_build_beside_deepsparse(tmp_path, monkeypatch, caplog):
    from benchmarks import runner
    from benchmarks.report import render
    from benchmarks.settings import BenchmarkSettings

    monkeypatch.setattr(runner, "check_machine", lambda settings: None)  # no engine is imported here
    artifacts = [{"key": "pruned", "name": "pruned", "path": "/fake/pruned", "layers": 2, "method": "dass",
                  "sparsity": 0.5, "requested_sparsity": 0.5, "graphs": ["deepsparse"]},
                 {"key": "g-q4_0", "name": "g-q4_0", "path": "/fake/gguf", "layers": 2, "method": "gguf-q4_0",
                  "sparsity": 0.0, "requested_sparsity": None, "graphs": ["llamacpp"], "gguf_type": "q4_0",
                  "bytes": 1, "perplexity": None}]
    llamacpp = {"system_info": ZEN4_INFO, **lb.describe(ZEN4_INFO, AVX2_CPU, tmp_path / "no.json", tmp_path / "no")}

    def measure(spec):
        machine = llamacpp if spec.engine == "llamacpp" else {"isa": "avx2", "vnni": False, "physical_cores": 2}
        return {"ms_median": 10.0, "ms_mean": 10.0, "iterations": 5, "tokens_per_s": 100.0, "machine": dict(machine)}

    settings = BenchmarkSettings(engines=["deepsparse", "llamacpp"], modes=["decode"], sequence_length=64,
                                 repeats=2, seconds=1, warmup_seconds=1)
    with caplog.at_level(logging.WARNING, logger="benchmarks.runner"):
        results = runner.run_benchmark(artifacts, settings, tmp_path, progress=False, measure_fn=measure)
    warned = [r.getMessage() for r in caplog.records if "built for another CPU" in r.getMessage()]
    assert warned == [llamacpp["warning"]]  # once, not once per measurement
    lines = render(results).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("- DeepSparse detects: instruction set `avx2`"))
    assert lines[at + 1].startswith("- llama.cpp compiled for: SSE3 SSSE3 AVX AVX2 F16C FMA BMI2 AVX512 "
                                    "AVX512_VBMI AVX512_VNNI AVX512_BF16 (unrecorded build)")
    assert lines[at + 2] == f"- **llama.cpp build**: {llamacpp['warning']}"
    old = lb.report_lines({"system_info": AVX2_INFO})  # results written before the build was described
    assert old == [f"- llama.cpp compiled for: SSE3 SSSE3 AVX AVX2 F16C FMA BMI2 (unrecorded build); "
                   f"system info `{AVX2_INFO}`"]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed: "
                    "pip install 'dass-pipeline[llamacpp]'")
def test_the_installed_llama_cpp_is_described_against_this_cpu():
    import llama_cpp

    from benchmarks.engines.llamacpp_runner import machine

    facts = machine()
    assert facts["system_info"] == llama_cpp.llama_print_system_info().decode().strip()
    assert facts["features"] == lb.compiled_features(facts["system_info"])
    if platform.machine() == "x86_64":
        assert "AVX" in facts["features"] or "SSE3" in facts["features"]
        assert facts["cpu_lacks"] == []  # this process runs it: it uses nothing this CPU lacks


def test_a_build_with_amx_loads_weights_without_the_extra_buffer_types_and_the_report_says_so():
    """llama.cpp's AMX matmul crashes on quantized weights (benchmarks/engines/llamacpp_runner.AMX_CRASH): a build
    with AMX-INT8 keeps its weights in the plain layout, every other build uses llama.cpp's default."""
    from types import SimpleNamespace

    from benchmarks.engines.llamacpp_runner import AMX_CRASH, _extra_buffers, uses_extra_buffers

    assert uses_extra_buffers(AVX2_INFO)
    assert not uses_extra_buffers("CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |")
    made = []
    module = SimpleNamespace(llama_model_default_params=lambda: SimpleNamespace(use_extra_bufts=True))
    original = module.llama_model_default_params
    binding = SimpleNamespace(llama_cpp=module)
    with _extra_buffers(binding, enabled=False):
        made.append(module.llama_model_default_params())
    with _extra_buffers(binding, enabled=True):
        made.append(module.llama_model_default_params())
    assert [p.use_extra_bufts for p in made] == [False, True]
    assert module.llama_model_default_params is original  # restored once the model has loaded
    lines = lb.report_lines({"system_info": "AMX_INT8 = 1", "extra_buffers": False, "extra_buffers_off": AMX_CRASH})
    assert any("without its extra buffer types" in line and "issue 20824" in line for line in lines)
    assert not any("extra buffer" in line for line in lb.report_lines({"system_info": AVX2_INFO}))
