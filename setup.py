"""Build the C++ core ``omicskern._C`` (pybind11, C++17, -O3, OpenMP when the compiler has it).

Needs no torch and no CUDA. Every ``csrc/**/*.cpp`` is compiled into the one extension; each area
registers its functions from its own ``bind_*.cpp`` (see ``csrc/bindings.cpp``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, ParallelCompile, build_ext
from setuptools import setup

# Compile translation units in parallel (NPY_NUM_BUILD_JOBS / cpu count).
ParallelCompile("OMICSKERN_BUILD_JOBS", default=0).install()


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

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
