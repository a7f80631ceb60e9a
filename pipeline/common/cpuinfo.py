"""The CPU's model name and instruction-set flags as the kernel reports them in /proc/cpuinfo: the one reader the
engines' feature checks (OpenVINO's AMX path, llama.cpp's build, the DeepSparse tests) and the benchmarks' CPU kinds
share. It imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def read_cpuinfo(text: str | None = None, path: str | Path = CPUINFO) -> tuple[str | None, set[str]]:
    """The first processor's model name and flags (``text``: the file's contents; None: read ``path``). No file
    (not Linux): (None, an empty set)."""
    if text is None:
        try:
            text = Path(path).read_text()
        except OSError:
            return None, set()
    model = flags = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if model is None and key.strip() == "model name":
            model = value.strip()
        elif flags is None and key.strip() == "flags":
            flags = set(value.split())
    return model, flags or set()


def cpu_flags(path: str | Path = CPUINFO) -> set[str]:
    """The instruction-set flags of the first CPU (empty where there is no such file)."""
    return read_cpuinfo(path=path)[1]
