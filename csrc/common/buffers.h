// Zero-copy views of Python inputs and zero-copy numpy outputs of C++ buffers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/threads.h"

namespace omicskern {
namespace py = pybind11;

// Bytes of one input sequence. Valid while the SeqViews it came from is alive.
struct SeqView {
    const char* data;
    int64_t size;
};

// Views of every item of a Python list/tuple of str, bytes, bytearray or 1-byte buffers (numpy
// uint8/S1 arrays, memoryview), built with the GIL held and readable with the GIL released.
//
// The views stay valid whatever other Python threads do meanwhile, because this object owns what
// they point into: a strong reference to every item (so `list.clear()` or `list[i] = x` cannot
// free a str/bytes being read) and a buffer export of every bytearray and buffer object (so
// resizing a bytearray, or a numpy array, raises BufferError in the mutating thread instead of
// reallocating the memory under us). Destroy it with the GIL held (declare it outside the
// gil_scoped_release scope). ASCII str gives its internal buffer without a copy.
// Raises TypeError naming the item index for anything else.
class SeqViews {
public:
    explicit SeqViews(const py::object& seqs) {
        if (!PyList_Check(seqs.ptr()) && !PyTuple_Check(seqs.ptr()))
            throw py::type_error("expected a list or tuple of sequences, got " +
                                 std::string(Py_TYPE(seqs.ptr())->tp_name));
        // A snapshot of the items, each with its own reference: nothing below runs Python code
        // that could mutate the list, and after this the list itself no longer matters.
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(seqs.ptr());
        items_.reserve(static_cast<size_t>(n));
        for (Py_ssize_t i = 0; i < n; ++i)
            items_.push_back(py::reinterpret_borrow<py::object>(PySequence_Fast_GET_ITEM(seqs.ptr(), i)));
        views_.resize(static_cast<size_t>(n));
        for (Py_ssize_t i = 0; i < n; ++i) {
            PyObject* o = items_[static_cast<size_t>(i)].ptr();
            if (PyUnicode_Check(o)) {  // immutable; the UTF-8 cache lives as long as the str
                Py_ssize_t len = 0;
                const char* p = PyUnicode_AsUTF8AndSize(o, &len);
                if (!p) throw py::error_already_set();
                views_[i] = {p, static_cast<int64_t>(len)};
            } else if (PyBytes_Check(o)) {  // immutable
                views_[i] = {PyBytes_AS_STRING(o), static_cast<int64_t>(PyBytes_GET_SIZE(o))};
            } else if (PyObject_CheckBuffer(o)) {  // bytearray, memoryview, numpy, ...: pin an export
                py::buffer_info info = py::reinterpret_borrow<py::buffer>(o).request();
                if (info.itemsize != 1 || info.ndim != 1 || info.strides[0] != 1)
                    throw py::type_error("sequence " + std::to_string(i) +
                                         ": buffer must be 1-D and contiguous with 1-byte items");
                views_[i] = {static_cast<const char*>(info.ptr), static_cast<int64_t>(info.size)};
                exports_.push_back(std::move(info));  // released (GIL held) when this object dies
            } else {
                throw py::type_error("sequence " + std::to_string(i) + ": expected str or bytes, got " +
                                     std::string(Py_TYPE(o)->tp_name));
            }
        }
    }
    SeqViews(const SeqViews&) = delete;
    SeqViews& operator=(const SeqViews&) = delete;

    const std::vector<SeqView>& views() const { return views_; }

private:
    std::vector<py::object> items_;          // strong references to every item
    std::vector<py::buffer_info> exports_;   // live buffer exports (bytearray cannot be resized)
    std::vector<SeqView> views_;
};

// Hands a std::vector to numpy without copying: the array owns the vector through a capsule.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                          heap->data(), owner);
}

// Flat ids + offsets (offsets[i]..offsets[i+1] are sequence i's ids; offsets has n+1 entries).
struct Ragged {
    std::vector<int32_t> ids;
    std::vector<int64_t> offsets;
};

// Concatenates per-item token vectors (in parallel) into one Ragged; frees the parts.
inline Ragged concat_parts(std::vector<std::vector<int32_t>>& parts, int threads) {
    Ragged r;
    r.offsets.resize(parts.size() + 1);
    r.offsets[0] = 0;
    for (size_t i = 0; i < parts.size(); ++i) r.offsets[i + 1] = r.offsets[i] + static_cast<int64_t>(parts[i].size());
    r.ids.resize(static_cast<size_t>(r.offsets.back()));
    parallel_for(static_cast<int64_t>(parts.size()), threads, [&](int64_t i) {
        std::copy(parts[i].begin(), parts[i].end(), r.ids.begin() + r.offsets[i]);
        std::vector<int32_t>().swap(parts[i]);
    });
    return r;
}

inline py::tuple ragged_to_python(Ragged&& r) {
    return py::make_tuple(to_numpy(std::move(r.ids)), to_numpy(std::move(r.offsets)));
}

}  // namespace omicskern
