// Single-cell tokenizer bindings (owned by the single-cell area): argument checks with the GIL
// held, dtype dispatch, the work with the GIL released, zero-copy numpy outputs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>

#include "cells/cells.h"
#include "common/buffers.h"

namespace py = pybind11;
using namespace omicskern;
using namespace omicskern::cells;

namespace {

// BadCount -> omicskern.errors.InvalidCountsError(message) with .row/.column/.value/.kind
[[noreturn]] void raise_bad_count(const BadCount& e) {
    py::object cls = py::module_::import("omicskern.errors").attr("InvalidCountsError");
    std::string msg = "cell " + std::to_string(e.row);
    if (e.column >= 0 && e.kind != BadCount::BadColumn) msg += ", column " + std::to_string(e.column);
    msg += ": ";
    msg += e.what();
    if (e.kind == BadCount::Negative || e.kind == BadCount::NotFinite) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), " (%g)", e.value);
        msg += buf;
    }
    py::object exc = cls(msg);
    exc.attr("row") = e.row;
    exc.attr("column") = e.column;
    exc.attr("value") = e.value;
    static const char* kinds[] = {"negative", "not_finite", "non_integer", "bad_column", "bad_total"};
    exc.attr("kind") = kinds[e.kind];
    PyErr_SetObject(cls.ptr(), exc.ptr());
    throw py::error_already_set();
}

template <class T>
const T* ptr_of(const py::array& a, const char* name) {
    if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
        throw py::type_error(std::string(name) + ": expected a contiguous array of " + py::format_descriptor<T>::format());
    return static_cast<const T*>(a.data());
}

template <class T>
py::array_t<T> need(const py::object& o, const char* name) {
    py::array a = py::array::ensure(o);
    if (!a) throw py::type_error(std::string(name) + ": expected an array");
    if (a.ndim() != 1) throw py::value_error(std::string(name) + ": expected a 1-D array");
    return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
}

// dtype codes, read with the GIL held (check_csr): dispatch() runs with the GIL released and
// must not touch a Python object (py::isinstance<py::array_t<T>> builds and frees numpy dtype
// objects: without the GIL that races on reference counts, and debug builds abort in
// PyGILState_Check).
enum : int { kI32 = 0, kI64 = 1, kF32 = 2, kF64 = 3 };

struct CsrArgs {
    py::array indptr, indices, data;
    int64_t n_rows, n_cols, base;
    int indptr_t = kI64, indices_t = kI64, data_t = kF64;
    const void* indptr_p = nullptr;
    const void* indices_p = nullptr;
    const void* data_p = nullptr;
    int64_t span = 0;  // stored values between the first and the last row
    const int64_t* rows = nullptr;
    int64_t n_sel;
    py::array_t<int64_t> rows_arr;
};

// Checks shapes, dtypes and indptr, and the selected rows.
CsrArgs check_csr(const py::array& indptr, const py::array& indices, const py::array& data, int64_t n_cols,
                  const py::object& rows, int64_t base) {
    CsrArgs a{indptr, indices, data, 0, n_cols, base};
    if (indptr.ndim() != 1 || indices.ndim() != 1 || data.ndim() != 1)
        throw py::value_error("indptr, indices and data must be 1-D arrays");
    for (const py::array* x : {&indptr, &indices, &data})
        if (!(x->flags() & py::array::c_style)) throw py::value_error("indptr, indices and data must be contiguous");
    if (indptr.size() < 1) throw py::value_error("indptr must have at least one entry");
    if (indices.size() != data.size())
        throw py::value_error("indices has " + std::to_string(indices.size()) + " entries but data has " +
                              std::to_string(data.size()));
    if (n_cols < 0 || n_cols > INT32_MAX) throw py::value_error("n_cols out of range");
    a.n_rows = indptr.size() - 1;
    const int64_t nnz = static_cast<int64_t>(indices.size());
    auto check_ptr = [&](auto* p) {
        for (int64_t i = 0; i <= a.n_rows; ++i) {
            const int64_t v = static_cast<int64_t>(p[i]) - base;
            if (v < 0 || v > nnz || (i > 0 && p[i] < p[i - 1]))
                throw py::value_error("indptr is not a valid CSR row pointer at row " + std::to_string(i) +
                                      " (value " + std::to_string(static_cast<int64_t>(p[i])) + ", " +
                                      std::to_string(nnz) + " stored values)");
        }
        a.span = static_cast<int64_t>(p[a.n_rows]) - static_cast<int64_t>(p[0]);
    };
    if (py::isinstance<py::array_t<int32_t>>(indptr))
        a.indptr_t = kI32, check_ptr(static_cast<const int32_t*>(indptr.data()));
    else if (py::isinstance<py::array_t<int64_t>>(indptr))
        a.indptr_t = kI64, check_ptr(static_cast<const int64_t*>(indptr.data()));
    else
        throw py::type_error("indptr must be int32 or int64");
    if (py::isinstance<py::array_t<int32_t>>(indices)) a.indices_t = kI32;
    else if (py::isinstance<py::array_t<int64_t>>(indices)) a.indices_t = kI64;
    else throw py::type_error("indices must be int32 or int64");
    if (py::isinstance<py::array_t<float>>(data)) a.data_t = kF32;
    else if (py::isinstance<py::array_t<double>>(data)) a.data_t = kF64;
    else if (py::isinstance<py::array_t<int32_t>>(data)) a.data_t = kI32;
    else if (py::isinstance<py::array_t<int64_t>>(data)) a.data_t = kI64;
    else throw py::type_error("data must be float32, float64, int32 or int64");
    a.indptr_p = indptr.data();
    a.indices_p = indices.data();
    a.data_p = data.data();
    if (!rows.is_none()) {
        a.rows_arr = need<int64_t>(rows, "rows");
        a.n_sel = a.rows_arr.size();
        a.rows = a.rows_arr.data();
        for (int64_t i = 0; i < a.n_sel; ++i)
            if (a.rows[i] < 0 || a.rows[i] >= a.n_rows)
                throw py::value_error("rows[" + std::to_string(i) + "] = " + std::to_string(a.rows[i]) +
                                      " is out of range for " + std::to_string(a.n_rows) + " rows");
    } else {
        a.n_sel = a.n_rows;
    }
    return a;
}

// Small calls run on one thread: a parallel region costs more than it saves below ~250k stored
// values (and on a loaded machine its barrier waits for descheduled workers).
int threads_for(const CsrArgs& a, int num_threads) {
    return a.span < (int64_t(1) << 18) ? 1 : num_threads;
}

// Calls fn(Csr<I, X, T>) for the arrays' dtypes. Runs without the GIL: uses only the dtype codes
// and raw pointers that check_csr took with the GIL held (no py:: call here).
template <class Fn>
void dispatch(const CsrArgs& a, Fn&& fn) {
    auto with_t = [&](auto* ip, auto* ix) {
        using I = std::remove_const_t<std::remove_pointer_t<decltype(ip)>>;
        using X = std::remove_const_t<std::remove_pointer_t<decltype(ix)>>;
        auto go = [&](auto* dp) {
            using T = std::remove_const_t<std::remove_pointer_t<decltype(dp)>>;
            fn(Csr<I, X, T>{ip, ix, dp, a.base, a.n_cols});
        };
        switch (a.data_t) {
            case kF32: go(static_cast<const float*>(a.data_p)); break;
            case kF64: go(static_cast<const double*>(a.data_p)); break;
            case kI32: go(static_cast<const int32_t*>(a.data_p)); break;
            default: go(static_cast<const int64_t*>(a.data_p)); break;
        }
    };
    auto with_x = [&](auto* ip) {
        if (a.indices_t == kI32) with_t(ip, static_cast<const int32_t*>(a.indices_p));
        else with_t(ip, static_cast<const int64_t*>(a.indices_p));
    };
    if (a.indptr_t == kI32) with_x(static_cast<const int32_t*>(a.indptr_p));
    else with_x(static_cast<const int64_t*>(a.indptr_p));
}

// A RawBuffer as a 1-D numpy array that owns it (zero-copy).
template <class T>
py::array_t<T> raw_to_numpy(RawBuffer<T>&& b) {
    T* p = b.ptr.release();
    py::capsule owner(p, [](void* q) { delete[] static_cast<T*>(q); });
    return py::array_t<T>({static_cast<py::ssize_t>(b.n)}, {static_cast<py::ssize_t>(sizeof(T))}, p, owner);
}

py::dict rank_value_py(const py::array& indptr, const py::array& indices, const py::array& data, int64_t n_cols,
                       const py::object& col_slot_o, const py::object& slot_token_o, const py::object& slot_median_o,
                       const py::object& totals_o, const py::object& rows_o, int64_t base, int64_t max_genes,
                       int32_t cls_id, int32_t eos_id, double target_sum, bool skip_empty,
                       const py::object& slot_col_o, int num_threads, int arithmetic) {
    CsrArgs a = check_csr(indptr, indices, data, n_cols, rows_o, base);
    auto col_slot = need<int32_t>(col_slot_o, "col_slot");
    auto slot_token = need<int32_t>(slot_token_o, "slot_token");
    auto slot_median = need<double>(slot_median_o, "slot_median");
    if (col_slot.size() != n_cols)
        throw py::value_error("col_slot has " + std::to_string(col_slot.size()) + " entries for " +
                              std::to_string(n_cols) + " columns");
    const int64_t n_slots = slot_token.size();
    if (slot_median.size() != n_slots) throw py::value_error("slot_token and slot_median differ in length");
    for (int64_t c = 0; c < n_cols; ++c)
        if (col_slot.data()[c] < -1 || col_slot.data()[c] >= n_slots)
            throw py::value_error("col_slot[" + std::to_string(c) + "] is out of range");
    for (int64_t s = 0; s < n_slots; ++s) {
        const double md = slot_median.data()[s];
        if (!(md > 0) || !std::isfinite(md))
            throw py::value_error("gene median of slot " + std::to_string(s) + " must be positive and finite, got " +
                                  std::to_string(md));
    }
    if (max_genes < 0) throw py::value_error("max_genes must be >= 0");
    if (!(target_sum > 0) || !std::isfinite(target_sum)) throw py::value_error("target_sum must be positive");
    py::array_t<double> totals;
    const double* tp = nullptr;
    if (!totals_o.is_none()) {
        totals = need<double>(totals_o, "totals");
        if (totals.size() != a.n_sel)
            throw py::value_error("totals has " + std::to_string(totals.size()) + " entries for " +
                                  std::to_string(a.n_sel) + " cells");
        tp = totals.data();
    }
    py::array_t<int32_t> slot_col;
    const int32_t* scp = nullptr;
    if (!slot_col_o.is_none()) {
        slot_col = need<int32_t>(slot_col_o, "slot_col");
        if (slot_col.size() != n_slots) throw py::value_error("slot_col must have one entry per slot");
        scp = slot_col.data();
    }
    RankParams p{col_slot.data(), slot_token.data(), slot_median.data(), scp, n_slots, tp, max_genes,
                 cls_id, eos_id, target_sum, skip_empty, arithmetic};
    if (arithmetic < 0 || arithmetic > 3) throw py::value_error("arithmetic must be 0, 1, 2 or 3");
    RankResult r;
    try {
        py::gil_scoped_release nogil;
        dispatch(a, [&](const auto& m) { r = rank_value(m, a.rows, a.n_sel, p, threads_for(a, num_threads)); });
    } catch (const BadCount& e) {
        raise_bad_count(e);
    }
    py::dict out;
    out["ids"] = raw_to_numpy(std::move(r.ids));
    out["offsets"] = to_numpy(std::move(r.offsets));
    out["out_rows"] = to_numpy(std::move(r.out_rows));
    out["n_detected"] = to_numpy(std::move(r.n_detected));
    out["totals"] = to_numpy(std::move(r.totals));
    out["non_integer"] = to_numpy(std::move(r.non_integer));
    return out;
}

py::array_t<int32_t> check_col_token(const py::object& o, int64_t n_cols) {
    auto t = need<int32_t>(o, "col_token");
    if (t.size() != n_cols)
        throw py::value_error("col_token has " + std::to_string(t.size()) + " entries for " + std::to_string(n_cols) +
                              " columns");
    return t;
}

py::tuple bin_count_py(const py::array& indptr, const py::array& indices, const py::array& data, int64_t n_cols,
                       const py::object& col_token_o, const py::object& rows_o, int64_t base, int num_threads) {
    CsrArgs a = check_csr(indptr, indices, data, n_cols, rows_o, base);
    auto col_token = check_col_token(col_token_o, n_cols);
    std::vector<int64_t> kept;
    std::vector<uint8_t> non_int;
    try {
        py::gil_scoped_release nogil;
        dispatch(a, [&](const auto& m) { kept = bin_count(m, a.rows, a.n_sel, col_token.data(), &non_int, threads_for(a, num_threads)); });
    } catch (const BadCount& e) {
        raise_bad_count(e);
    }
    return py::make_tuple(to_numpy(std::move(kept)), to_numpy(std::move(non_int)));
}

py::dict bin_values_py(const py::array& indptr, const py::array& indices, const py::array& data, int64_t n_cols,
                       const py::object& col_token_o, const py::object& quantiles_o, const py::object& rands_o,
                       const py::object& rows_o, int64_t base, int64_t max_len, const std::string& truncate,
                       uint64_t seed, const py::object& global_rows_o, int32_t cls_id, int32_t cls_value,
                       bool skip_empty, int num_threads) {
    CsrArgs a = check_csr(indptr, indices, data, n_cols, rows_o, base);
    auto col_token = check_col_token(col_token_o, n_cols);
    auto qs = need<double>(quantiles_o, "quantiles");
    if (qs.size() < 1) throw py::value_error("quantiles must not be empty (n_bins >= 2)");
    for (int64_t k = 0; k < qs.size(); ++k)
        if (!(qs.data()[k] >= 0.0 && qs.data()[k] <= 1.0) || (k > 0 && qs.data()[k] < qs.data()[k - 1]))
            throw py::value_error("quantiles must be increasing values in [0, 1]");
    int trunc;
    if (truncate == "sample") trunc = 0;
    else if (truncate == "top") trunc = 1;
    else throw py::value_error("truncate must be 'sample' or 'top', got '" + truncate + "'");
    py::array_t<double> rands;
    const double* rp = nullptr;
    int64_t n_rands = 0;
    if (!rands_o.is_none()) {
        rands = need<double>(rands_o, "rands");
        rp = rands.data();
        n_rands = rands.size();
    }
    py::array_t<int64_t> grows;
    const int64_t* gp = nullptr;
    if (!global_rows_o.is_none()) {
        grows = need<int64_t>(global_rows_o, "global_rows");
        if (grows.size() != a.n_sel) throw py::value_error("global_rows must have one entry per selected row");
        gp = grows.data();
    }
    BinParams p{col_token.data(), qs.data(), static_cast<int64_t>(qs.size()), rp, n_rands, max_len, trunc, seed, gp,
                cls_id, cls_value, skip_empty};
    BinResult r;
    try {
        py::gil_scoped_release nogil;
        dispatch(a, [&](const auto& m) { r = bin_values(m, a.rows, a.n_sel, p, threads_for(a, num_threads)); });
    } catch (const BadCount& e) {
        raise_bad_count(e);
    }
    py::dict out;
    out["ids"] = raw_to_numpy(std::move(r.ids));
    out["values"] = raw_to_numpy(std::move(r.values));
    out["offsets"] = to_numpy(std::move(r.offsets));
    out["out_rows"] = to_numpy(std::move(r.out_rows));
    out["n_detected"] = to_numpy(std::move(r.n_detected));
    out["non_integer"] = to_numpy(std::move(r.non_integer));
    return out;
}

}  // namespace

void register_cells(py::module_& m) {
    m.def("cells_rank_value", &rank_value_py, py::arg("indptr"), py::arg("indices"), py::arg("data"),
          py::arg("n_cols"), py::arg("col_slot"), py::arg("slot_token"), py::arg("slot_median"),
          py::arg("totals") = py::none(), py::arg("rows") = py::none(), py::arg("base") = 0,
          py::arg("max_genes") = 2048, py::arg("cls_id") = -1, py::arg("eos_id") = -1,
          py::arg("target_sum") = 10000.0, py::arg("skip_empty") = true, py::arg("slot_col") = py::none(),
          py::arg("num_threads") = 0, py::arg("arithmetic") = 0,
          "Geneformer rank-value encoding of CSR rows (see csrc/cells/rank.cpp; arithmetic: see RankParams "
          "in csrc/cells/cells.h). Returns a dict of numpy "
          "arrays: ids, offsets, out_rows, n_detected, totals, non_integer.");
    m.def("cells_bin_count", &bin_count_py, py::arg("indptr"), py::arg("indices"), py::arg("data"),
          py::arg("n_cols"), py::arg("col_token"), py::arg("rows") = py::none(), py::arg("base") = 0,
          py::arg("num_threads") = 0,
          "Kept nonzero genes per row (validating counts): (n_detected int64, non_integer uint8).");
    m.def("cells_bin_values", &bin_values_py, py::arg("indptr"), py::arg("indices"), py::arg("data"),
          py::arg("n_cols"), py::arg("col_token"), py::arg("quantiles"), py::arg("rands") = py::none(),
          py::arg("rows") = py::none(), py::arg("base") = 0, py::arg("max_len") = 0,
          py::arg("truncate") = "sample", py::arg("seed") = 0, py::arg("global_rows") = py::none(),
          py::arg("cls_id") = -1, py::arg("cls_value") = 0, py::arg("skip_empty") = true,
          py::arg("num_threads") = 0,
          "scGPT value binning of CSR rows (see csrc/cells/bin.cpp). Returns a dict of numpy arrays: ids, "
          "values, offsets, out_rows, n_detected, non_integer.");
}
