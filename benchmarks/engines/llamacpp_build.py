"""Which llama.cpp build the ``llamacpp`` engine runs, and whether it was made for this CPU.

llama.cpp's system info (``llama_print_system_info``: ``CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ...``) names the
instruction sets its CPU library was *compiled* for (ggml-cpu's ``ggml_cpu_has_*`` are compile-time checks), not
what the CPU has. So each measurement compares them with the CPU's own flags in /proc/cpuinfo:

- the build uses an instruction set this CPU lacks: it was made on another CPU (it may stop on an illegal
  instruction);
- this CPU has instruction sets the build does not use: a portable build (``GGML_NATIVE=OFF``: AVX2 at most) or one
  made on a lesser CPU; llama.cpp's tokens/s then understate what it does on this CPU.

``install.sh --with-llamacpp`` builds llama.cpp for the CPU it runs on (``GGML_NATIVE=ON``, pip's wheel cache
bypassed) and then records that CPU and the hash of the CPU library it built in ``.venv/llamacpp-build.json``
(``python -m benchmarks.engines.llamacpp_build record native --cmake-args=-DGGML_NATIVE=ON``); a later run
rebuilds unless that record names this CPU and the installed library (``python -m benchmarks.engines.llamacpp_build
check``). The benchmark reads the record to name the build (native / portable; ``unrecorded`` for a build made
another way, e.g. ``pip install '.[llamacpp]'``). Nothing here imports llama_cpp except ``record``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

from pipeline.common.cpuinfo import read_cpuinfo

log = logging.getLogger(__name__)

#: llama.cpp's x86 feature names (ggml-cpu.cpp, ggml_backend_cpu_get_features) -> the /proc/cpuinfo flag
FEATURE_FLAGS = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX_VNNI": "avx_vnni", "AVX2": "avx2", "F16C": "f16c",
                 "FMA": "fma", "BMI2": "bmi2", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi",
                 "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8"}
RECORD = "llamacpp-build.json"  # in the environment's prefix (.venv/)
CPU_LIBRARY = "libggml-cpu.so"  # llama-cpp-python installs it in llama_cpp/lib/


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """``{backend: {feature: value}}`` from llama.cpp's system info (backends follow each other:
    ``CPU : AVX = 1 | ... | CUDA : ARCHS = 890 | ...``)."""
    backends: dict[str, dict[str, str]] = {}
    current = None
    for item in text.split("|"):
        item = item.strip()
        if not item:
            continue
        if " : " in item:
            current, _, item = item.partition(" : ")
            backends.setdefault(current.strip(), {})
        name, _, value = item.partition("=")
        if current is not None and name.strip():
            backends[current][name.strip()] = value.strip()
    return backends


def compiled_features(system_info: str) -> list[str]:
    """The instruction sets llama.cpp's CPU library was compiled for, in llama.cpp's order (``AVX2``, ``AVX512``, ...;
    other entries such as ``OPENMP`` or ``REPACK`` are not instruction sets and are left out)."""
    cpu = parse_system_info(system_info).get("CPU", {})
    return [name for name in cpu if name in FEATURE_FLAGS and cpu[name] == "1"]


def compare(features: list[str], flags: set[str]) -> tuple[list[str], list[str]]:
    """(features the build uses that a CPU with ``flags`` lacks, features that CPU has that the build does not use);
    both empty when ``flags`` is empty (no x86 /proc/cpuinfo to compare with)."""
    if not flags:
        return [], []
    lacks = [f for f in features if f in FEATURE_FLAGS and FEATURE_FLAGS[f] not in flags]
    unused = [f for f, flag in FEATURE_FLAGS.items() if flag in flags and f not in features]
    return lacks, unused


def cpu_library() -> Path | None:
    """The installed llama_cpp's CPU library (symlinks resolved), or None without llama-cpp-python."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / CPU_LIBRARY
    return path.resolve() if path.exists() else None


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_path() -> Path:
    return Path(sys.prefix) / RECORD


def read_record(path: Path | None = None, library: Path | None = None) -> dict | None:
    """install.sh's record of the build, if there is one and it is of the installed CPU library (``library``;
    default: the installed llama_cpp's); None otherwise (no record, unreadable, or of another build)."""
    path = path or record_path()
    library = library if library is not None else cpu_library()
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if library is None or not Path(library).is_file() or rec.get("sha256") != sha256(library):
        return None
    return rec


def check(cpuinfo: str | None = None, path: Path | None = None, library: Path | None = None) -> str | None:
    """Why the installed llama.cpp must be rebuilt for this CPU (one line), or None when install.sh built it here:
    a native build, recorded with this CPU's model and flags, of the installed library."""
    library = library if library is not None else cpu_library()
    if library is None:
        return "llama-cpp-python is not installed"
    rec = read_record(path, library)
    if rec is None:
        return f"no record of a native build of {library} ({RECORD}: install.sh writes it after building)"
    model, flags = read_cpuinfo(cpuinfo)
    if rec.get("build") != "native":
        return f"the installed build is {rec.get('build')!r}, not native"
    if rec.get("cpu") != model or set(rec.get("flags") or []) != flags:
        extra = sorted(flags - set(rec.get("flags") or []))
        missing = sorted(set(rec.get("flags") or []) - flags)
        return (f"built on another CPU ({rec.get('cpu')}; this one: {model}; flags only here: "
                f"{' '.join(extra) or 'none'}; only there: {' '.join(missing) or 'none'})")
    return None


def describe(system_info: str, cpuinfo: str | None = None, path: Path | None = None,
             library: Path | None = None) -> dict:
    """What the benchmark records beside llama.cpp's system info: the instruction sets it was compiled for, the build
    (install.sh's record: native / portable; ``unrecorded`` otherwise) and the CPU it was made on, what it uses that
    this CPU lacks, what this CPU has that it does not use, and ``warning``: one line when the build does not fit this
    CPU (None when it does)."""
    model, flags = read_cpuinfo(cpuinfo)
    features = compiled_features(system_info)
    lacks, unused = compare(features, flags)
    rec = read_record(path, library)
    build = rec["build"] if rec else "unrecorded"
    built_on = rec.get("cpu") if rec else None
    other_cpu = bool(rec) and (rec.get("cpu") != model or set(rec.get("flags") or []) != flags)
    warning = None
    if lacks:
        warning = (f"llama.cpp was built for another CPU: it uses {', '.join(lacks)}, which this CPU ({model}) lacks; "
                   "rebuild it here: ./install.sh --with-llamacpp")
    elif other_cpu and build == "native":
        warning = (f"llama.cpp was built natively on another CPU ({built_on}), not on this one ({model})"
                   + (f", and does not use {', '.join(unused)}" if unused else "")
                   + "; ./install.sh --with-llamacpp rebuilds it here")
    elif unused:
        kind = "a portable build" if build == "portable" else "a portable build, or one made on another CPU"
        warning = (f"llama.cpp does not use {', '.join(unused)}, which this CPU ({model}) has ({kind}): its tokens/s "
                   "understate llama.cpp on this CPU; ./install.sh --with-llamacpp builds it natively")
    return {"features": features, "build": build, "built_on": built_on, "cpu_lacks": lacks, "unused": unused,
            "warning": warning}


def report_lines(info: dict | None) -> list[str]:
    """The benchmark report's lines on llama.cpp's build (``info``: results["machine"]["llamacpp"]; results made
    before the build was described have only ``system_info``)."""
    if not info:
        return []
    features = info.get("features")
    if features is None:
        features = compiled_features(info.get("system_info") or "")
    build = info.get("build", "unrecorded")
    made = f", made on {info['built_on']}" if info.get("built_on") else ""
    lines = [f"- llama.cpp compiled for: {' '.join(features) or 'no x86 SIMD'} ({build} build{made}); "
             f"system info `{info.get('system_info')}`"]
    if info.get("warning"):
        lines.append(f"- **llama.cpp build**: {info['warning']}")
    if info.get("extra_buffers_off"):
        lines.append(f"- **llama.cpp runs without its extra buffer types** (AMX, repacked weights): "
                     f"{info['extra_buffers_off']}; its tokens/s are those of the plain layout")
    return lines


def write_record(build: str, cmake_args: str, system_info: str, path: Path | None = None,
                 library: Path | None = None, cpuinfo: str | None = None) -> dict:
    """Record the installed build: ``build`` (native / portable), the CMake arguments, this CPU and the library."""
    library = library if library is not None else cpu_library()
    if library is None:
        raise SystemExit("llama-cpp-python is not installed: nothing to record")
    model, flags = read_cpuinfo(cpuinfo)
    rec = {"build": build, "cmake_args": cmake_args, "cpu": model, "flags": sorted(flags), "library": library.name,
           "sha256": sha256(library), "system_info": system_info, "features": compiled_features(system_info),
           "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = path or record_path()
    Path(path).write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engines.llamacpp_build",
                                     description="install.sh's record of the llama.cpp build and its check")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record the installed build (loads it: proves it runs here)")
    rec.add_argument("build", choices=["native", "portable"])
    rec.add_argument("--cmake-args", default="", help="what it was built with (--cmake-args=-DGGML_NATIVE=ON)")
    sub.add_parser("check", help="exit 0 when the installed build is native and made on this CPU, 1 otherwise")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "check":
        why = check()
        if why:
            log.info("llama.cpp: building it for this CPU: %s", why)
            return 1
        log.info("llama.cpp: the installed build is native to this CPU (%s)", record_path())
        return 0
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    written = write_record(args.build, args.cmake_args, info)
    log.info("llama.cpp %s build recorded in %s; compiled for: %s", args.build, record_path(),
             " ".join(written["features"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
