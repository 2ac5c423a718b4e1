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
// Also returns the smallest and largest bit pattern of the values (for rank_genes' keys; the
// values are >= +0 and not NaN, so their bits read as int64 order like the values), reduced here
// while the values are in registers instead of in a separate pass.
OMICSKERN_CLONES
void normalise(const double* __restrict x, const double* __restrict median, double* __restrict v, int64_t n,
               double total, double target_sum, int64_t* lo_out, int64_t* hi_out) {
    int64_t lo = INT64_MAX, hi = 0;
    for (int64_t i = 0; i < n; ++i) {
        double t = x[i] / total;
        t = t * target_sum;
        const double r = t / median[i];
        v[i] = r;
        int64_t b;
        std::memcpy(&b, &r, sizeof(b));
        lo = b < lo ? b : lo;
        hi = b > hi ? b : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
}

// Geneformer's h5ad-path arithmetic (TranscriptomeTokenizer.tokenize_anndata): scipy evaluates
// X / n_counts * target_sum / medians as X.multiply(1 / n_counts) * target_sum .multiply(1 / medians),
// so v[i] = ((x[i] * recip) * target_sum) * inv_median[i], recip = 1 / total and inv_median =
// 1 / median computed by the caller (each a correctly rounded division, as numpy's). Products
// only, each rounded on its own (no add: nothing to fuse).
OMICSKERN_CLONES
void normalise_recip(const double* __restrict x, const double* __restrict inv_median, double* __restrict v,
                     int64_t n, double recip, double target_sum, int64_t* lo_out, int64_t* hi_out) {
    int64_t lo = INT64_MAX, hi = 0;
    for (int64_t i = 0; i < n; ++i) {
        double t = x[i] * recip;
        t = t * target_sum;
        const double r = t * inv_median[i];
        v[i] = r;
        int64_t b;
        std::memcpy(&b, &r, sizeof(b));
        lo = b < lo ? b : lo;
        hi = b > hi ? b : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
}

// The same with the first two products in float32: numpy's result type of the counts and of
// 1 / n_counts is float32 when both are (float32 X and float32 n_counts, or 8/16-bit integer
// counts with float32 n_counts); the median step is float64 (medians are float64). x holds
// counts that float32 represents exactly (their dtype is float32 or a small integer type).
OMICSKERN_CLONES
void normalise_recip32(const double* __restrict x, const double* __restrict inv_median, double* __restrict v,
                       int64_t n, float recip, float target_sum, int64_t* lo_out, int64_t* hi_out) {
    int64_t lo = INT64_MAX, hi = 0;
    for (int64_t i = 0; i < n; ++i) {
        float t = static_cast<float>(x[i]) * recip;
        t = t * target_sum;
        const double r = static_cast<double>(t) * inv_median[i];
        v[i] = r;
        int64_t b;
        std::memcpy(&b, &r, sizeof(b));
        lo = b < lo ? b : lo;
        hi = b > hi ? b : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
}

// True when no two columns map to the same dictionary slot (no duplicate gene IDs): then a row
// whose stored columns strictly increase cannot hold a gene twice.
inline bool slots_injective(const int32_t* col_slot, int64_t n_cols, size_t n_slots) {
    std::vector<uint8_t> seen(n_slots, 0);
    for (int64_t c = 0; c < n_cols; ++c) {
        const int32_t s = col_slot[c];
        if (s < 0) continue;
        if (seen[s]) return false;
        seen[s] = 1;
    }
    return true;
}

}  // namespace

// scan_values / scan_columns (declared in cells.h; bin.cpp's pass 1 uses them too). Integer tests
// only, so that the loops vectorise.
template <class T>
__attribute__((always_inline)) inline ScanOut scan_values_impl(const T* __restrict xs, int64_t n) {
    int64_t sum = 0;
    int bad = 0;
    for (int64_t q = 0; q < n; ++q) {
        const T x = xs[q];
        if constexpr (std::is_floating_point<T>::value) {
            // Integer tests on the IEEE bits (GCC does not vectorise these float compares under
            // the default -ftrapping-math): a non-negative float is below 2^31 iff its bits are
            // below those of 2^31 (excludes -0.0, NaN, inf: rows with them take the slow path);
            // it is whole iff converting to int and back gives the same bits.
            using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
            const U lim = sizeof(T) == 4 ? U(0x4F000000u) : U(0x41E0000000000000ull);
            U u;
            std::memcpy(&u, &x, sizeof(u));
            const bool in_range = u < lim;
            const U uy = u & (U(0) - static_cast<U>(in_range));  // (a ?: here stops vectorisation)
            T y;
            std::memcpy(&y, &uy, sizeof(y));
            const int32_t w = static_cast<int32_t>(y);
            const T back = static_cast<T>(w);
            U ub;
            std::memcpy(&ub, &back, sizeof(ub));
            bad |= static_cast<int>(ub != u);
            sum += w;
        } else {
            const bool in_range = (x >= 0) & (x < T(2147483647));
            bad |= static_cast<int>(!in_range);
            sum += static_cast<int64_t>(x);
        }
    }
    return {sum, bad == 0};
}
OMICSKERN_CLONES ScanOut scan_values(const float* xs, int64_t n) { return scan_values_impl(xs, n); }
OMICSKERN_CLONES ScanOut scan_values(const double* xs, int64_t n) { return scan_values_impl(xs, n); }
OMICSKERN_CLONES ScanOut scan_values(const int32_t* xs, int64_t n) { return scan_values_impl(xs, n); }
OMICSKERN_CLONES ScanOut scan_values(const int64_t* xs, int64_t n) { return scan_values_impl(xs, n); }

// Columns in [0, n_cols) and strictly increasing.
template <class X>
__attribute__((always_inline)) inline bool scan_columns_impl(const X* __restrict cs, int64_t n, int64_t n_cols) {
    if (n == 0) return true;
    int bad = static_cast<int>(static_cast<uint64_t>(static_cast<int64_t>(cs[0])) >= static_cast<uint64_t>(n_cols));
    for (int64_t q = 1; q < n; ++q) {
        const int64_t c = static_cast<int64_t>(cs[q]);
        bad |= static_cast<int>(c <= static_cast<int64_t>(cs[q - 1])) |
               static_cast<int>(static_cast<uint64_t>(c) >= static_cast<uint64_t>(n_cols));
    }
    return bad == 0;
}
OMICSKERN_CLONES bool scan_columns(const int32_t* cs, int64_t n, int64_t n_cols) { return scan_columns_impl(cs, n, n_cols); }
OMICSKERN_CLONES bool scan_columns(const int64_t* cs, int64_t n, int64_t n_cols) { return scan_columns_impl(cs, n, n_cols); }

namespace {

// Pass 1 of one row on its fast path: total counts and dictionary genes detected. Returns false
// (results unusable; the caller redoes the row with the exact sequential loop, which also raises
// the right error) unless every count is a whole number in [0, 2^31), every column is in range
// and greater than the previous one (with an injective col_slot: no gene twice) and the total is
// below 2^53. Then the counts are summed as integers, which is exact, and a sequential float64
// sum of whole numbers whose partial sums stay below 2^53 is exact too: the same total bit for bit.
// Integer sums and flag reductions vectorise (floating-point sums would not without reordering);
// the scan is cloned for AVX-512/AVX2 like normalise.
template <class I, class X, class T>
__attribute__((always_inline)) inline bool fast_row_scan(const Csr<I, X, T>& m, int64_t row, const int32_t* col_slot,
                                                        bool injective, double* total_out, int64_t* detected_out) {
    if (!injective) return false;
    const int64_t b = m.begin(row), e = m.end(row);
    const T* xs = m.data + b;
    const X* cs = m.indices + b;
    const int64_t n = e - b;
    if (n >= (int64_t(1) << 31)) return false;  // keeps the integer sum far from overflow
    const ScanOut v = scan_values(xs, n);
    if (!v.ok || v.sum >= (int64_t(1) << 53)) return false;
    if (!scan_columns(cs, n, m.n_cols)) return false;
    int64_t detected = 0;
    for (int64_t q = 0; q < n; ++q) detected += (xs[q] != T(0)) & (col_slot[cs[q]] >= 0);
    *total_out = static_cast<double>(v.sum);
    *detected_out = detected;
    return true;
}

// Scratch of pass 2 (one per worker block).
struct RankTLS {
    std::vector<double> x, med, v;
    std::vector<int32_t> col, tok;
    std::vector<uint32_t> small;
    std::vector<uint64_t> pa, pb;
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
            small.resize(n);
            pa.resize(n);
            pb.resize(n);
        }
    }
};

// Writes the tokens of the first k of n genes, by value descending then column ascending, to out.
//
// LSD radix sort of packed 64-bit items (key << 32 | position) in two passes of db bits (8..11,
// key bits ~ log2(n) + 9: 20 bits for 2k genes): the key is the highest varying bits of the
// value's IEEE bit pattern (non-negative doubles order like their bits), inverted so larger values
// come first; a pass whose digit is the same for all items is skipped. The sort is stable and the
// key monotone in the value, so the only possible disorder is inside runs of equal keys (equal or
// nearly equal values); those runs are checked against the exact comparator and re-sorted with it
// when needed (exact ties usually arrive in column order already), so the result is exactly the
// order of `before`. Items carry their position, so no pass gathers through an index array.
// Measured at ~2k genes per cell: 2 x 1024-count passes beat 3 x 256 (one scatter less) and
// 2 x 2048 (clearing and prefix-summing the larger histograms cost more than they save).
void rank_genes(int64_t n, int64_t k, int32_t* out, RankTLS& t, uint64_t lo, uint64_t hi) {
    if (k > n) k = n;
    if (k <= 0) return;
    const double* v = t.v.data();
    const int32_t* col = t.col.data();
    const int32_t* tok = t.tok.data();
    auto before = [v, col](uint32_t a, uint32_t b) { return v[a] > v[b] || (v[a] == v[b] && col[a] < col[b]); };
    if (n <= 96) {
        uint32_t* idx = t.small.data();
        for (int64_t i = 0; i < n; ++i) idx[i] = static_cast<uint32_t>(i);
        if (k < n)
            std::partial_sort(idx, idx + k, idx + n, before);
        else
            std::sort(idx, idx + n, before);
        for (int64_t i = 0; i < k; ++i) out[i] = tok[idx[i]];
        return;
    }
    int64_t i = 0;
    // two digits of db bits: key bits ~ log2(n) + 9 (n = 2k genes: 20-bit keys, 2 x 1024 counts),
    // so runs of equal keys stay rare while the histograms stay small
    const int lg = 64 - __builtin_clzll(static_cast<uint64_t>(n));
    const int db = std::min(11, std::max(8, (lg + 10) / 2));
    const int kb = 2 * db;
    const uint32_t nb = 1u << db, mask = nb - 1;
    const uint64_t range = hi - lo;
    int shift = 0;
    if (range != 0) {
        const int width = 64 - __builtin_clzll(range);
        shift = width > kb ? width - kb : 0;
    }
    uint32_t h[2][2048];
    std::memset(h[0], 0, nb * sizeof(uint32_t));
    std::memset(h[1], 0, nb * sizeof(uint32_t));
    uint64_t* A = t.pa.data();
    uint64_t* B = t.pb.data();
    for (i = 0; i < n; ++i) {
        const uint64_t kk = (hi - bits_of(v[i])) >> shift;  // < 2^kb; larger value: smaller key
        A[i] = (kk << 32) | static_cast<uint64_t>(i);
        ++h[0][kk & mask];
        ++h[1][kk >> db];
    }
    for (int d = 0; d < 2; ++d) {
        const int sh = 32 + db * d;
        uint32_t* hd = h[d];
        if (hd[(A[0] >> sh) & mask] == static_cast<uint32_t>(n)) continue;  // one digit value: pass is a no-op
        uint32_t sum = 0;
        for (uint32_t b = 0; b < nb; ++b) {
            const uint32_t c = hd[b];
            hd[b] = sum;
            sum += c;
        }
        for (i = 0; i < n; ++i) {
            const uint64_t x = A[i];
            B[hd[(x >> sh) & mask]++] = x;
        }
        std::swap(A, B);
    }
    // write the tokens; a run of equal keys (rare: one predictable branch per item) is first
    // finished with the exact comparator (it may start before k and end after it)
    auto item_before = [&before](uint64_t a, uint64_t b) {
        return before(static_cast<uint32_t>(a), static_cast<uint32_t>(b));
    };
    for (i = 0; i < k; ++i) {
        if (i + 1 < n && !((A[i] ^ A[i + 1]) >> 32)) {
            int64_t j = i + 2;
            while (j < n && !((A[j] ^ A[i]) >> 32)) ++j;
            bool ordered = true;
            for (int64_t q = i + 1; q < j && ordered; ++q) ordered = !item_before(A[q], A[q - 1]);
            if (!ordered) std::sort(A + i, A + j, item_before);
            const int64_t stop = j < k ? j : k;
            for (int64_t q = i; q < stop; ++q) out[q] = tok[static_cast<uint32_t>(A[q])];
            i = stop - 1;
            continue;
        }
        out[i] = tok[static_cast<uint32_t>(A[i])];
    }
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
    // Fast path per row (fast_row_scan): branch-free scans that only detect trouble; on any
    // trouble (a bad value or column, possible duplicates, a sum that might not be exact) the row
    // is redone by the exact scalar loop below, which raises the same error at the same entry.
    const bool injective = slots_injective(p.col_slot, m.n_cols, n_slots);
    // Per-column gene table for pass 2 (one 16-byte load per stored value instead of the
    // dependent col_slot -> slot_median / slot_token / slot_col loads); tie = -1: not a gene.
    struct ColGene {
        double median;
        int32_t token;
        int32_t tie;
    };
    // Geneformer arithmetic multiplies by 1 / median: the table holds the reciprocals then.
    const bool gf = p.arithmetic != 0;
    std::vector<double> slot_factor(p.slot_median, p.slot_median + n_slots);
    if (gf)
        for (double& f : slot_factor) f = 1.0 / f;
    std::vector<ColGene> col_gene(static_cast<size_t>(m.n_cols));
    for (int64_t c = 0; c < m.n_cols; ++c) {
        const int32_t s = p.col_slot[c];
        col_gene[c] = s < 0 ? ColGene{1.0, 0, -1}
                            : ColGene{slot_factor[s], p.slot_token[s], p.slot_col ? p.slot_col[s] : static_cast<int32_t>(c)};
    }
    ScratchPool<Stamp> stamps;
    for_each_blocked(n_sel, threads, stamps, [&](int64_t sel, Stamp& stamp) {
        const int64_t row = rows ? rows[sel] : sel;
        double total = 0.0;
        int64_t detected = 0;
        bool dup = false, non_int = false;
        if (!fast_row_scan(m, row, p.col_slot, injective, &total, &detected)) {
            stamp.begin(n_slots);
            total = 0.0;
            detected = 0;
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
    r.ids.allocate(static_cast<size_t>(r.offsets.back()));
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
            // branch-free compaction: every entry is written at n, n advances only for kept genes
            const T* data = m.data;
            const X* indices = m.indices;
            const ColGene* cg = col_gene.data();
            for (int64_t q = b; q < e; ++q) {
                const T x = data[q];
                const ColGene g = cg[static_cast<int64_t>(indices[q])];
                xs[n] = static_cast<double>(x);
                md[n] = g.median;
                cols[n] = g.tie;
                toks[n] = g.token;
                n += (x != T(0)) & (g.tie >= 0);
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
                md[n] = slot_factor[s];
                cols[n] = p.slot_col ? p.slot_col[s] : t.first_col[s];
                toks[n] = p.slot_token[s];
                ++n;
            }
        }
        int64_t lo = 0, hi = 0;
        if (!gf) {
            normalise(xs, md, t.v.data(), n, total, p.target_sum, &lo, &hi);
        } else if (p.arithmetic == 2) {  // 1 / n_counts in float32, then float64 products
            const float rf = 1.0f / static_cast<float>(total);
            normalise_recip(xs, md, t.v.data(), n, static_cast<double>(rf), p.target_sum, &lo, &hi);
        } else if (p.arithmetic == 3) {  // 1 / n_counts and the first two products in float32
            const float rf = 1.0f / static_cast<float>(total);
            normalise_recip32(xs, md, t.v.data(), n, rf, static_cast<float>(p.target_sum), &lo, &hi);
        } else {
            normalise_recip(xs, md, t.v.data(), n, 1.0 / total, p.target_sum, &lo, &hi);
        }
        const int64_t k = std::min<int64_t>(n, p.max_genes);
        rank_genes(n, k, out, t, static_cast<uint64_t>(lo), static_cast<uint64_t>(hi));
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
