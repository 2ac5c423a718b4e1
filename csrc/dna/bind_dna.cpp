// Char and k-mer tokenizer bindings (owned by the DNA tokenizer area).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

namespace py = pybind11;

namespace omicskern {
namespace dna {
py::tuple char_encode(const py::object& seqs, py::array_t<int32_t, py::array::c_style | py::array::forcecast> lut,
                      const std::string& allowed, bool want_soft, int threads, int64_t chunk,
                      const std::vector<int32_t>& prefix, const std::vector<int32_t>& suffix);
py::tuple kmer_encode(const py::object& seqs, int k, bool overlap,
                      py::array_t<uint8_t, py::array::c_style | py::array::forcecast> cls_lut, int32_t kmer_base,
                      int32_t single_base, int32_t n_id, int32_t unk_id, const std::string& allowed, bool want_soft,
                      int threads, int64_t chunk, const std::vector<int32_t>& prefix,
                      const std::vector<int32_t>& suffix);
}  // namespace dna
}  // namespace omicskern

void register_dna(py::module_& m) {
    using namespace pybind11::literals;
    m.def("dna_char_encode", &omicskern::dna::char_encode, "seqs"_a, "lut"_a, "allowed"_a = "",
          "return_soft_mask"_a = false, "num_threads"_a = 0, "chunk"_a = 1 << 18,
          "prefix"_a = std::vector<int32_t>(), "suffix"_a = std::vector<int32_t>(),
          "One token per byte: lut[byte] (negative = invalid byte -> InvalidSequenceError).\n"
          "prefix/suffix: ids written around every sequence. Returns (ids int32 [T], offsets int64 [N+1],\n"
          "soft_mask uint8 [T] or None).");
    m.def("dna_kmer_encode", &omicskern::dna::kmer_encode, "seqs"_a, "k"_a, "overlap"_a, "cls_lut"_a, "kmer_base"_a,
          "single_base"_a, "n_id"_a, "unk_id"_a, "allowed"_a = "", "return_soft_mask"_a = false, "num_threads"_a = 0,
          "chunk"_a = 1 << 18, "prefix"_a = std::vector<int32_t>(), "suffix"_a = std::vector<int32_t>(),
          "k-mer tokens. overlap=False: Nucleotide Transformer rules (split at N, k-mers from each piece start,\n"
          "leftovers as single bases); overlap=True: DNABERT-1 windows of stride 1 (non-ACGT window -> unk_id).\n"
          "cls_lut[byte]: 0..3 = A,T,C,G; 4 = N; 5 = unknown token; 6 = invalid (error).\n"
          "prefix/suffix: ids written around every sequence. Returns (ids int32 [T], offsets int64 [N+1],\n"
          "soft_mask uint8 [T] or None).");
}
