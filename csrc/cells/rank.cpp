// Geneformer rank-value encoding over CSR rows.
//
// Per cell: for every dictionary gene with a nonzero count (repeated columns / duplicate gene IDs
// summed first), value = ((count / total) * target_sum) / median, computed in float64 in exactly
// this order (the order Geneformer's numpy code uses, so equal values tie exactly as they do
// there). Genes are ranked by value descending; equal values go by ascending column index (of the
// first column of a merged gene) - a stable order, where Geneformer's np.argsort(-v) (introsort)
// leaves ties in an unspecified order. With duplicate gene IDs the caller passes slot_col (each
// gene's first input column), so a gene's tie position does not depend on which of its columns
// are nonzero in a given cell.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "cells/cells.h"
#include "common/threads.h"

namespace omicskern {
namespace cells {
namespace {

inline uint64_t bits_of(double v) {
    uint64_t b;
    std::memcpy(&b, &v, sizeof(b));
    return b;
}

// v[i] = ((x[i] / total) * target_sum) / median[i]: IEEE division and multiplication in this
// order, lane by lane (vector lanes round exactly like scalar code; there is no add, so nothing
// to fuse). Cloned for AVX-512 / AVX2, picked at load time, so wide divisions are used where the
// CPU has them without building for one CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define OMICSKERN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define OMICSKERN_CLONES  // ifunc dispatch is a GCC/ELF feature; elsewhere the baseline build
#endif
OMICSKERN_CLONES
void normalise(const double* __restrict x, const double* __restrict median, double* __restrict v, int64_t n,
               double total, double target_sum) {
    for (int64_t i = 0; i < n; ++i) {
        double t = x[i] / total;
        t = t * target_sum;
        v[i] = t / median[i];
    }
}

// Scratch of pass 2 (one per worker block).
struct RankTLS {
    std::vector<double> x, med, v;
    std::vector<int32_t> col, tok;
    std::vector<uint64_t> bits;
    std::vector<uint32_t> small_idx;
    RadixScratch rs;
    std::vector<double> acc;
    std::vector<int32_t> first_col, order;
    Stamp stamp;
    void reserve(int64_t n) {
        if (static_cast<int64_t>(x.size()) < n) {
            x.resize(n);
            med.resize(n);
            v.resize(n);
            col.resize(n);
            tok.resize(n);
            bits.resize(n);
            small_idx.resize(n);
        }
        rs.resize(n);
    }
};

// Writes the tokens of the first k of n genes, by value descending then column ascending, to out.
// A 2-pass LSD radix sort on 22-bit keys (keys22: highest varying bits of the values) orders all
// but equal or near-equal values; runs of equal keys are then checked and, when needed, finished
// with the exact comparator (they are almost always exact ties already in column order).
void rank_genes(int64_t n, int64_t k, int32_t* out, RankTLS& t) {
    if (k > n) k = n;
    if (k <= 0) return;
    const double* v = t.v.data();
    const int32_t* col = t.col.data();
    auto before = [v, col](uint32_t a, uint32_t b) { return v[a] > v[b] || (v[a] == v[b] && col[a] < col[b]); };
    if (n <= 96) {
        uint32_t* idx = t.small_idx.data();
        for (int64_t i = 0; i < n; ++i) idx[i] = static_cast<uint32_t>(i);
        if (k < n)
            std::partial_sort(idx, idx + k, idx + n, before);
        else
            std::sort(idx, idx + n, before);
        for (int64_t i = 0; i < k; ++i) out[i] = t.tok[idx[i]];
        return;
    }
    for (int64_t i = 0; i < n; ++i) t.bits[i] = bits_of(v[i]);
    keys22(t.bits.data(), n, /*descending=*/true, t.rs.key.data());
    radix_sort22(t.rs, n);
    uint32_t* idx = t.rs.idx.data();
    const uint32_t* key = t.rs.key.data();
    for (int64_t i = 0; i < k;) {
        int64_t j = i + 1;
        const uint32_t kk = key[idx[i]];
        bool ordered = true;
        while (j < n && key[idx[j]] == kk) {
            if (ordered && before(idx[j], idx[j - 1])) ordered = false;
            ++j;
        }
        if (!ordered) std::sort(idx + i, idx + j, before);
        i = j;
    }
    const int32_t* tok = t.tok.data();
    for (int64_t i = 0; i < k; ++i) out[i] = tok[idx[i]];
}

}  // namespace

template <class I, class X, class T>
RankResult rank_value(const Csr<I, X, T>& m, const int64_t* rows, int64_t n_sel, const RankParams& p, int threads) {
    RankResult r;
    r.n_detected.assign(n_sel, 0);
    r.totals.assign(n_sel, 0.0);
    r.non_integer.assign(n_sel, 0);
    std::vector<uint8_t> has_dup(n_sel, 0);
    const size_t n_slots = static_cast<size_t>(p.n_slots);

    // Pass 1: validate, total counts, distinct dictionary genes per cell.
    ScratchPool<Stamp> stamps;
    for_each_blocked(n_sel, threads, stamps, [&](int64_t sel, Stamp& stamp) {
        stamp.begin(n_slots);
        const int64_t row = rows ? rows[sel] : sel;
        double total = 0.0;
        int64_t detected = 0;
        bool dup = false, non_int = false;
        for (int64_t q = m.begin(row), e = m.end(row); q < e; ++q) {
            const int64_t c = static_cast<int64_t>(m.indices[q]);
            check_column(c, m.n_cols, sel);
            const T x = m.data[q];
            check_value(x, sel, c, &non_int);
            total += static_cast<double>(x);
            if (x == 0) continue;
            const int32_t s = p.col_slot[c];
            if (s < 0) continue;
            if (stamp.first(static_cast<size_t>(s)))
                ++detected;
            else
                dup = true;
        }
        if (p.totals) total = p.totals[sel];
        if (detected > 0 && !(total > 0 && std::isfinite(total)))
            throw BadCount(sel, -1, total, BadCount::BadTotal,
                           "total counts must be a positive finite number, got " + std::to_string(total));
        r.n_detected[sel] = detected;
        r.totals[sel] = total;
        r.non_integer[sel] = non_int;
        has_dup[sel] = dup;
    });

    // Output layout (serial prefix sum over lengths).
    const int n_special = (p.cls_id >= 0) + (p.eos_id >= 0);
    r.offsets.reserve(n_sel + 1);
    r.out_rows.reserve(n_sel);
    r.offsets.push_back(0);
    for (int64_t sel = 0; sel < n_sel; ++sel) {
        const int64_t d = r.n_detected[sel];
        if (d == 0 && p.skip_empty) continue;
        r.out_rows.push_back(sel);
        r.offsets.push_back(r.offsets.back() + std::min<int64_t>(d, p.max_genes) + n_special);
    }
    r.ids.resize(static_cast<size_t>(r.offsets.back()));
    const int64_t n_out = static_cast<int64_t>(r.out_rows.size());

    // Pass 2: values, rank, write.
    ScratchPool<RankTLS> scratch;
    for_each_blocked(n_out, threads, scratch, [&](int64_t o, RankTLS& t) {
        const int64_t sel = r.out_rows[o];
        const int64_t row = rows ? rows[sel] : sel;
        const double total = r.totals[sel];
        const int64_t b = m.begin(row), e = m.end(row);
        int32_t* out = r.ids.data() + r.offsets[o];
        if (p.cls_id >= 0) *out++ = p.cls_id;
        t.reserve(e - b);
        double* xs = t.x.data();
        double* md = t.med.data();
        int32_t* cols = t.col.data();
        int32_t* toks = t.tok.data();
        int64_t n = 0;
        if (!has_dup[sel]) {
            for (int64_t q = b; q < e; ++q) {
                const T x = m.data[q];
                if (x == 0) continue;
                const int64_t c = static_cast<int64_t>(m.indices[q]);
                const int32_t s = p.col_slot[c];
                if (s < 0) continue;
                xs[n] = static_cast<double>(x);
                md[n] = p.slot_median[s];
                cols[n] = p.slot_col ? p.slot_col[s] : static_cast<int32_t>(c);
                toks[n] = p.slot_token[s];
                ++n;
            }
        } else {
            // Duplicate gene IDs / repeated columns: counts summed per gene before normalising.
            if (t.acc.size() != n_slots) {
                t.acc.assign(n_slots, 0.0);
                t.first_col.assign(n_slots, 0);
            }
            t.stamp.begin(n_slots);
            t.order.clear();
            for (int64_t q = b; q < e; ++q) {
                const T x = m.data[q];
                if (x == 0) continue;
                const int64_t c = static_cast<int64_t>(m.indices[q]);
                const int32_t s = p.col_slot[c];
                if (s < 0) continue;
                if (t.stamp.first(static_cast<size_t>(s))) {
                    t.acc[s] = static_cast<double>(x);
                    t.first_col[s] = static_cast<int32_t>(c);
                    t.order.push_back(s);
                } else {
                    t.acc[s] += static_cast<double>(x);
                    t.first_col[s] = std::min(t.first_col[s], static_cast<int32_t>(c));
                }
            }
            for (int32_t s : t.order) {
                xs[n] = t.acc[s];
                md[n] = p.slot_median[s];
                cols[n] = p.slot_col ? p.slot_col[s] : t.first_col[s];
                toks[n] = p.slot_token[s];
                ++n;
            }
        }
        normalise(xs, md, t.v.data(), n, total, p.target_sum);
        const int64_t k = std::min<int64_t>(n, p.max_genes);
        rank_genes(n, k, out, t);
        out += k;
        if (p.eos_id >= 0) *out++ = p.eos_id;
    }, 16);
    return r;
}

#define OMICSKERN_RANK_INST(I, X, T) \
    template RankResult rank_value<I, X, T>(const Csr<I, X, T>&, const int64_t*, int64_t, const RankParams&, int);
#define OMICSKERN_RANK_INST_T(I, X)     \
    OMICSKERN_RANK_INST(I, X, float)    \
    OMICSKERN_RANK_INST(I, X, double)   \
    OMICSKERN_RANK_INST(I, X, int32_t)  \
    OMICSKERN_RANK_INST(I, X, int64_t)
OMICSKERN_RANK_INST_T(int32_t, int32_t)
OMICSKERN_RANK_INST_T(int32_t, int64_t)
OMICSKERN_RANK_INST_T(int64_t, int32_t)
OMICSKERN_RANK_INST_T(int64_t, int64_t)

}  // namespace cells
}  // namespace omicskern
