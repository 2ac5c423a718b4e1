"""Compile every launched Triton configuration for sm_90 (no GPU needed) and report its resources.

Triton's bundled ``ptxas`` builds the Hopper cubin of each kernel exactly as a launch would
(constexprs, ``num_warps``, ``num_stages``, 16-byte aligned pointers), and the bundled
``cuobjdump`` reads back registers, stack frame (spills), shared memory and the SASS. Per
launch the table records registers, spill bytes (stack frame) and spill instructions
(``STL``/``LDL``), shared memory, warps, stages and the tensor-core instructions (``wgmma`` on
Hopper, ``mma.sync`` the Ampere fallback, ``-`` for FMA-only kernels).

The list of launches is table-driven: :data:`KERNEL_MODULES` names, per op, the module whose
``sm90_launches(full)`` returns every configuration its dispatch can choose (``full=False``: a
representative subset that the test suite compiles, ``tests/ops/test_sm90_compile.py``). A new
Triton kernel is one more entry here plus that function beside its launcher.

    python benchmarks/sm90_compile_check.py             # full sweep -> benchmarks/results/sm90_compile.md
    python benchmarks/sm90_compile_check.py --subset --json -    # the test's subset, JSON on stdout
    python benchmarks/sm90_compile_check.py --op fft_conv --out /tmp/fft.md

Exit status 1 if any launch spills or lacks wgmma where an MMA is expected. Runs with
``TRITON_INTERPRET`` unset (it is removed at import). See docs/attention.md ("Checking the
kernels without a GPU") for running it under another Triton version (3.6, the device image's).
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # must precede the kernel modules' import

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# op -> module exposing sm90_launches(full: bool) -> list[dict] (see _launch_fields below).
KERNEL_MODULES: dict[str, str] = {
    "attention": "omicskern.ops.attention.triton",
    "fft_conv": "omicskern.ops.fftconv.triton",
    "selective_scan": "omicskern.ops.selective_scan.triton",
    "rmsnorm": "omicskern.ops.rmsnorm.triton",
}

# A launch dict: op-local description of one compiled configuration.
_launch_fields = {
    "kernel": "short kernel name (table row)",
    "fn": "the @triton.jit function",
    "types": "{arg name: Triton type} for pointer / float args; unlisted non-constexpr args are i32",
    "constexprs": "{arg name: value}",
    "num_warps": "int", "num_stages": "int",
    "mma": "'wgmma' (Hopper tensor cores expected), 'mma' (any tensor-core MMA: tiles below a "
           "warpgroup's M = 64 use mma.sync) or None (FMA-only kernel)",
    "tags": "human-readable configuration (dtype, head dim, flags)",
    "div16": "optional: int args specialised as multiples of 16, as a launch would",
    "known_spills": "optional: why this launch is known to spill (reported, not a failure)",
}

TARGET = ("cuda", 90, 32)


def _toolchain() -> Path | None:
    import triton

    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return bindir if (bindir / "cuobjdump").exists() else None


MATCH = os.environ.get("SM90_MATCH")  # regex on "kernel tags" (development filter)


def launches(ops=None, full: bool = True) -> list[dict]:
    out = []
    for op, mod in KERNEL_MODULES.items():
        if ops and op not in ops:
            continue
        for la in importlib.import_module(mod).sm90_launches(full):
            if MATCH and not re.search(MATCH, f"{la['kernel']} {la['tags']}"):
                continue
            out.append(dict(la, op=op))
    return out


def _source(la):
    from triton.compiler import ASTSource

    fn, cons = la["fn"], la["constexprs"]
    unknown = set(cons) - set(fn.arg_names)
    if unknown:
        raise KeyError(f"{la['op']}/{la['kernel']}: constexprs {sorted(unknown)} are not arguments of {fn.__name__}")
    sig, attrs = {}, {}
    div16 = set(la.get("div16", ()))
    for i, n in enumerate(fn.arg_names):
        if n in cons:
            sig[n] = "constexpr"
            continue
        sig[n] = la["types"].get(n, "i32")
        if sig[n].startswith("*") or n in div16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=sig, constexprs=dict(cons), attrs=attrs)


def compile_sass(la: dict):
    """Compile one launch for sm_90: (compiled kernel, resource usage {REG, STACK, ...}, SASS text,
    compile seconds)."""
    import triton
    from triton.backends.compiler import GPUTarget

    bindir = _toolchain()
    t0 = time.perf_counter()
    k = triton.compile(_source(la), target=GPUTarget(*TARGET),
                       options=dict(num_warps=la["num_warps"], num_stages=la["num_stages"]))
    secs = time.perf_counter() - t0
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(bindir / "cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(bindir / "cuobjdump"), "-sass", f.name],
                              capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in usage.splitlines() if "REG:" in ln)
    res = {key: int(v) for key, v in re.findall(r"(\w+):(\d+)", line)}
    return k, res, sass, secs


def compile_one(la: dict) -> dict:
    """Compile one launch for sm_90; its resource row."""
    k, res, sass, secs = compile_sass(la)
    ptx = k.asm["ptx"]
    if "wgmma.mma_async" in ptx:
        mma = "wgmma"
    elif "mma.sync" in ptx:
        mma = "mma.sync"
    else:
        mma = "-"
    return dict(op=la["op"], kernel=la["kernel"], tags=la["tags"], regs=res["REG"],
                spill_bytes=res["STACK"] + res.get("LOCAL", 0),
                spill_instr=len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\b", sass)),
                shared=k.metadata.shared, warps=la["num_warps"], stages=la["num_stages"],
                mma=mma, mma_expected=la["mma"], known_spills=la.get("known_spills"),
                compile_s=round(secs, 2))


def _worker(args):
    ops, full, i = args
    return compile_one(launches(ops, full)[i])


def problems(row: dict) -> list[str]:
    out = []
    if (row["spill_bytes"] or row["spill_instr"]) and not row.get("known_spills"):
        out.append(f"spills ({row['spill_bytes']} B stack, {row['spill_instr']} STL/LDL)")
    if row["mma_expected"] == "wgmma" and row["mma"] != "wgmma":
        out.append(f"expected wgmma, got {row['mma']}")
    if row["mma_expected"] == "mma" and row["mma"] == "-":
        out.append("expected a tensor-core MMA, got none")
    return out


def run(ops=None, full=True, jobs=1) -> list[dict]:
    n = len(launches(ops, full))
    if jobs <= 1:
        return [compile_one(la) for la in launches(ops, full)]
    with concurrent.futures.ProcessPoolExecutor(jobs) as ex:
        return list(ex.map(_worker, [(ops, full, i) for i in range(n)]))


def table(rows: list[dict]) -> str:
    import triton

    head = ("| op | kernel | configuration | regs | spill B | STL/LDL | shared KiB | warps | stages "
            "| MMA | compile s |\n|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    body = [f"| {r['op']} | {r['kernel']} | {r['tags']} | {r['regs']} | "
            f"{r['spill_bytes']}{' (known)' if r.get('known_spills') and r['spill_bytes'] else ''} | "
            f"{r['spill_instr']} | {r['shared'] / 1024:.1f} | {r['warps']} | {r['stages']} | "
            f"{r['mma']} | {r['compile_s']} |" for r in rows]
    bad = [r for r in rows if problems(r)]
    known = [r for r in rows if r.get("known_spills") and (r["spill_bytes"] or r["spill_instr"])]
    return "\n".join([
        f"# sm_90 compile check (Triton {triton.__version__}, target {TARGET[0]}:{TARGET[1]})", "",
        "Generated by `python benchmarks/sm90_compile_check.py` (no GPU: Triton's bundled ptxas and "
        "cuobjdump). Every configuration the dispatch can launch; `spill B` is the stack frame "
        "(register spills), `STL/LDL` the local-memory instructions in the SASS, `shared` the "
        "dynamic shared memory, `MMA` the tensor-core instruction in the PTX.", "",
        f"{len(rows)} launches, {len(bad)} with problems"
        + (": " + "; ".join(f"{r['op']}/{r['kernel']} {r['tags']}: {', '.join(problems(r))}" for r in bad)
           if bad else "."),
        f"{len(known)} launches with known spills (not failures): "
        + ("; ".join(sorted({r["known_spills"] for r in known})) if known else "none") + ".",
        "", head, *body, ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", action="store_true", help="the representative subset (the test's)")
    ap.add_argument("--op", action="append", choices=sorted(KERNEL_MODULES), help="only this op (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sm90_compile.md"),
                    help="markdown table path ('-': none)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here ('-': stdout)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compiles")
    ap.add_argument("--match", default=None, help="only launches whose 'kernel tags' match this regex")
    a = ap.parse_args(argv)
    if a.match:
        global MATCH
        MATCH = os.environ["SM90_MATCH"] = a.match  # the env var reaches --jobs workers
    if _toolchain() is None:
        print("SKIP: this triton wheel has no CUDA toolchain (ptxas/cuobjdump)")
        return 0
    rows = run(a.op, not a.subset, a.jobs)
    if a.out != "-":
        Path(a.out).write_text(table(rows))
        print(f"wrote {a.out}", file=sys.stderr)
    if a.json == "-":
        print(json.dumps(rows))
    elif a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    for r in rows:
        if problems(r):
            print(f"PROBLEM {r['op']}/{r['kernel']} {r['tags']}: {', '.join(problems(r))}", file=sys.stderr)
    return 1 if any(problems(r) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
