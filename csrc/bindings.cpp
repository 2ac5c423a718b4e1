// PYBIND11_MODULE(_C): the one extension module. Each area registers its own functions from
// its bind_*.cpp, so areas never edit a shared file; this file only holds what they share.
#include <pybind11/pybind11.h>

#include "common/errors.h"
#include "common/threads.h"

namespace py = pybind11;

void register_common(py::module_& m);  // csrc/common/ragged.cpp (specials, truncation, padding)
void register_dna(py::module_& m);    // csrc/dna/bind_dna.cpp   (char, k-mer)
void register_bpe(py::module_& m);    // csrc/dna/bind_bpe.cpp   (BPE encode/train)
void register_cells(py::module_& m);  // csrc/cells/bind_cells.cpp (rank-value, binning)

PYBIND11_MODULE(_C, m) {
    m.doc() = "omicskern C++ core: DNA and single-cell tokenization (no torch, no CUDA)";

    // C++ InvalidSequence -> omicskern.errors.InvalidSequenceError(message, index=, position=, byte=)
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const omicskern::InvalidSequence& e) {
            py::gil_scoped_acquire gil;
            py::object cls = py::module_::import("omicskern.errors").attr("InvalidSequenceError");
            py::dict kw;
            kw["index"] = e.index;
            kw["position"] = e.position;
            kw["byte"] = e.byte;
            py::object exc = cls(e.what(), **kw);
            PyErr_SetObject(cls.ptr(), exc.ptr());
        }
    });

    m.def("hardware_threads", []() { return omicskern::resolve_threads(0); },
          "Number of threads used when a call asks for all of them (num_threads <= 0).");
#ifdef OMICSKERN_OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif

    register_common(m);
    register_dna(m);
    register_bpe(m);
    register_cells(m);
}
