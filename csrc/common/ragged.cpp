// Post-processing shared by every tokenizer's ragged output: special tokens, truncation, padding.
// Done in C++ (parallel, GIL released) so that whole-genome batches never pay a Python/numpy pass.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "common/buffers.h"
#include "common/threads.h"

namespace py = pybind11;
using omicskern::parallel_for;
using omicskern::to_numpy;

namespace {

template <class T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void check_offsets(const int64_t* off, int64_t n, int64_t total) {
    if (n < 0 || off[0] != 0 || off[n] != total) throw py::value_error("offsets must start at 0 and end at len(ids)");
    for (int64_t i = 0; i < n; ++i)
        if (off[i + 1] < off[i]) throw py::value_error("offsets must be non-decreasing (at index " + std::to_string(i) + ")");
}

// Adds prefix/suffix tokens around every sequence and truncates its content so that the total
// length is at most max_length (max_length < 0: no limit). keep_end: truncate from the left
// (keep the end of the sequence) instead of the right.
template <class T>
py::tuple finalize(carray<T> ids, carray<int64_t> offsets, const std::vector<T>& prefix,
                   const std::vector<T>& suffix, int64_t max_length, bool keep_end, int threads) {
    const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
    if (n < 0) throw py::value_error("offsets must have at least one entry");
    const T* src = ids.data();
    const int64_t* off = offsets.data();
    check_offsets(off, n, static_cast<int64_t>(ids.size()));
    const int64_t p = static_cast<int64_t>(prefix.size()), s = static_cast<int64_t>(suffix.size());
    int64_t budget = -1;
    if (max_length >= 0) {
        budget = max_length - p - s;
        if (budget < 0)
            throw py::value_error("max_length=" + std::to_string(max_length) + " is shorter than the " +
                                  std::to_string(p + s) + " special tokens added to every sequence");
    }
    std::vector<int64_t> new_off(static_cast<size_t>(n + 1));
    new_off[0] = 0;
    for (int64_t i = 0; i < n; ++i) {
        int64_t len = off[i + 1] - off[i];
        if (budget >= 0) len = std::min(len, budget);
        new_off[i + 1] = new_off[i] + p + len + s;
    }
    std::vector<T> out(static_cast<size_t>(new_off[n]));
    {
        py::gil_scoped_release release;
        parallel_for(n, threads, [&](int64_t i) {
            const int64_t len = new_off[i + 1] - new_off[i] - p - s;
            const int64_t start = keep_end ? off[i + 1] - len : off[i];
            T* dst = out.data() + new_off[i];
            std::copy(prefix.begin(), prefix.end(), dst);
            // len 0: src/dst may be null (empty arrays); memcpy's pointers must not be (UBSan)
            if (len > 0) std::memcpy(dst + p, src + start, static_cast<size_t>(len) * sizeof(T));
            std::copy(suffix.begin(), suffix.end(), dst + p + len);
        }, 64);
    }
    return py::make_tuple(to_numpy(std::move(out)), to_numpy(std::move(new_off)));
}

// [n, length] output plus its bool mask must be addressable: n * length * (itemsize + 1) bytes
// within PTRDIFF_MAX. Checked before pybind11/numpy compute strides and sizes, whose signed
// products would overflow (UB) for e.g. padding='max_length', max_length=2**62.
void check_pad_size(int64_t n, int64_t length, size_t itemsize) {
    if (n == 0 || length == 0) return;
    const int64_t per_elem = static_cast<int64_t>(itemsize) + 1;  // ids + mask
    const int64_t max_elems = PTRDIFF_MAX / per_elem;
    if (length > max_elems / n) {
        char total[64];
        std::snprintf(total, sizeof total, "%.3g", static_cast<double>(n) * static_cast<double>(length));
        throw py::value_error("padded length (max_length) " + std::to_string(length) + " is too large: " +
                              std::to_string(n) + " sequences x " + std::to_string(length) + " = " + total +
                              " tokens, more than an array can hold (at most " +
                              std::to_string(max_elems) + " tokens in all)");
    }
}

// Ragged -> [n, length] array filled with pad, plus a bool mask of real tokens. Sequences longer
// than `length` are an error (truncate first). left: pad on the left.
template <class T>
py::tuple pad(carray<T> ids, carray<int64_t> offsets, T pad_value, int64_t length, bool left, int threads) {
    const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
    if (n < 0) throw py::value_error("offsets must have at least one entry");
    const T* src = ids.data();
    const int64_t* off = offsets.data();
    check_offsets(off, n, static_cast<int64_t>(ids.size()));
    int64_t longest = 0;
    for (int64_t i = 0; i < n; ++i) longest = std::max(longest, off[i + 1] - off[i]);
    if (length < 0) length = longest;
    if (longest > length)
        throw py::value_error("a sequence has " + std::to_string(longest) + " tokens, more than the padded length " +
                              std::to_string(length) + " (enable truncation)");
    check_pad_size(n, length, sizeof(T));
    py::array_t<T> out({n, length});
    py::array_t<bool> mask({n, length});
    T* o = out.mutable_data();
    bool* m = mask.mutable_data();
    {
        py::gil_scoped_release release;
        parallel_for(n, threads, [&](int64_t i) {
            const int64_t len = off[i + 1] - off[i];
            T* row = o + i * length;
            bool* mrow = m + i * length;
            const int64_t lead = left ? length - len : 0;
            std::fill(row, row + length, pad_value);
            std::fill(mrow, mrow + length, false);
            if (len > 0) std::memcpy(row + lead, src + off[i], static_cast<size_t>(len) * sizeof(T));
            std::fill(mrow + lead, mrow + lead + len, true);
        }, 64);
    }
    return py::make_tuple(out, mask);
}

// A length argument as int64 from any Python integer (int, numpy integer): values beyond int64
// clamp to INT64_MAX (then the size checks name them) instead of failing overload resolution with
// a signature dump. Negative values pass through (-1: no limit / the longest sequence).
int64_t as_length(const py::object& v, const char* name) {
    if (v.is_none()) return -1;
    py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
    if (!idx) {
        PyErr_Clear();
        throw py::type_error(std::string(name) + " must be an int, got " + std::string(Py_TYPE(v.ptr())->tp_name));
    }
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(idx.ptr(), &overflow);
    if (overflow > 0) return INT64_MAX;
    if (overflow < 0) return -1;
    return static_cast<int64_t>(x);
}

template <class T>
py::tuple finalize_py(carray<T> ids, carray<int64_t> offsets, const std::vector<T>& prefix,
                      const std::vector<T>& suffix, const py::object& max_length, bool keep_end, int threads) {
    return finalize<T>(ids, offsets, prefix, suffix, as_length(max_length, "max_length"), keep_end, threads);
}

template <class T>
py::tuple pad_py(carray<T> ids, carray<int64_t> offsets, T pad_value, const py::object& length, bool left,
                 int threads) {
    const int64_t len = as_length(length, "length");
    if (len == INT64_MAX && py::int_(length) > py::int_(INT64_MAX))
        throw py::value_error("padded length (max_length) " + std::string(py::str(length)) +
                              " is too large: it does not fit in a 64-bit array size");
    return pad<T>(ids, offsets, pad_value, len, left, threads);
}

}  // namespace

// ids/offsets are .noconvert(): an overload is chosen only for the exact dtype, so a uint8 mask
// never goes through the int32 overload (forcecast would copy and widen it silently).
void register_common(py::module_& m) {
    m.def("ragged_finalize", &finalize_py<int32_t>, py::arg("ids").noconvert(), py::arg("offsets").noconvert(), py::arg("prefix"),
          py::arg("suffix"), py::arg("max_length") = py::int_(-1), py::arg("keep_end") = false, py::arg("num_threads") = 0,
          "Add prefix/suffix tokens to every sequence of a ragged int32 batch and truncate to max_length.");
    m.def("ragged_finalize", &finalize_py<uint8_t>, py::arg("ids").noconvert(), py::arg("offsets").noconvert(), py::arg("prefix"),
          py::arg("suffix"), py::arg("max_length") = py::int_(-1), py::arg("keep_end") = false, py::arg("num_threads") = 0);
    m.def("ragged_pad", &pad_py<int32_t>, py::arg("ids").noconvert(), py::arg("offsets").noconvert(), py::arg("pad_value"),
          py::arg("length") = py::int_(-1), py::arg("left") = false, py::arg("num_threads") = 0,
          "Pad a ragged int32 batch to [n, length]; returns (padded, mask).");
    m.def("ragged_pad", &pad_py<uint8_t>, py::arg("ids").noconvert(), py::arg("offsets").noconvert(), py::arg("pad_value"),
          py::arg("length") = py::int_(-1), py::arg("left") = false, py::arg("num_threads") = 0);
}
