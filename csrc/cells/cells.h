// Single-cell tokenizers on CSR rows: Geneformer rank-value encoding (rank.cpp) and scGPT value
// binning (bin.cpp). Plain C++: spans in, owned buffers out; the pybind11 layer is bind_cells.cpp.
//
// CSR convention: row r holds positions indptr[r] - base .. indptr[r+1] - base of `indices` and
// `data` (base lets a caller pass a slice of a larger indptr, e.g. a chunk read from an h5ad file
// whose indices/data start at indptr[0]). Column indices may be unsorted and may repeat within a
// row (scipy's non-canonical CSR): repeated entries are summed, as a dense view would sum them.
// Explicitly stored zeros count as zeros.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/threads.h"

namespace omicskern {
namespace cells {

// A count the tokenizer refuses. bind_cells.cpp turns it into omicskern.errors.InvalidCountsError
// with .row (selected-row position in this call), .column and .value set.
struct BadCount : std::runtime_error {
    enum Kind : int { Negative = 0, NotFinite = 1, NonInteger = 2, BadColumn = 3, BadTotal = 4 };
    int64_t row;
    int64_t column;
    double value;
    int kind;
    BadCount(int64_t row_, int64_t column_, double value_, int kind_, const std::string& what_)
        : std::runtime_error(what_), row(row_), column(column_), value(value_), kind(kind_) {}
};

template <class I, class X, class T>
struct Csr {
    const I* indptr;     // [n_rows + 1] (only rows that are selected are read)
    const X* indices;    // column of each stored value
    const T* data;       // stored values
    int64_t base;        // subtracted from indptr values
    int64_t n_cols;
    int64_t begin(int64_t r) const { return static_cast<int64_t>(indptr[r]) - base; }
    int64_t end(int64_t r) const { return static_cast<int64_t>(indptr[r + 1]) - base; }
};

// Validates one stored value; `sel` is the row's position among the selected rows (what errors
// report). Integer types are always whole numbers; NaN/inf and negatives are always errors.
template <class T>
__attribute__((always_inline)) inline void check_value(T x, int64_t sel, int64_t col, bool* non_integer) {
    if constexpr (std::is_floating_point<T>::value) {
        if (!std::isfinite(x))
            throw BadCount(sel, col, static_cast<double>(x), BadCount::NotFinite, "count is not finite");
        if (x < 0) throw BadCount(sel, col, static_cast<double>(x), BadCount::Negative, "count is negative");
        // whole-number test without a libm call (trunc is not inlined on baseline x86-64);
        // values >= 2^62 are whole numbers in float and double anyway
        if (x < T(4.6e18) && static_cast<T>(static_cast<int64_t>(x)) != x) *non_integer = true;
    } else {
        if constexpr (std::is_signed<T>::value) {
            if (x < 0) throw BadCount(sel, col, static_cast<double>(x), BadCount::Negative, "count is negative");
        }
        (void)non_integer;
    }
}

[[noreturn]] __attribute__((noinline, cold)) inline void throw_bad_column(int64_t c, int64_t n_cols, int64_t sel) {
    throw BadCount(sel, c, 0.0, BadCount::BadColumn,
                   "column index " + std::to_string(c) + " is out of range for " + std::to_string(n_cols) +
                       " columns");
}

__attribute__((always_inline)) inline void check_column(int64_t c, int64_t n_cols, int64_t sel) {
    if (static_cast<uint64_t>(c) >= static_cast<uint64_t>(n_cols)) throw_bad_column(c, n_cols, sel);
}

// Per-worker "seen" marks over a key space, reset in O(1) per row by bumping a tag.
struct Stamp {
    std::vector<uint32_t> mark;
    uint32_t tag = 0;
    void begin(size_t n) {
        if (mark.size() != n) {
            mark.assign(n, 0);
            tag = 0;
        }
        if (++tag == 0) {  // wrapped: clear once every 2^32 rows
            std::fill(mark.begin(), mark.end(), 0u);
            tag = 1;
        }
    }
    // true the first time `k` is seen in this row
    bool first(size_t k) {
        if (mark[k] == tag) return false;
        mark[k] = tag;
        return true;
    }
};

// Scratch objects lent to worker blocks (no thread_local: in a shared library every TLS access
// may go through __tls_get_addr, which showed up at ~8% of the run time).
template <class S>
class ScratchPool {
   public:
    struct Lease {
        ScratchPool* pool;
        std::unique_ptr<S> obj;
        ~Lease() { pool->give_back(std::move(obj)); }
        S& operator*() { return *obj; }
    };
    Lease lease() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (free_.empty()) return Lease{this, std::make_unique<S>()};
        std::unique_ptr<S> o = std::move(free_.back());
        free_.pop_back();
        return Lease{this, std::move(o)};
    }
    void give_back(std::unique_ptr<S> o) {
        std::lock_guard<std::mutex> lock(mutex_);
        free_.push_back(std::move(o));
    }

   private:
    std::mutex mutex_;
    std::vector<std::unique_ptr<S>> free_;
};

// fn(i, scratch) for i in [0, n), in blocks of `block` consecutive items per task, each task with
// a scratch from the pool. Errors: the lowest failing item wins (items run in order in a block).
template <class S, class Fn>
void for_each_blocked(int64_t n, int threads, ScratchPool<S>& pool, Fn&& fn, int64_t block = 32) {
    const int64_t n_blocks = (n + block - 1) / block;
    parallel_for(n_blocks, threads, [&](int64_t b) {
        auto lease = pool.lease();
        S& s = *lease;
        const int64_t end = std::min(n, (b + 1) * block);
        for (int64_t i = b * block; i < end; ++i) fn(i, s);
    }, 1);
}

// Stable LSD radix sort of idx[0, n) by key ascending, keys < 2^22 (two 11-bit passes). idx is
// filled with 0..n-1 in input order first, so equal keys keep their input order.
struct RadixScratch {
    std::vector<uint32_t> key, idx, tmp;
    uint32_t hist[2][2048];
    void resize(size_t n) {
        if (key.size() < n) {
            key.resize(n);
            idx.resize(n);
            tmp.resize(n);
        }
    }
};

inline void radix_sort22(RadixScratch& s, int64_t n) {
    std::fill(&s.hist[0][0], &s.hist[0][0] + 2 * 2048, 0u);
    const uint32_t* key = s.key.data();
    for (int64_t i = 0; i < n; ++i) {
        ++s.hist[0][key[i] & 2047u];
        ++s.hist[1][key[i] >> 11];
    }
    for (int h = 0; h < 2; ++h) {
        uint32_t sum = 0;
        for (int b = 0; b < 2048; ++b) {
            const uint32_t c = s.hist[h][b];
            s.hist[h][b] = sum;
            sum += c;
        }
    }
    uint32_t* tmp = s.tmp.data();
    uint32_t* idx = s.idx.data();
    for (int64_t i = 0; i < n; ++i) tmp[s.hist[0][key[i] & 2047u]++] = static_cast<uint32_t>(i);
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t j = tmp[i];
        idx[s.hist[1][key[j] >> 11]++] = j;
    }
}

// 22-bit keys that order non-negative doubles (their IEEE bits order like the values) by the
// highest bits that vary among them: descending=true gives larger values smaller keys. Values
// whose keys are equal are equal or nearly equal (relative difference below ~2^-18 for values
// within a few decades); callers finish such runs with an exact comparison.
inline void keys22(const uint64_t* bits, int64_t n, bool descending, uint32_t* key) {
    // four independent min/max chains (one chain is latency-bound on the cmovs)
    uint64_t lo4[4] = {~uint64_t(0), ~uint64_t(0), ~uint64_t(0), ~uint64_t(0)}, hi4[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; ++l) {
            lo4[l] = bits[i + l] < lo4[l] ? bits[i + l] : lo4[l];
            hi4[l] = bits[i + l] > hi4[l] ? bits[i + l] : hi4[l];
        }
    for (; i < n; ++i) {
        lo4[0] = bits[i] < lo4[0] ? bits[i] : lo4[0];
        hi4[0] = bits[i] > hi4[0] ? bits[i] : hi4[0];
    }
    uint64_t lo = lo4[0], hi = hi4[0];
    for (int l = 1; l < 4; ++l) {
        lo = lo4[l] < lo ? lo4[l] : lo;
        hi = hi4[l] > hi ? hi4[l] : hi;
    }
    const uint64_t range = hi - lo;
    int shift = 0;
    if (range != 0) {
        const int width = 64 - __builtin_clzll(range);
        shift = width > 22 ? width - 22 : 0;
    }
    if (descending)
        for (int64_t i = 0; i < n; ++i) key[i] = static_cast<uint32_t>((hi - bits[i]) >> shift);
    else
        for (int64_t i = 0; i < n; ++i) key[i] = static_cast<uint32_t>((bits[i] - lo) >> shift);
}

// Branch-free row scans (rank.cpp, vectorised clones): ok = every value is a whole number in
// [0, 2^31) (NaN, inf, negative, -0.0, larger or fractional values: not ok), sum = their exact
// sum; scan_columns: every column in [0, n_cols) and greater than the previous one.
struct ScanOut {
    int64_t sum;
    bool ok;
};
ScanOut scan_values(const float* xs, int64_t n);
ScanOut scan_values(const double* xs, int64_t n);
ScanOut scan_values(const int32_t* xs, int64_t n);
ScanOut scan_values(const int64_t* xs, int64_t n);
bool scan_columns(const int32_t* cs, int64_t n, int64_t n_cols);
bool scan_columns(const int64_t* cs, int64_t n, int64_t n_cols);

// Output buffer that is not zero-filled on allocation (std::vector::resize writes every element
// once more, serially, before the parallel pass that writes them all anyway; here the first touch
// of each page happens in the worker that fills it). bind_cells.cpp hands it to numpy as is.
template <class T>
struct RawBuffer {
    std::unique_ptr<T[]> ptr;
    size_t n = 0;
    void allocate(size_t count) {
        ptr.reset(new T[count > 0 ? count : 1]);  // default-initialised: no fill for int32_t
        n = count;
    }
    T* data() { return ptr.get(); }
    size_t size() const { return n; }
};

// ------------------------------------------------------------------------------------------------
// Rank-value encoding (Geneformer)

struct RankParams {
    const int32_t* col_slot;      // [n_cols] column -> gene slot (dictionary gene), -1 = not in dictionary
    const int32_t* slot_token;    // [n_slots] token id of each slot
    const double* slot_median;    // [n_slots] nonzero median of each slot (> 0, finite)
    const int32_t* slot_col;      // [n_slots] tie-break column of each slot (its first input column), or
                                  // nullptr = the stored column
    int64_t n_slots;
    const double* totals;         // [n_sel] total counts per selected row, or nullptr = sum of the row
    int64_t max_genes;            // genes kept per cell (model_input_size minus special tokens)
    int32_t cls_id;               // < 0: none
    int32_t eos_id;               // < 0: none
    double target_sum;            // 10,000 in Geneformer
    bool skip_empty;              // cells without any dictionary gene produce no output row
    int arithmetic = 0;           // 0: ((x / total) * target_sum) / median (exact order, Geneformer's loom
                                  // path); Geneformer's h5ad path (scipy: multiply by reciprocals):
                                  // 1: ((x * (1 / total)) * target_sum) * (1 / median), float64;
                                  // 2: as 1 with 1 / total rounded to float32 (float32 n_counts);
                                  // 3: as 2 with the first two products in float32 (float32 counts too)
};

struct RankResult {
    RawBuffer<int32_t> ids;            // every element written by rank_value
    std::vector<int64_t> offsets;     // [n_out + 1]
    std::vector<int64_t> out_rows;    // [n_out] selected-row position of each output row
    std::vector<int64_t> n_detected;  // [n_sel] dictionary genes detected (after merging duplicates)
    std::vector<double> totals;       // [n_sel] total counts used
    std::vector<uint8_t> non_integer; // [n_sel] 1 where a float count is not a whole number
};

// rows: [n_sel] row indices into the CSR (nullptr = all rows 0..n_sel-1).
template <class I, class X, class T>
RankResult rank_value(const Csr<I, X, T>& m, const int64_t* rows, int64_t n_sel, const RankParams& p, int threads);

// ------------------------------------------------------------------------------------------------
// Value binning (scGPT)

struct BinParams {
    const int32_t* col_token;   // [n_cols] token id per column, -1 = column not used
    const double* quantiles;    // [n_edges] = numpy.linspace(0, 1, n_bins - 1)
    int64_t n_edges;
    const double* rands;        // flat uniform [0,1) draws, one per kept value of each non-empty row in
                                // row order and column order (numpy's stream), or nullptr = deterministic
    int64_t n_rands;
    int64_t max_len;            // tokens per cell including <cls>; <= 0: no limit
    int truncate;               // 0 = random sample (seeded), 1 = top expression
    uint64_t seed;              // sampling seed
    const int64_t* global_rows; // [n_sel] global row id per selected row (sampling stream), may be nullptr
    int32_t cls_id;             // < 0: none
    int32_t cls_value;
    bool skip_empty;
};

struct BinResult {
    RawBuffer<int32_t> ids;           // every element written by bin_values
    RawBuffer<int32_t> values;        // bin per token (<cls> gets cls_value)
    std::vector<int64_t> offsets;
    std::vector<int64_t> out_rows;
    std::vector<int64_t> n_detected;  // [n_sel] kept nonzero genes (before truncation)
    std::vector<uint8_t> non_integer;
};

// Pass 1 only: kept nonzero genes per selected row (validates counts). Used to size the random
// draws of the random tie-break before bin_values runs.
template <class I, class X, class T>
std::vector<int64_t> bin_count(const Csr<I, X, T>& m, const int64_t* rows, int64_t n_sel, const int32_t* col_token,
                               std::vector<uint8_t>* non_integer, int threads);

template <class I, class X, class T>
BinResult bin_values(const Csr<I, X, T>& m, const int64_t* rows, int64_t n_sel, const BinParams& p, int threads);

}  // namespace cells
}  // namespace omicskern
