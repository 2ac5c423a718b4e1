// scGPT value binning over CSR rows.
//
// Per cell, over its nonzero values in used columns (column order; repeated columns summed):
// edges = numpy.quantile(values, quantiles) with numpy's "linear" method reproduced operation by
// operation (virtual index (n-1)*q, floor, gamma, numpy's two-sided lerp, b - a in the input dtype),
// then digit = numpy.digitize(value, edges) (number of edges <= value), or with the random
// tie-break: ceil(r * (right - left) + left) where right = number of edges < value and r is the
// caller's uniform draw (numpy's stream, one draw per value). Expressions are split into separate
// statements so no compiler fuses them into FMAs (which would change roundings).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cells/cells.h"
#include "common/threads.h"

namespace omicskern {
namespace cells {
namespace {

template <class T>
struct Entry {
    int32_t col;
    T x;
};

// numpy's difference type for b - a: float stays float, integers go through int64.
template <class T>
using DiffT = typename std::conditional<std::is_floating_point<T>::value, T, int64_t>::type;

template <class T>
void quantile_edges(const T* sorted, int64_t n, const double* qs, int64_t n_edges, std::vector<double>& edges) {
    edges.resize(n_edges);
    for (int64_t k = 0; k < n_edges; ++k) {
        const double vi = static_cast<double>(n - 1) * qs[k];
        double prev_f = std::floor(vi);
        int64_t prev, next;
        if (vi >= static_cast<double>(n - 1)) {
            prev = next = n - 1;
            prev_f = -1.0;  // numpy sets the index to -1 before computing gamma
        } else if (vi < 0) {
            prev = next = 0;
            prev_f = 0.0;
        } else {
            prev = static_cast<int64_t>(prev_f);
            next = prev + 1;
        }
        const double gamma = vi - prev_f;
        const T a = sorted[prev];
        const T b = sorted[next];
        const DiffT<T> diff = static_cast<DiffT<T>>(b) - static_cast<DiffT<T>>(a);
        const double diff_d = static_cast<double>(diff);
        double e;
        if (gamma >= 0.5) {
            const double one_minus = 1.0 - gamma;
            const double prod = diff_d * one_minus;
            e = static_cast<double>(b) - prod;
        } else {
            const double prod = diff_d * gamma;
            e = static_cast<double>(a) + prod;
        }
        edges[k] = e;
    }
}

template <class T>
struct BinTLS {
    std::vector<Entry<T>> ent;
    std::vector<uint64_t> bits;
    std::vector<T> sorted;
    std::vector<double> edges;
    std::vector<int32_t> digit;
    std::vector<int64_t> pick;
    RadixScratch rs;
    std::vector<uint32_t> cnt;          // counting sort of small whole values
    std::vector<int32_t> left_of, right_of;
};

inline uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// uniform integer in [0, range) (Lemire's multiply-shift; bias < range / 2^64)
inline uint64_t below(uint64_t& s, uint64_t range) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(splitmix64(s)) * range) >> 64);
}

template <class I, class X, class T>
int64_t count_row(const Csr<I, X, T>& m, int64_t row, int64_t sel, const int32_t* col_token, Stamp& stamp,
                  bool* non_int) {
    int64_t kept = 0;
    for (int64_t q = m.begin(row), e = m.end(row); q < e; ++q) {
        const int64_t c = static_cast<int64_t>(m.indices[q]);
        check_column(c, m.n_cols, sel);
        const T x = m.data[q];
        check_value(x, sel, c, non_int);
        if (x == 0 || col_token[c] < 0) continue;
        if (stamp.first(static_cast<size_t>(c))) ++kept;
    }
    return kept;
}

}  // namespace

template <class I, class X, class T>
std::vector<int64_t> bin_count(const Csr<I, X, T>& m, const int64_t* rows, int64_t n_sel, const int32_t* col_token,
                               std::vector<uint8_t>* non_integer, int threads) {
    std::vector<int64_t> kept(n_sel, 0);
    non_integer->assign(n_sel, 0);
    ScratchPool<Stamp> stamps;
    for_each_blocked(n_sel, threads, stamps, [&](int64_t sel, Stamp& stamp) {
        const int64_t row = rows ? rows[sel] : sel;
        bool non_int = false;
        // fast path: valid whole counts and strictly increasing columns (no column twice, no
        // error to raise); else the checking loop, which raises the first error of the row
        const int64_t b = m.begin(row), n = m.end(row) - b;
        if (n < (int64_t(1) << 31) && scan_values(m.data + b, n).ok && scan_columns(m.indices + b, n, m.n_cols)) {
            int64_t k = 0;
            for (int64_t q = b; q < b + n; ++q) k += (m.data[q] != T(0)) & (col_token[m.indices[q]] >= 0);
            kept[sel] = k;
        } else {
            stamp.begin(static_cast<size_t>(m.n_cols));
            kept[sel] = count_row(m, row, sel, col_token, stamp, &non_int);
        }
        (*non_integer)[sel] = non_int;
    });
    return kept;
}

template <class I, class X, class T>
BinResult bin_values(const Csr<I, X, T>& m, const int64_t* rows, int64_t n_sel, const BinParams& p, int threads) {
    BinResult r;
    r.n_detected = bin_count(m, rows, n_sel, p.col_token, &r.non_integer, threads);

    // Where each row's random draws start (non-empty rows draw, in row order).
    std::vector<int64_t> rand_start;
    if (p.rands) {
        rand_start.resize(n_sel);
        int64_t pos = 0;
        for (int64_t sel = 0; sel < n_sel; ++sel) {
            rand_start[sel] = pos;
            pos += r.n_detected[sel];
        }
        if (pos != p.n_rands)
            throw std::invalid_argument("rands has " + std::to_string(p.n_rands) + " values, the rows need " +
                                        std::to_string(pos));
    }
    const int has_cls = p.cls_id >= 0;
    const int64_t max_genes = p.max_len > 0 ? std::max<int64_t>(0, p.max_len - has_cls) : INT64_MAX;
    r.offsets.reserve(n_sel + 1);
    r.out_rows.reserve(n_sel);
    r.offsets.push_back(0);
    for (int64_t sel = 0; sel < n_sel; ++sel) {
        const int64_t d = r.n_detected[sel];
        if (d == 0 && p.skip_empty) continue;
        r.out_rows.push_back(sel);
        r.offsets.push_back(r.offsets.back() + std::min(d, max_genes) + has_cls);
    }
    r.ids.allocate(static_cast<size_t>(r.offsets.back()));
    r.values.allocate(static_cast<size_t>(r.offsets.back()));
    const int64_t n_out = static_cast<int64_t>(r.out_rows.size());

    ScratchPool<BinTLS<T>> scratch;
    for_each_blocked(n_out, threads, scratch, [&](int64_t o, BinTLS<T>& t) {
        const int64_t sel = r.out_rows[o];
        const int64_t row = rows ? rows[sel] : sel;
        int32_t* out_id = r.ids.data() + r.offsets[o];
        int32_t* out_val = r.values.data() + r.offsets[o];
        if (has_cls) {
            *out_id++ = p.cls_id;
            *out_val++ = p.cls_value;
        }
        auto& ent = t.ent;
        const int64_t rb = m.begin(row), re = m.end(row);
        if (static_cast<int64_t>(ent.size()) < re - rb) ent.resize(re - rb);
        int64_t kept = 0;
        bool ordered = true;
        int32_t last = -1;
        for (int64_t q = rb; q < re; ++q) {
            const T x = m.data[q];
            if (x == 0) continue;
            const int32_t c = static_cast<int32_t>(m.indices[q]);
            if (p.col_token[c] < 0) continue;
            ordered &= c > last;
            last = c;
            ent[kept++] = {c, x};
        }
        int64_t n = kept;  // ent keeps its capacity across rows; entries [0, n) are this row's
        if (!ordered) {  // unsorted or repeated columns: sort, then sum repeats (dense semantics)
            std::sort(ent.begin(), ent.begin() + n,
                      [](const Entry<T>& a, const Entry<T>& b) { return a.col < b.col; });
            int64_t w = 0;
            for (int64_t i = 0; i < n; ++i) {
                if (w > 0 && ent[w - 1].col == ent[i].col)
                    ent[w - 1].x = static_cast<T>(ent[w - 1].x + ent[i].x);
                else
                    ent[w++] = ent[i];
            }
            n = w;
        }
        if (n == 0) return;
        if (static_cast<int64_t>(t.bits.size()) < n) {
            t.bits.resize(n);
            t.sorted.resize(n);
            t.digit.resize(n);
        }
        const double* rnd = p.rands ? p.rands + rand_start[sel] : nullptr;
        int32_t* digit = t.digit.data();
        // Counts are usually small whole numbers: then a counting sort gives the sorted values, and
        // an entry's bin depends only on its value (and its own draw), so both bounds are looked up
        // per distinct value - the same comparisons as the merge walk below, without any sort.
        int64_t maxv = 0;
        bool small_whole = true;
        for (int64_t i = 0; i < n; ++i) {
            const T x = ent[i].x;  // > 0 and finite (pass 1)
            const bool in_range = static_cast<double>(x) < 65536.0;
            const int64_t w = static_cast<int64_t>(in_range ? x : T(0));
            small_whole &= in_range & (static_cast<T>(w) == x);
            maxv = w > maxv ? w : maxv;
        }
        if (small_whole && maxv <= 8 * n + 256) {
            const size_t nv = static_cast<size_t>(maxv) + 1;
            if (t.cnt.size() < nv) {
                t.cnt.resize(nv);
                t.left_of.resize(nv);
                t.right_of.resize(nv);
            }
            uint32_t* cnt = t.cnt.data();
            std::fill(cnt, cnt + nv, 0u);
            for (int64_t i = 0; i < n; ++i) ++cnt[static_cast<int64_t>(ent[i].x)];
            T* sorted = t.sorted.data();
            int64_t w = 0;
            for (size_t v = 1; v < nv; ++v)
                for (uint32_t c = cnt[v]; c > 0; --c) sorted[w++] = static_cast<T>(v);
            quantile_edges(sorted, n, p.quantiles, p.n_edges, t.edges);
            const double* edges = t.edges.data();
            const int64_t n_edges = p.n_edges;
            int64_t left = 0, right = 0;  // edges <= x, edges < x
            for (size_t v = 1; v < nv; ++v) {
                if (!cnt[v]) continue;
                const double x = static_cast<double>(static_cast<T>(v));
                while (left < n_edges && edges[left] <= x) ++left;
                while (right < n_edges && edges[right] < x) ++right;
                t.left_of[v] = static_cast<int32_t>(left);
                t.right_of[v] = static_cast<int32_t>(right);
            }
            for (int64_t i = 0; i < n; ++i) {
                const int64_t v = static_cast<int64_t>(ent[i].x);
                if (!rnd) {
                    digit[i] = t.left_of[v];
                } else {
                    const double span = static_cast<double>(t.right_of[v] - t.left_of[v]);
                    const double scaled = rnd[i] * span;
                    const double d = scaled + static_cast<double>(t.left_of[v]);
                    digit[i] = static_cast<int32_t>(std::ceil(d));
                }
            }
        } else {
            // ascending order of the values (exact): radix on 22 bits, then exact fix-up of key runs
            t.rs.resize(n);
            for (int64_t i = 0; i < n; ++i) {
                const double d = static_cast<double>(ent[i].x);  // exact for float and |ints| < 2^53
                std::memcpy(&t.bits[i], &d, sizeof(d));
            }
            keys22(t.bits.data(), n, /*descending=*/false, t.rs.key.data());
            radix_sort22(t.rs, n);
            uint32_t* idx = t.rs.idx.data();
            const uint32_t* key = t.rs.key.data();
            for (int64_t i = 0; i < n;) {
                int64_t j = i + 1;
                bool ordered_run = true;
                while (j < n && key[idx[j]] == key[idx[i]]) {
                    if (ordered_run && ent[idx[j]].x < ent[idx[j - 1]].x) ordered_run = false;
                    ++j;
                }
                if (!ordered_run)
                    std::sort(idx + i, idx + j, [&](uint32_t a, uint32_t b) { return ent[a].x < ent[b].x; });
                i = j;
            }
            for (int64_t i = 0; i < n; ++i) t.sorted[i] = ent[idx[i]].x;
            quantile_edges(t.sorted.data(), n, p.quantiles, p.n_edges, t.edges);
            // digitize by one merge walk over the sorted values and the edges
            const double* edges = t.edges.data();
            const int64_t n_edges = p.n_edges;
            int64_t left = 0, right = 0;  // edges <= x, edges < x
            for (int64_t i = 0; i < n; ++i) {
                const double x = static_cast<double>(t.sorted[i]);
                while (left < n_edges && edges[left] <= x) ++left;
                while (right < n_edges && edges[right] < x) ++right;
                const uint32_t at = idx[i];
                if (!rnd) {
                    digit[at] = static_cast<int32_t>(left);
                } else {
                    const double span = static_cast<double>(right - left);
                    const double scaled = rnd[at] * span;
                    const double d = scaled + static_cast<double>(left);
                    digit[at] = static_cast<int32_t>(std::ceil(d));
                }
            }
        }
        if (n <= max_genes) {
            for (int64_t i = 0; i < n; ++i) {
                out_id[i] = p.col_token[ent[i].col];
                out_val[i] = digit[i];
            }
            return;
        }
        auto& pick = t.pick;
        pick.resize(n);
        for (int64_t i = 0; i < n; ++i) pick[i] = i;
        if (p.truncate == 1) {  // top expression: value desc, column asc
            std::nth_element(pick.begin(), pick.begin() + max_genes, pick.end(), [&](int64_t a, int64_t b) {
                return ent[a].x > ent[b].x || (ent[a].x == ent[b].x && a < b);
            });
        } else {  // seeded sample without replacement (partial Fisher-Yates), per (seed, global row)
            uint64_t state = p.seed ^ (0xD1B54A32D192ED03ull *
                                       static_cast<uint64_t>((p.global_rows ? p.global_rows[sel] : sel) + 1));
            for (int64_t i = 0; i < max_genes; ++i) {
                const int64_t j = i + static_cast<int64_t>(below(state, static_cast<uint64_t>(n - i)));
                std::swap(pick[i], pick[j]);
            }
        }
        std::sort(pick.begin(), pick.begin() + max_genes);  // keep column order, as scGPT's rows
        for (int64_t i = 0; i < max_genes; ++i) {
            out_id[i] = p.col_token[ent[pick[i]].col];
            out_val[i] = digit[pick[i]];
        }
    }, 16);
    return r;
}

#define OMICSKERN_BIN_INST(I, X, T)                                                                            \
    template std::vector<int64_t> bin_count<I, X, T>(const Csr<I, X, T>&, const int64_t*, int64_t, const int32_t*, \
                                                     std::vector<uint8_t>*, int);                              \
    template BinResult bin_values<I, X, T>(const Csr<I, X, T>&, const int64_t*, int64_t, const BinParams&, int);
#define OMICSKERN_BIN_INST_T(I, X)     \
    OMICSKERN_BIN_INST(I, X, float)    \
    OMICSKERN_BIN_INST(I, X, double)   \
    OMICSKERN_BIN_INST(I, X, int32_t)  \
    OMICSKERN_BIN_INST(I, X, int64_t)
OMICSKERN_BIN_INST_T(int32_t, int32_t)
OMICSKERN_BIN_INST_T(int32_t, int64_t)
OMICSKERN_BIN_INST_T(int64_t, int32_t)
OMICSKERN_BIN_INST_T(int64_t, int64_t)

}  // namespace cells
}  // namespace omicskern
