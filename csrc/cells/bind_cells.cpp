// Single-cell tokenizer bindings (owned by the single-cell area).
#include <pybind11/pybind11.h>
namespace py = pybind11;

void register_cells(py::module_& m) { (void)m; }
