"""Build the C++ core ``omicskern._C`` (pybind11, C++17, -O3, OpenMP when the compiler has it).

Needs no torch and no CUDA. Every ``csrc/**/*.cpp`` is compiled into the one extension; each area
registers its functions from its own ``bind_*.cpp`` (see ``csrc/bindings.cpp``).

The core is compiled once per content: after a build, ``build/omicskern-_C.stamp.json`` records a
hash of everything under ``csrc/``, the compile and link flags, the compiler (its ``--version``),
Python and pybind11, and the sha256 of the in-place ``omicskern/_C*.so``. A later build (another
``pip install -e .``, which pip runs in a fresh temporary build directory, or ``python setup.py
build_ext --inplace``) whose inputs hash the same reuses that ``.so`` instead of compiling again.
Any edited, added or removed file under ``csrc/`` (headers included), other flags or another
compiler rebuild. ``OMICSKERN_FORCE_BUILD=1`` or ``build_ext --force`` always rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from glob import glob

import pybind11
from pybind11.setup_helpers import Pybind11Extension, ParallelCompile, build_ext
from setuptools import setup

# Compile translation units in parallel (OMICSKERN_BUILD_JOBS, default: all CPUs).
ParallelCompile("OMICSKERN_BUILD_JOBS", default=0).install()

STAMP = os.path.join("build", "omicskern-_C.stamp.json")
# Environment that can change what the compiler produces (distutils reads most of it).
_BUILD_ENV = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED", "ARCHFLAGS",
              "OMICSKERN_NATIVE", "OMICSKERN_NO_OPENMP")


def _has_openmp() -> bool:
    if sys.platform == "win32" or os.environ.get("OMICSKERN_NO_OPENMP"):
        return False
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        try:
            r = subprocess.run([cxx, "-fopenmp", src, "-o", os.path.join(d, "omp")],
                               capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return r.returncode == 0


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _compiler_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run([cmd[0], "--version"], capture_output=True, text=True, timeout=60)
        return r.stdout
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("model name", "flags"))), "")
    except OSError:
        return platform.processor()


class BuildExt(build_ext):
    """pybind11's build_ext that skips compiling when an identical ``_C`` is already in place."""

    def run(self) -> None:
        self._keys: dict[str, str] = {}
        super().run()  # setuptools: build into build_lib, then copy in place when --inplace/editable
        if self.inplace:
            for ext in self.extensions:
                so = self._inplace_path(ext)
                if ext.name in self._keys and os.path.exists(so):
                    self._write_stamp(ext, so)

    def build_extension(self, ext) -> None:
        key = self._build_key(ext)
        self._keys[ext.name] = key
        out = self.get_ext_fullpath(ext.name)
        so = self._inplace_path(ext)
        force = self.force or os.environ.get("OMICSKERN_FORCE_BUILD", "") not in ("", "0")
        if not force and self._stamp_matches(ext, so, key):
            if not (os.path.exists(out) and os.path.samefile(so, out)):
                os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
                shutil.copy2(so, out)
            print(f"{ext.name}: csrc/, flags and compiler unchanged since the last build; "
                  f"reusing {so} (set OMICSKERN_FORCE_BUILD=1 to recompile)", flush=True)
            return
        # Our key changed, so compile even where distutils' mtime check (sources only, no
        # headers) would call a build/ copy up to date.
        old_force, self.force = self.force, True
        try:
            super().build_extension(ext)
        finally:
            self.force = old_force

    # -- helpers ------------------------------------------------------------------------------

    def _inplace_path(self, ext) -> str:
        fullname = self.get_ext_fullname(ext.name)
        package = ".".join(fullname.split(".")[:-1])
        package_dir = self.get_finalized_command("build_py").get_package_dir(package)
        return os.path.join(package_dir, os.path.basename(self.get_ext_filename(fullname)))

    def _build_key(self, ext) -> str:
        h = hashlib.sha256()

        def add(tag: str, data) -> None:
            h.update(tag.encode() + b"\0")
            h.update(data if isinstance(data, bytes) else json.dumps(data, sort_keys=True).encode())
            h.update(b"\0")

        for path in sorted(p for p in glob("csrc/**/*", recursive=True) if os.path.isfile(p)):
            with open(path, "rb") as f:
                add("file:" + path.replace(os.sep, "/"), f.read())
        pyb_inc = {os.path.normpath(pybind11.get_include()), os.path.normpath(pybind11.get_include(True))}
        add("ext", {
            "name": ext.name,
            "sources": list(ext.sources),
            # pybind11's include dir lives in pip's throwaway build env: key it by version instead
            "include_dirs": ["<pybind11>" if os.path.normpath(d) in pyb_inc else d
                             for d in ext.include_dirs],
            "define_macros": [list(m) for m in ext.define_macros],
            "undef_macros": list(ext.undef_macros),
            "extra_compile_args": list(ext.extra_compile_args),
            "extra_link_args": list(ext.extra_link_args),
            "libraries": list(ext.libraries), "library_dirs": list(ext.library_dirs),
            "runtime_library_dirs": list(ext.runtime_library_dirs),
            "extra_objects": list(ext.extra_objects), "language": ext.language,
        })
        cc = self.compiler
        cmds = {a: getattr(cc, a, None) for a in ("compiler_so", "compiler_cxx", "linker_so")}
        add("compiler", {"type": cc.compiler_type, "cmds": cmds,
                         "version": _compiler_version(cmds["compiler_so"] or [])})
        add("command", {"define": self.define, "undef": self.undef, "libraries": self.libraries,
                        "debug": self.debug})
        add("env", {k: os.environ.get(k) for k in _BUILD_ENV})
        add("python", {"version": sys.version, "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
                       "include": sysconfig.get_paths()["include"],
                       "machine": platform.machine(), "platform": sysconfig.get_platform(),
                       "pybind11": pybind11.__version__})
        if os.environ.get("OMICSKERN_NATIVE"):  # -march=native: tied to this CPU model too
            add("cpu", _cpu_model())
        return h.hexdigest()

    def _stamp_matches(self, ext, so: str, key: str) -> bool:
        if not os.path.exists(so):
            return False
        try:
            with open(STAMP) as f:
                stamp = json.load(f)[ext.name]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return (stamp.get("key") == key and stamp.get("so") == so.replace(os.sep, "/")
                and stamp.get("sha256") == _sha256_file(so))

    def _write_stamp(self, ext, so: str) -> None:
        try:
            with open(STAMP) as f:
                stamps = json.load(f)
            if not isinstance(stamps, dict):
                stamps = {}
        except (OSError, ValueError):
            stamps = {}
        stamps[ext.name] = {"key": self._keys[ext.name], "so": so.replace(os.sep, "/"),
                            "sha256": _sha256_file(so)}
        os.makedirs(os.path.dirname(STAMP), exist_ok=True)
        tmp = STAMP + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stamps, f, indent=1)
        os.replace(tmp, STAMP)


sources = sorted(glob("csrc/**/*.cpp", recursive=True))
extra_compile = ["-O3", "-fvisibility=hidden"]
extra_link: list[str] = []
macros = []
if _has_openmp():
    extra_compile.append("-fopenmp")
    extra_link.append("-fopenmp")
    macros.append(("OMICSKERN_OPENMP", "1"))
if os.environ.get("OMICSKERN_NATIVE"):  # opt-in: tune for this CPU (not for wheels)
    extra_compile.append("-march=native")

ext = Pybind11Extension(
    "omicskern._C",
    sources,
    include_dirs=["csrc"],
    cxx_std=17,
    define_macros=macros,
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
