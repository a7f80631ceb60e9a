"""CPU kinds: what makes two machines' tokens/s comparable, and one report over the benchmarks of several kinds.

A CPU kind is the CPU's model name and the instruction sets the engines' kernels choose by (AVX2, AVX-512, VNNI,
AMX), read from /proc/cpuinfo: ``AMD EPYC 7B13 64-Core Processor [AVX2]``. ``pipeline benchmark ... --ray ADDRESS
--every-cpu-kind`` (pipeline/benchmark_ray.py) groups a cluster's nodes by kind, benchmarks on one node of each into
its own subfolder (the usual results.json and report.md), and this module merges them into one report.md: a
table per kind and a table of each kind's tokens/s over the first kind's, cell by cell (same artifact, engine, mode).
Nothing here imports Ray; the CPU's name and flags come from pipeline/common/cpuinfo.py, the reader every engine
check shares.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.common.cpuinfo import read_cpuinfo
from pipeline.common.outputs import write_json_atomic, write_text_atomic

#: /proc/cpuinfo flags -> the name a kind shows (either flag of a pair counts: AVX-512 VNNI or the AVX VNNI of
#: later client CPUs)
ISA_FLAGS = ((("avx2",), "AVX2"), (("avx512f",), "AVX-512"), (("avx512_vnni", "avx_vnni"), "VNNI"),
             (("amx_tile",), "AMX"))
#: a node label (``ray start --labels cpu_kind=NAME``) that names a node's kind instead of its /proc/cpuinfo
KIND_LABEL = "cpu_kind"
JSON_FILE = "cpu_kinds.json"


def cpu_kind(text: str | None = None) -> str:
    """This machine's CPU kind: ``MODEL [AVX2 AVX-512 VNNI AMX]``, the instruction sets it has among those."""
    model, flags = read_cpuinfo(text)
    isa = [name for names, name in ISA_FLAGS if flags & set(names)]
    return f"{model or 'unknown CPU'} [{' '.join(isa) or 'no AVX2'}]"


def kind_folder(kind: str) -> str:
    """A folder name for a kind: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")[:80] or "cpu"


def one_node_per_kind(nodes: list[dict]) -> dict[str, dict]:
    """{kind: node} for each distinct ``node["kind"]``, the node with the most CPUs (then the lowest id) of each, in
    the kinds' sorted order; each node gets its own ``folder`` (kind_folder, numbered where two kinds share one)."""
    chosen: dict[str, dict] = {}
    for node in sorted(nodes, key=lambda n: (-n["cpus"], n["id"])):
        chosen.setdefault(node["kind"], node)
    used: set[str] = set()
    out = {}
    for kind in sorted(chosen):
        folder, n = kind_folder(kind), 2
        while folder in used:
            folder, n = f"{kind_folder(kind)}-{n}", n + 1
        used.add(folder)
        out[kind] = {**chosen[kind], "folder": folder}
    return out


def ratio_rows(kinds: list[dict]) -> list[dict]:
    """Each (artifact, engine, mode) measured on the first kind and on others: the medians per kind and each other
    kind's median over the first's."""
    measured = [k for k in kinds if k.get("results")]
    if len(measured) < 2:
        return []
    medians = [{(c["artifact"], c["engine"], c["mode"]): c["tokens_per_s"] for c in k["results"]["summary"]["cells"]}
               for k in measured]
    rows = []
    for key in sorted(medians[0]):
        spreads = [m.get(key) for m in medians]
        ref = spreads[0]["median"]
        rows.append({"artifact": key[0], "engine": key[1], "mode": key[2],
                     "tokens_per_s": {k["kind"]: s for k, s in zip(measured, spreads) if s},
                     "ratio_over_first": {k["kind"]: s["median"] / ref for k, s in zip(measured[1:], spreads[1:])
                                          if s and ref}})
    return rows


def render(kinds: list[dict], command: str | None = None) -> str:
    """report.md over every kind: ``kinds`` as written to cpu_kinds.json, each with its ``results`` loaded (None
    where its benchmark failed)."""
    from benchmarks.engines import ENGINE_NAMES
    from benchmarks.report import cells_table
    from benchmarks.report_format import measured_modes, tps

    lines = ["# Throughput benchmark on every CPU kind", ""]
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    lines.append("One node of each CPU kind ran the same interleaved benchmark; each kind's own report, plots and "
                 "raw measurements are in its folder.")
    for k in kinds:
        lines += ["", f"## {k['kind']}", ""]
        if not k.get("results"):
            lines.append(f"failed on node {k['node']}: {k['error']}")
            continue
        m = k["results"]["machine"]
        lines.append(f"node {k['node']}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
                     f"[{k['folder']}/report.md]({k['folder']}/report.md)")
        for mode in measured_modes(k["results"]):
            lines += [""] + ["#" + line if line.startswith("## ") else line for line in cells_table(k["results"], mode)]
    rows = ratio_rows(kinds)
    if rows:
        measured = [k["kind"] for k in kinds if k.get("results")]
        first = measured[0]
        lines += ["", "## Across CPU kinds", "",
                  f"tokens/s median (min–max over the rounds) on each kind, and each kind's median over {first}'s", "",
                  "| artifact | engine | mode | " + " | ".join(measured) + " | "
                  + " | ".join(f"{kind} / first" for kind in measured[1:]) + " |",
                  "|---|---|---|" + "---|" * (2 * len(measured) - 1)]
        for r in rows:
            speeds = [tps(r["tokens_per_s"][kind]) if kind in r["tokens_per_s"] else "–" for kind in measured]
            ratios = [f"{r['ratio_over_first'][kind]:.2f}x" if kind in r["ratio_over_first"] else "–"
                      for kind in measured[1:]]
            lines.append(f"| {r['artifact']} | {ENGINE_NAMES.get(r['engine'], r['engine'])} | {r['mode']} | "
                         + " | ".join(speeds + ratios) + " |")
    return "\n".join(lines) + "\n"


def write_report(kinds: list[dict], out: Path, command: str | None = None) -> list[str]:
    """OUT/report.md and OUT/cpu_kinds.json (the kinds, their nodes and folders, the cross-kind ratios)."""
    out = Path(out)
    listed = [{key: value for key, value in k.items() if key != "results"} for k in kinds]
    write_json_atomic(out / JSON_FILE, {"command": command, "kinds": listed, "ratios": ratio_rows(kinds)})
    write_text_atomic(out / "report.md", render(kinds, command))
    return ["report.md", JSON_FILE]


def rewrite_report(out: Path) -> list[str]:
    """``pipeline report OUT`` on such a folder: the merged report again, from cpu_kinds.json and each kind's
    results.json."""
    from benchmarks.runner import RESULTS, load_results
    from pipeline.common.outputs import read_json

    data = read_json(Path(out) / JSON_FILE, "give the folder pipeline benchmark --every-cpu-kind wrote")
    kinds = [{**k, "results": load_results(Path(out) / k["folder"])
              if (Path(out) / k["folder"] / RESULTS).is_file() else None} for k in data["kinds"]]
    return write_report(kinds, out, data.get("command"))
