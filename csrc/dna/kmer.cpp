// k-mer tokenizers: Nucleotide Transformer (non-overlapping, split at N) and DNABERT-1
// (overlapping, stride 1). Byte classes come from a 256-entry table (see dna.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "dna/dna.h"

namespace omicskern {
namespace dna {

namespace {

struct KmerIds {
    int32_t kmer_base;    // id of the all-A k-mer; k-mer id = kmer_base + 2-bit code (A T C G order)
    int32_t single_base;  // NT: id of the single-nucleotide token A (then T, C, G)
    int32_t n_id;         // NT: id of N
    int32_t unk_id;       // unknown token
};

[[noreturn]] void fail(int64_t seq, int64_t pos, unsigned char byte, const std::string& allowed) {
    throw InvalidSequence::at(seq, pos, byte, allowed);
}

// ---- Nucleotide Transformer: pieces between separators cut into k-mers from the piece start ----

// Exact token count of [b, e), treating b as a piece start and e as a piece end.
int64_t nt_count(const unsigned char* s, int64_t b, int64_t e, const uint8_t* cls, int k, int64_t seq,
                 const std::string& allowed) {
    int64_t count = 0, run = 0;
    for (int64_t i = b; i < e; ++i) {
        const uint8_t c = cls[s[i]];
        if (c < 4) {
            ++run;
        } else {
            if (c == kBad) fail(seq, i, s[i], allowed);
            count += run / k + run % k + 1;
            run = 0;
        }
    }
    return count + run / k + run % k;
}

template <int K, bool SOFT>
void nt_write(const unsigned char* s, int64_t b, int64_t e, const uint8_t* cls, const KmerIds& ids,
              int32_t* out, uint8_t* sm) {
    int64_t i = b, o = 0;
    while (i < e) {
        if (i + K <= e) {
            uint32_t any = 0, code = 0;
            for (int j = 0; j < K; ++j) {
                const uint32_t c = cls[s[i + j]];
                any |= c;
                code = (code << 2) | (c & 3u);
            }
            if (any < 4) {  // all K bytes are A/C/G/T: one k-mer token
                out[o] = ids.kmer_base + static_cast<int32_t>(code);
                if (SOFT) {
                    uint8_t low = 0;
                    for (int j = 0; j < K; ++j) low |= is_lower(s[i + j]);
                    sm[o] = low;
                }
                ++o;
                i += K;
                continue;
            }
        }
        // The piece ends within the next K bytes (or the range does): leftovers are single tokens.
        int64_t r = 0;
        while (r < K && i + r < e && cls[s[i + r]] < 4) ++r;
        for (int64_t j = 0; j < r; ++j, ++o) {
            out[o] = ids.single_base + cls[s[i + j]];
            if (SOFT) sm[o] = is_lower(s[i + j]);
        }
        i += r;
        if (i < e) {  // a separator: N (or a byte mapped to N) or an unknown byte
            out[o] = cls[s[i]] == kN ? ids.n_id : ids.unk_id;
            if (SOFT) sm[o] = is_lower(s[i]);
            ++o;
            ++i;
        }
    }
}

using NtWriter = void (*)(const unsigned char*, int64_t, int64_t, const uint8_t*, const KmerIds&, int32_t*, uint8_t*);

template <int K>
NtWriter nt_writer(bool soft) {
    return soft ? &nt_write<K, true> : &nt_write<K, false>;
}

NtWriter pick_nt_writer(int k, bool soft) {
    switch (k) {
        case 3: return nt_writer<3>(soft);
        case 4: return nt_writer<4>(soft);
        case 5: return nt_writer<5>(soft);
        case 6: return nt_writer<6>(soft);
        case 7: return nt_writer<7>(soft);
        case 8: return nt_writer<8>(soft);
    }
    throw py::value_error("k must be between 3 and 8");
}

// Safe NT cut points of one long sequence: a cut is safe at a separator, or where the distance
// from the current piece start is a multiple of k (the k-mer phase is then the same as when the
// whole sequence is read from its start).
std::vector<int64_t> nt_cuts(const unsigned char* s, int64_t n, int64_t chunk, const uint8_t* cls, int k,
                             int threads) {
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    std::vector<int64_t> last_sep(static_cast<size_t>(n_chunks), -1);
    parallel_for(n_chunks, threads, [&](int64_t c) {
        const int64_t lo = c * chunk, hi = std::min(n, lo + chunk);
        for (int64_t i = hi - 1; i >= lo; --i)
            if (cls[s[i]] >= 4) {
                last_sep[c] = i;
                break;
            }
    });
    std::vector<int64_t> cuts;
    int64_t piece_start = 0;
    for (int64_t c = 1; c < n_chunks; ++c) {
        if (last_sep[c - 1] >= 0) piece_start = std::max(piece_start, last_sep[c - 1] + 1);
        const int64_t nominal = c * chunk;
        const int64_t pad = (k - (nominal - piece_start) % k) % k;
        int64_t cut = nominal + pad;
        for (int64_t i = nominal; i < nominal + pad && i < n; ++i)
            if (cls[s[i]] >= 4) {
                cut = i;
                break;
            }
        if (cut < n && (cuts.empty() || cut > cuts.back())) cuts.push_back(cut);
    }
    return cuts;
}

// ---- DNABERT-1: every window of k bases (stride 1); a window with a non-ACGT byte is unknown ----

template <bool SOFT>
void overlap_write(const unsigned char* s, int64_t wb, int64_t we, const uint8_t* cls, int k, const KmerIds& ids,
                   int32_t* out, uint8_t* sm) {
    const uint32_t mask = (1u << (2 * k)) - 1u;  // k <= 8
    uint32_t code = 0;
    int64_t run = 0, last_low = -1;
    for (int64_t j = wb; j < wb + k - 1; ++j) {
        const uint32_t c = cls[s[j]];
        code = ((code << 2) | (c & 3u)) & mask;
        run = c < 4 ? run + 1 : 0;
        if (SOFT && is_lower(s[j])) last_low = j;
    }
    for (int64_t i = wb; i < we; ++i) {
        const int64_t j = i + k - 1;
        const uint32_t c = cls[s[j]];
        code = ((code << 2) | (c & 3u)) & mask;
        run = c < 4 ? run + 1 : 0;
        out[i - wb] = run >= k ? ids.kmer_base + static_cast<int32_t>(code) : ids.unk_id;
        if (SOFT) {
            if (is_lower(s[j])) last_low = j;
            sm[i - wb] = last_low >= i;
        }
    }
}

}  // namespace

// overlap=false: Nucleotide Transformer rules; overlap=true: DNABERT-1 windows.
py::tuple kmer_encode(const py::object& seqs, int k, bool overlap,
                      py::array_t<uint8_t, py::array::c_style | py::array::forcecast> cls_lut, int32_t kmer_base,
                      int32_t single_base, int32_t n_id, int32_t unk_id, const std::string& allowed, bool want_soft,
                      int threads, int64_t chunk, const std::vector<int32_t>& prefix,
                      const std::vector<int32_t>& suffix) {
    const Specials sp{prefix, suffix};
    if (k < 3 || k > 8) throw py::value_error("k must be between 3 and 8, got " + std::to_string(k));
    if (cls_lut.ndim() != 1 || cls_lut.size() != 256) throw py::value_error("cls_lut must have 256 entries");
    for (int b = 0; b < 256; ++b)
        if (cls_lut.data()[b] > kBad) throw py::value_error("cls_lut entries must be 0..6");
    const SeqViews pinned(seqs);  // owns/pins the inputs while the GIL is released
    const std::vector<SeqView>& views = pinned.views();
    std::vector<uint8_t> table(cls_lut.data(), cls_lut.data() + 256);
    const uint8_t* cls = table.data();
    const KmerIds ids{kmer_base, single_base, n_id, unk_id};
    const auto bytes = [&](int64_t i) { return reinterpret_cast<const unsigned char*>(views[i].data); };
    if (chunk > 0) chunk = std::max<int64_t>(chunk, k);

    std::vector<Task> tasks;
    {
        py::gil_scoped_release release;
        // One thread gains nothing from cutting sequences (and NT cuts cost a scan).
        tasks = make_tasks(views, resolve_threads(threads) > 1 ? chunk : 0, [&](int64_t i, int64_t c) {
            if (!overlap) return nt_cuts(bytes(i), views[i].size, c, cls, k, threads);
            std::vector<int64_t> cuts;  // overlapping windows: any cut (the next task reads k-1 bytes ahead)
            for (int64_t p = c; p < views[i].size; p += c) cuts.push_back(p);
            return cuts;
        });
    }
    const int64_t n_seqs = static_cast<int64_t>(views.size());
    if (!overlap) {
        NtWriter writer = pick_nt_writer(k, want_soft);
        return run_tasks(
            tasks, n_seqs, want_soft, threads, sp,
            [&](const Task& t) { return nt_count(bytes(t.seq), t.begin, t.end, cls, k, t.seq, allowed); },
            [&](const Task& t, int32_t* out, uint8_t* sm) { writer(bytes(t.seq), t.begin, t.end, cls, ids, out, sm); });
    }
    // Overlapping: a task owns the bytes [begin, end) (it validates them) and the windows starting
    // there; windows read up to k-1 bytes into the next task, whose own pass reports bad bytes.
    return run_tasks(
        tasks, n_seqs, want_soft, threads, sp,
        [&](const Task& t) -> int64_t {
            const unsigned char* s = bytes(t.seq);
            uint8_t any = 0;
            for (int64_t i = t.begin; i < t.end; ++i) any |= static_cast<uint8_t>(cls[s[i]] == kBad);
            if (any)
                for (int64_t i = t.begin; i < t.end; ++i)
                    if (cls[s[i]] == kBad) fail(t.seq, i, s[i], allowed);
            const int64_t windows = views[t.seq].size - k + 1;
            return std::max<int64_t>(0, std::min(t.end, windows) - t.begin);
        },
        [&](const Task& t, int32_t* out, uint8_t* sm) {
            const int64_t we = std::min(t.end, views[t.seq].size - k + 1);
            if (we <= t.begin) return;
            if (sm)
                overlap_write<true>(bytes(t.seq), t.begin, we, cls, k, ids, out, sm);
            else
                overlap_write<false>(bytes(t.seq), t.begin, we, cls, k, ids, out, sm);
        });
}

}  // namespace dna
}  // namespace omicskern
