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

struct Item {
    double v;
    int32_t col;
    int32_t token;
};

inline bool before(const Item& a, const Item& b) { return a.v > b.v || (a.v == b.v && a.col < b.col); }

inline uint64_t bits_of(double v) {
    uint64_t b;
    std::memcpy(&b, &v, sizeof(b));
    return b;
}

// Per-thread scratch of pass 2 (one instance per thread, reached once per row).
struct RankTLS {
    std::vector<Item> items;
    std::vector<uint64_t> bits;
    RadixScratch rs;
    std::vector<double> acc;
    std::vector<int32_t> first_col, order;
    Stamp stamp;
};

RankTLS& rank_tls() {
    thread_local RankTLS t;
    return t;
}

// Writes the tokens of the first k of items[0, n) in `before` order to out. A 2-pass LSD radix
// sort on 22-bit keys (keys22: highest varying bits of the values) orders all but equal or
// near-equal values; runs of equal keys are then checked and, when needed, finished with the
// exact comparator (they are almost always exact ties already in column order).
void rank_items(Item* items, int64_t n, int64_t k, int32_t* out, RankTLS& t) {
    if (k > n) k = n;
    if (k <= 0) return;
    if (n <= 96) {
        if (k < n)
            std::partial_sort(items, items + k, items + n, before);
        else
            std::sort(items, items + n, before);
        for (int64_t i = 0; i < k; ++i) out[i] = items[i].token;
        return;
    }
    if (static_cast<int64_t>(t.bits.size()) < n) t.bits.resize(n);
    t.rs.resize(n);
    for (int64_t i = 0; i < n; ++i) t.bits[i] = bits_of(items[i].v);
    keys22(t.bits.data(), n, /*descending=*/true, t.rs.key.data());
    radix_sort22(t.rs, n);
    uint32_t* idx = t.rs.idx.data();
    const uint32_t* key = t.rs.key.data();
    for (int64_t i = 0; i < k;) {
        int64_t j = i + 1;
        const uint32_t kk = key[idx[i]];
        bool ordered = true;
        while (j < n && key[idx[j]] == kk) {
            if (ordered && before(items[idx[j]], items[idx[j - 1]])) ordered = false;
            ++j;
        }
        if (!ordered)
            std::sort(idx + i, idx + j, [&](uint32_t a, uint32_t b) { return before(items[a], items[b]); });
        i = j;
    }
    for (int64_t i = 0; i < k; ++i) out[i] = items[idx[i]].token;
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
    parallel_for(n_sel, threads, [&](int64_t sel) {
        Stamp& stamp = pass1_stamp();
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
    }, 64);

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
    parallel_for(n_out, threads, [&](int64_t o) {
        RankTLS& t = rank_tls();
        const int64_t sel = r.out_rows[o];
        const int64_t row = rows ? rows[sel] : sel;
        const double total = r.totals[sel];
        const int64_t b = m.begin(row), e = m.end(row);
        int32_t* out = r.ids.data() + r.offsets[o];
        if (p.cls_id >= 0) *out++ = p.cls_id;
        if (static_cast<int64_t>(t.items.size()) < e - b) t.items.resize(e - b);
        Item* items = t.items.data();
        int64_t n = 0;
        if (!has_dup[sel]) {
            for (int64_t q = b; q < e; ++q) {
                const T x = m.data[q];
                if (x == 0) continue;
                const int64_t c = static_cast<int64_t>(m.indices[q]);
                const int32_t s = p.col_slot[c];
                if (s < 0) continue;
                double v = static_cast<double>(x) / total;
                v = v * p.target_sum;
                v = v / p.slot_median[s];
                items[n++] = {v, p.slot_col ? p.slot_col[s] : static_cast<int32_t>(c), p.slot_token[s]};
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
                double v = t.acc[s] / total;
                v = v * p.target_sum;
                v = v / p.slot_median[s];
                items[n++] = {v, p.slot_col ? p.slot_col[s] : t.first_col[s], p.slot_token[s]};
            }
        }
        const int64_t k = std::min<int64_t>(n, p.max_genes);
        rank_items(items, n, k, out, t);
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
