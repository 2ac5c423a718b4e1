// BPE tokenizer bindings (owned by the BPE area).
#include <pybind11/pybind11.h>
namespace py = pybind11;

void register_bpe(py::module_& m) { (void)m; }
