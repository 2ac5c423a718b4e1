// Char and k-mer tokenizer bindings (owned by the DNA tokenizer area).
#include <pybind11/pybind11.h>
namespace py = pybind11;

void register_dna(py::module_& m) { (void)m; }
