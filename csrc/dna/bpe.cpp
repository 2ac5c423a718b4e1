// BPE encoding with Hugging Face `tokenizers` semantics (models/bpe/model.rs `merge_word` and
// word.rs `merge_all`), made linear in the word length.
//
// HF keeps a binary heap of candidate merges ordered by (rank, position): it repeatedly takes the
// lowest-rank pair, leftmost first among equal ranks, skips stale entries (left symbol gone, no
// right neighbour, or the pair now there maps to another new id), merges, and pushes the two
// pairs the new symbol forms with its neighbours. On a DNA string with no whitespace the whole
// sequence is one word, so that heap holds O(n) entries (log n per operation, cache misses).
//
// When the merge table is "monotone" (every merge producing token c ranks below every merge
// consuming c: true for any trained BPE), merging at rank r only ever creates candidates of rank
// > r. Then a bucket queue indexed by rank, swept upwards, pops entries in exactly the heap's
// order: bucket r is complete when the sweep reaches it, and sorting its positions gives the
// leftmost-first order among equal ranks. Everything is O(n + number of ranks / 64) per word.
// Non-monotone tables (hand-made vocabularies) use the exact heap, as do short words.
#include "dna/bpe.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "dna/bpe_unicode.h"

namespace omicskern {
namespace bpe {

namespace {

bool in_ranges(const bpe_unicode::CpRange* r, int n, uint32_t cp) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid - 1;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return true;
    }
    return false;
}

struct HeapItem {
    int32_t rank, pos, new_id;
};
// std::push_heap builds a max-heap: "greater" puts the lowest (rank, pos) on top.
inline bool heap_after(const HeapItem& a, const HeapItem& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

constexpr int32_t kWindow = 16384;  // symbols per window of a long word (fits L2 with its queue)
constexpr int32_t kMargin = 1024;   // extra symbols past the cut so that the cut is a true boundary

struct Sym {
    int32_t id, prev, next;  // id -1: merged into its left neighbour
    int32_t rank;            // bucket engine: rank of the pair (this, next), -1 if none
};

struct Block {
    static constexpr int kCap = 14;
    int32_t n, next;
    int32_t pos[kCap];
};

struct Workspace {
    std::vector<int32_t> init, starts;  // a word's initial symbols and their byte offsets
    std::vector<int32_t> cstarts;       // token spans: HF's offsets (cumulative symbol lengths)
    std::vector<Sym> sym;  // one cache line serves a symbol's id and links
    std::vector<std::pair<int32_t, int32_t>> toks, wtoks;  // (id, first initial symbol)
    std::vector<std::pair<int32_t, size_t>> window_starts;
    std::vector<HeapItem> heap;
    std::vector<Block> blocks;   // bucket storage of the current word
    std::vector<int32_t> bhead;  // rank -> newest block of its bucket, -1: empty (kept across words)
    std::vector<int32_t> tmp;
    std::vector<uint64_t> bits;
    std::vector<int32_t> bt_toks, bt_starts;  // backtracking engine
    std::vector<uint64_t> bt_dead;
    std::vector<Segment> segs1, segs2;
    std::vector<std::pair<int64_t, int64_t>> words;
    std::string upper, lower;
};

Workspace& workspace() {
    thread_local Workspace ws;
    return ws;
}

// Rust's str::char_indices().rev().find(!is_whitespace): byte index just after the last
// non-whitespace character of s[0, n), 0 if none.
int64_t space_leftmost_at_end(const char* s, int64_t n) {
    int64_t i = n;
    while (i > 0) {
        int64_t j = i - 1;
        while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
        uint32_t cp;
        if (utf8_decode(reinterpret_cast<const unsigned char*>(s + j), i - j, cp) == 0) return i;
        if (!is_white(cp)) return i;
        i = j;
    }
    return 0;
}

int64_t space_rightmost_at_start(const char* s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        uint32_t cp;
        const int len = utf8_decode(reinterpret_cast<const unsigned char*>(s + i), n - i, cp);
        if (len == 0 || !is_white(cp)) return i;
        i += len;
    }
    return n;
}

// HF AddedVocabulary::find_matches on s[0, n).
void split_added(const AddedMatcher& am, const char* s, int64_t n, std::vector<Segment>& segs) {
    segs.clear();
    if (am.empty() || n == 0) {
        segs.push_back({0, n, -1});
        return;
    }
    int64_t start_offset = 0, pos = 0;
    while (pos < n) {
        if (am.single_first >= 0) {  // e.g. every special token starts with '[': jump with memchr
            const void* hit = std::memchr(s + pos, am.single_first, static_cast<size_t>(n - pos));
            if (!hit) break;
            pos = static_cast<const char*>(hit) - s;
        }
        const unsigned char c = static_cast<unsigned char>(s[pos]);
        if (!am.first[c]) {
            ++pos;
            continue;
        }
        const AddedToken* hit = nullptr;
        for (int32_t t : am.by_first[c]) {  // longest first
            const AddedToken& tok = am.tokens[t];
            const int64_t len = static_cast<int64_t>(tok.content.size());
            if (len <= n - pos && std::memcmp(s + pos, tok.content.data(), static_cast<size_t>(len)) == 0) {
                hit = &tok;
                break;
            }
        }
        if (!hit) {
            ++pos;
            continue;
        }
        const int64_t match_end = pos + static_cast<int64_t>(hit->content.size());
        int64_t start = pos, stop = match_end;
        if (hit->lstrip) start = std::max(space_leftmost_at_end(s, start), start_offset);
        if (hit->rstrip) stop += space_rightmost_at_start(s + stop, n - stop);
        if (start_offset < start) segs.push_back({start_offset, start, -1});
        segs.push_back({start, stop, hit->id});
        start_offset = stop;
        pos = match_end;  // the matcher resumes after the match itself, as HF's find_iter does
    }
    if (start_offset != n) segs.push_back({start_offset, n, -1});
}

void merge_heap(const BpeModel& m, Workspace& ws, int32_t n) {
    Sym* sym = ws.sym.data();
    auto& heap = ws.heap;
    const PairTable& pt = m.pairs;
    const int32_t* rnid = m.rank_new_id.data();
    heap.clear();
    for (int32_t i = 0; i + 1 < n; ++i) {
        const int32_t r = pt.find(sym[i].id, sym[i + 1].id);
        if (r >= 0) heap.push_back({r, i, rnid[r]});
    }
    std::make_heap(heap.begin(), heap.end(), heap_after);
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), heap_after);
        const HeapItem top = heap.back();
        heap.pop_back();
        const int32_t pos = top.pos;
        if (sym[pos].id < 0) continue;  // HF: symbol already merged into its left neighbour
        const int32_t nx = sym[pos].next;
        if (nx < 0) continue;
        const int32_t r = pt.find(sym[pos].id, sym[nx].id);
        if (r < 0 || rnid[r] != top.new_id) continue;  // HF's staleness test (new id only)
        sym[pos].id = top.new_id;
        sym[nx].id = -1;
        const int32_t nn = sym[nx].next;
        sym[pos].next = nn;
        if (nn >= 0) sym[nn].prev = pos;
        const int32_t pv = sym[pos].prev;
        if (pv >= 0) {
            const int32_t r2 = pt.find(sym[pv].id, top.new_id);
            if (r2 >= 0) {
                heap.push_back({r2, pv, rnid[r2]});
                std::push_heap(heap.begin(), heap.end(), heap_after);
            }
        }
        if (nn >= 0) {
            const int32_t r2 = pt.find(top.new_id, sym[nn].id);
            if (r2 >= 0) {
                heap.push_back({r2, pos, rnid[r2]});
                std::push_heap(heap.begin(), heap.end(), heap_after);
            }
        }
    }
}

void merge_bucket(const BpeModel& m, Workspace& ws, int32_t n) {
    Sym* sym = ws.sym.data();
    const PairTable& pt = m.pairs;
    const int32_t R = m.n_ranks;
    if (static_cast<int32_t>(ws.bhead.size()) != R) {
        ws.bhead.assign(R, -1);
        ws.bits.assign((R + 63) / 64, 0);
    }
    int32_t* bhead = ws.bhead.data();
    uint64_t* bits = ws.bits.data();
    auto& blocks = ws.blocks;
    blocks.clear();
    const int64_t nwords = static_cast<int64_t>(ws.bits.size());
    // Each rank's bucket is a chain of 64-byte blocks (newest first): a push writes one cache line
    // and the per-rank header is a single int.
    auto push = [&](int32_t rank, int32_t pos) {
        int32_t h = bhead[rank];
        if (h < 0 || blocks[h].n == Block::kCap) {
            if (h < 0) bits[rank >> 6] |= 1ull << (rank & 63);
            blocks.push_back(Block{0, h, {}});
            h = bhead[rank] = static_cast<int32_t>(blocks.size() - 1);
        }
        Block& bl = blocks[h];
        bl.pos[bl.n++] = pos;
    };
    for (int32_t i = 0; i + 1 < n; ++i) {
        const int32_t r = pt.find(sym[i].id, sym[i + 1].id);
        sym[i].rank = r;
        if (r >= 0) push(r, i);
    }
    sym[n - 1].rank = -1;
    auto& tmp = ws.tmp;
    const int32_t* rank_a = m.rank_a.data();
    const int32_t* rank_b = m.rank_b.data();
    const int32_t* rnid = m.rank_new_id.data();
    int64_t w = 0;
    while (true) {
        while (w < nwords && bits[w] == 0) ++w;
        if (w >= nwords) break;
        const int32_t r = static_cast<int32_t>(w * 64 + __builtin_ctzll(bits[w]));
        bits[w] &= bits[w] - 1;
        tmp.clear();
        for (int32_t h = bhead[r]; h >= 0; h = blocks[h].next)
            tmp.insert(tmp.end(), blocks[h].pos, blocks[h].pos + blocks[h].n);
        bhead[r] = -1;
        const int32_t new_id = rnid[r], a = rank_a[r], b = rank_b[r];
        // Order within a rank matters only where occurrences can overlap ("AAA" with A+A: leftmost
        // first) or, in tables where two merges make one token, through HF's staleness test.
        if (a == b || !m.unique_results) std::sort(tmp.begin(), tmp.end());
        const size_t nt = tmp.size();
        if (m.unique_results) {
            // Each symbol caches the rank of the pair it starts (-1: none, or merged away), so an
            // entry is current iff that rank is still r: one load, no neighbour lookup.
            for (size_t k = 0; k < nt; ++k) {
                const int32_t pos = tmp[k];
                if (sym[pos].rank != r) continue;
                const int32_t nx = sym[pos].next;
                sym[pos].id = new_id;
                sym[nx].id = -1;
                sym[nx].rank = -1;
                const int32_t nn = sym[nx].next;
                sym[pos].next = nn;
                const int32_t pv = sym[pos].prev;
                int32_t r2 = -1;
                if (nn >= 0) {
                    sym[nn].prev = pos;
                    r2 = pt.find(new_id, sym[nn].id);
                    if (r2 >= 0) push(r2, pos);
                }
                sym[pos].rank = r2;
                if (pv >= 0) {
                    const int32_t r3 = pt.find(sym[pv].id, new_id);
                    sym[pv].rank = r3;
                    if (r3 >= 0) push(r3, pv);
                }
            }
            continue;
        }
        for (size_t k = 0; k < nt; ++k) {
            const int32_t pos = tmp[k];
            const int32_t left = sym[pos].id;
            if (left < 0) continue;
            const int32_t nx = sym[pos].next;
            if (nx < 0) continue;
            if (left != a || sym[nx].id != b) {
                // HF's staleness test compares new ids only: another pair with the same new id
                // counts, which can only happen when two merges make the same token.
                if (m.unique_results) continue;
                const int32_t r2 = pt.find(left, sym[nx].id);
                if (r2 < 0 || rnid[r2] != new_id) continue;
            }
            sym[pos].id = new_id;
            sym[nx].id = -1;
            const int32_t nn = sym[nx].next;
            sym[pos].next = nn;
            if (nn >= 0) sym[nn].prev = pos;
            const int32_t pv = sym[pos].prev;
            // Monotone table: these ranks are > r, so the sweep has not passed them.
            if (pv >= 0) {
                const int32_t r2 = pt.find(sym[pv].id, new_id);
                if (r2 >= 0) push(r2, pv);
            }
            if (nn >= 0) {
                const int32_t r2 = pt.find(new_id, sym[nn].id);
                if (r2 >= 0) push(r2, pos);
            }
        }
    }
}

// Runs the merges on the initial symbols init[0, n) (ws.sym holds the result as a linked list
// from position 0).
void run_merges(const BpeModel& m, Workspace& ws, const int32_t* init, int32_t n, int algo) {
    if (static_cast<int32_t>(ws.sym.size()) < n) ws.sym.resize(static_cast<size_t>(n));
    Sym* sym = ws.sym.data();
    for (int32_t i = 0; i < n; ++i) sym[i] = {init[i], i - 1, i + 1, -1};
    sym[n - 1].next = -1;
    if (n < 2) return;
    const bool bucket = algo == 2 || (algo == 0 && n >= 48);
    if (bucket && m.monotone) merge_bucket(m, ws, n);
    else merge_heap(m, ws, n);
}

// Long words (a whole chromosome is one word) in cache-sized windows, exactly.
//
// For a monotone table a token sequence is THE BPE encoding of its string iff every two adjacent
// tokens are "compatible": encoding their concatenation alone gives back exactly those two tokens
// (a merge across their boundary would have to happen first in that pair alone). Tokens of one
// window's encoding are pairwise compatible, so the windows' tokens, cut at a token boundary well
// inside each window, form the encoding of the word as soon as each seam between windows passes
// the compatibility test, which is checked here. A failed test (a boundary that only exists in the
// window, e.g. inside a long homopolymer) returns false: the caller encodes the word in one piece.
bool merge_windows(const BpeModel& m, Workspace& ws, const int32_t* init, int32_t n, int algo, int32_t window,
                   int32_t margin) {
    auto& toks = ws.toks;
    auto& wt = ws.wtoks;
    auto& done = ws.window_starts;  // (window start, toks.size() before its tokens), to undo windows
    done.clear();
    int32_t cur = 0;
    int64_t extra = 0;  // more right context after a failed seam
    int64_t redo = 0;
    const int64_t max_redo = 16 + 4 * (n / window);
    while (cur < n) {
        const int32_t e = static_cast<int32_t>(
            std::min<int64_t>(n, static_cast<int64_t>(cur) + window + margin + extra));
        run_merges(m, ws, init + cur, e - cur, algo);
        wt.clear();
        for (int32_t pos = 0; pos >= 0; pos = ws.sym[pos].next) wt.emplace_back(ws.sym[pos].id, cur + pos);
        size_t take = wt.size();
        int32_t next_cur = n;
        if (e < n) {
            take = 0;
            for (size_t k = wt.size(); k-- > 1;)
                if (wt[k].second <= cur + window) {
                    take = k;
                    break;
                }
            if (take == 0) return false;  // one token spans the whole window
            next_cur = wt[take].second;
        }
        if (!toks.empty()) {  // seam test: (last kept token, first token of this window)
            const int32_t a = toks.back().second, b = wt[0].second;
            const int32_t c = wt.size() > 1 ? wt[1].second : e;
            run_merges(m, ws, init + a, c - a, algo);
            const Sym* sym = ws.sym.data();
            const int32_t second = sym[0].next;
            if (sym[0].id != toks.back().first || second != b - a || sym[second].id != wt[0].first ||
                sym[second].next != -1) {
                // The previous cut was no true boundary (e.g. inside a long homopolymer): redo the
                // previous window with 4x more right context (decaying again after successes); give up
                // (whole word in one piece) after a bounded number of redos.
                if (++redo > max_redo || done.empty()) return false;
                cur = done.back().first;
                toks.resize(done.back().second);
                done.pop_back();
                extra = (extra + margin) * 4;
                continue;
            }
        }
        done.emplace_back(cur, toks.size());
        toks.insert(toks.end(), wt.begin(), wt.begin() + static_cast<std::ptrdiff_t>(take));
        cur = next_cur;
        extra /= 4;
    }
    return true;
}

// HF BPE::merge_word + Word::merge_all on one pre-tokenized word w[0, len), whose first byte is
// at `base` in the sequence (for error positions, the soft mask and the token spans).
//
// spans (when not null) gets each token's [start, end) byte offsets in the sequence, as HF's
// Word::get_offsets computes them: the cumulative byte lengths of the word's initial symbols (a
// pending [UNK] is placed when it is added, a character that has no symbol at all, with neither an
// unk token nor byte fallback, is dropped without advancing the position, exactly as in HF).
void encode_word(const BpeModel& m, Workspace& ws, const char* w, int64_t len, const char* orig, int64_t base,
                 int64_t index, int algo, std::vector<int32_t>& out, std::vector<uint8_t>* soft,
                 std::vector<int64_t>* spans) {
    if (len <= 0) return;
    if (len > INT32_MAX - 2)
        throw std::length_error("sequence " + std::to_string(index) + ": a single BPE word longer than 2^31 bytes");
    const bool track = soft != nullptr;
    const bool want_spans = spans != nullptr;
    const auto* u = reinterpret_cast<const unsigned char*>(w);
    if ((algo == 0 || algo == 4) && m.bt.ok) {
        // Words of letters (DNA): greedy longest match with backtracking (bpe_backtrack.cpp). With
        // an [UNK] that no merge uses, other ASCII characters (N, soft-masked bases for a vocabulary
        // without lower case) become [UNK] symbols that no merge can cross: the letter runs between
        // them are encoded on their own, the [UNK]s emitted as HF does (one per character, or one
        // per run with fuse_unk). Anything else (non-ASCII, no such [UNK]) takes the engines below.
        const int8_t* alpha = m.bt.alpha;
        int64_t k = 0;
        while (k < len && alpha[u[k]] >= 0) ++k;
        bool whole = k == len;
        if (!whole && m.bt.unk_inert) {
            whole = true;
            for (int64_t q = k; q < len && whole; ++q) whole = u[q] < 0x80;
        }
        if (whole) {
            const size_t out0 = out.size(), soft0 = track ? soft->size() : 0;
            const size_t spans0 = want_spans ? spans->size() : 0;
            auto emit = [&](int32_t id, int64_t a, int64_t b) {
                out.push_back(id);
                if (want_spans) {
                    spans->push_back(base + a);
                    spans->push_back(base + b);
                }
                if (track) {
                    uint8_t lower = 0;
                    for (int64_t q = base + a; q < base + b; ++q) lower |= (orig[q] >= 'a' && orig[q] <= 'z');
                    soft->push_back(lower);
                }
            };
            bool ok = true;
            for (int64_t a = 0; a < len && ok;) {
                int64_t b = a;
                if (alpha[u[a]] >= 0) {
                    while (b < len && alpha[u[b]] >= 0) ++b;
                    const int32_t nt = backtrack_word(m, u + a, static_cast<int32_t>(b - a), ws.bt_toks,
                                                      ws.bt_starts, ws.bt_dead);
                    if (nt < 0) {
                        ok = false;
                        break;
                    }
                    const int32_t* bt = ws.bt_toks.data();
                    const int32_t* st = ws.bt_starts.data();
                    for (int32_t j = 0; j < nt; ++j) emit(bt[j], a + st[j], a + (j + 1 < nt ? st[j + 1] : b - a));
                } else {
                    while (b < len && alpha[u[b]] < 0) ++b;
                    if (m.fuse_unk) emit(m.unk_id, a, b);
                    else
                        for (int64_t q = a; q < b; ++q) emit(m.unk_id, q, q + 1);
                }
                a = b;
            }
            if (ok) return;
            out.resize(out0);  // cannot happen (see bpe_backtrack.cpp); the exact engines take over
            if (track) soft->resize(soft0);
            if (want_spans) spans->resize(spans0);
        }
    }
    // At most one symbol per byte: size once, never shrink (no per-word clearing).
    if (static_cast<int64_t>(ws.init.size()) < len) ws.init.resize(static_cast<size_t>(len));
    if (track && static_cast<int64_t>(ws.starts.size()) < len) ws.starts.resize(static_cast<size_t>(len));
    if (want_spans && static_cast<int64_t>(ws.cstarts.size()) < len + 1) ws.cstarts.resize(static_cast<size_t>(len + 1));
    int32_t* sy = ws.init.data();
    int32_t* starts = ws.starts.data();
    int32_t* cst = ws.cstarts.data();
    int32_t n = 0;
    int32_t cum = 0;  // HF's running offset: sum of the byte lengths of the symbols added so far
    // start: the symbol's first byte (soft mask); nbytes: its byte length (HF's Symbol::len).
    auto add = [&](int32_t id, int32_t start, int32_t nbytes) {
        sy[n] = id;
        if (track) starts[n] = start;
        if (want_spans) {
            cst[n] = cum;
            cum += nbytes;
        }
        ++n;
    };
    int64_t i = 0;
    if (!m.has_affix) {  // fast path: a run of known ASCII characters (DNA)
        const int32_t* tab = m.ascii[0];
        for (; i < len; ++i) {
            const unsigned char c = u[i];
            if (c >= 0x80 || tab[c] < 0) break;
            sy[n] = tab[c];
            if (track) starts[n] = static_cast<int32_t>(i);
            if (want_spans) cst[n] = static_cast<int32_t>(i);
            ++n;
        }
        cum = static_cast<int32_t>(i);
    }
    int32_t pend = -1, pend_start = 0, pend_len = 0;  // pending unk symbol (HF's `unk`: id, byte length)
    while (i < len) {
        const unsigned char c = u[i];
        uint32_t cp = c;
        int clen = 1;
        if (c >= 0x80) {
            clen = utf8_decode(u + i, len - i, cp);
            if (clen == 0) throw InvalidSequence::at(index, base + i, c, "valid UTF-8");
        }
        int variant = 0;
        if (m.has_affix) variant = (i == 0 ? 0 : 1) + (i + clen == len ? 2 : 0);
        int32_t id;
        if (cp < 128) {
            id = m.ascii[variant][cp];
        } else {
            auto it = m.cp[variant].find(cp);
            id = it == m.cp[variant].end() ? -1 : it->second;
        }
        const int32_t start = static_cast<int32_t>(i);
        i += clen;
        if (id >= 0) {
            if (pend >= 0) {
                add(pend, pend_start, pend_len);
                pend = -1;
            }
            add(id, start, clen);
            continue;
        }
        if (m.byte_fallback) {
            bool all = true;
            for (int k = 0; k < clen; ++k) all = all && m.byte_ids[u[start + k]] >= 0;
            if (all) {  // HF adds the byte tokens without flushing a pending unk
                for (int k = 0; k < clen; ++k) add(m.byte_ids[u[start + k]], start + k, 1);
                continue;
            }
        }
        if (m.unk_id >= 0) {
            if (pend >= 0 && m.fuse_unk) {
                pend_len += clen;
                continue;
            }
            if (pend >= 0) add(pend, pend_start, pend_len);
            pend = m.unk_id;
            pend_start = start;
            pend_len = clen;
        }
    }
    if (pend >= 0) add(pend, pend_start, pend_len);
    if (want_spans) cst[n] = cum;
    if (n == 0) return;
    auto& toks = ws.toks;
    toks.clear();
    // algo 3 (tests): tiny windows, so that short inputs exercise the seams and the fallback.
    const int32_t window = algo == 3 ? 64 : kWindow, margin = algo == 3 ? 16 : kMargin;
    const int engine = algo == 1 || algo == 2 ? algo : 0;
    if (!(m.monotone && engine == 0 && n > window + margin &&
          merge_windows(m, ws, sy, n, engine, window, margin))) {
        toks.clear();
        run_merges(m, ws, sy, n, engine);
        for (int32_t pos = 0; pos >= 0; pos = ws.sym[pos].next) toks.emplace_back(ws.sym[pos].id, pos);
    }
    for (size_t k = 0; k < toks.size(); ++k) {
        out.push_back(toks[k].first);
        if (want_spans) {
            spans->push_back(base + cst[toks[k].second]);
            spans->push_back(base + (k + 1 < toks.size() ? cst[toks[k + 1].second] : cst[n]));
        }
        if (track) {
            const int64_t a = base + starts[toks[k].second];
            const int64_t b = base + (k + 1 < toks.size() ? starts[toks[k + 1].second] : len);
            uint8_t lower = 0;
            for (int64_t q = a; q < b; ++q) lower |= (orig[q] >= 'a' && orig[q] <= 'z');
            soft->push_back(lower);
        }
    }
}

}  // namespace

std::vector<int32_t> merge_symbols(const BpeModel& m, const std::vector<int32_t>& init) {
    std::vector<int32_t> out;
    if (init.empty()) return out;
    Workspace& ws = workspace();
    run_merges(m, ws, init.data(), static_cast<int32_t>(init.size()), 1);
    for (int32_t pos = 0; pos >= 0; pos = ws.sym[pos].next) out.push_back(ws.sym[pos].id);
    return out;
}

int utf8_decode(const unsigned char* p, int64_t n, uint32_t& cp) {
    const unsigned char c = p[0];
    if (c < 0x80) {
        cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) { len = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (int k = 1; k < len; ++k) {
        if ((p[k] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    cp = v;
    return len;
}

int word_class(uint32_t cp) {
    if (in_ranges(bpe_unicode::kWord, bpe_unicode::kWord_n, cp)) return 0;
    if (in_ranges(bpe_unicode::kSpace, bpe_unicode::kSpace_n, cp)) return 1;
    return 2;
}

bool is_white(uint32_t cp) { return in_ranges(bpe_unicode::kWhite, bpe_unicode::kWhite_n, cp); }

void PairTable::build(const std::vector<int32_t>& a, const std::vector<int32_t>& b, const std::vector<int32_t>& rank,
                      int32_t vocab_size) {
    uint64_t cap = 16;
    int bits = 4;
    while (cap < 2 * a.size() + 2) {
        cap <<= 1;
        ++bits;
    }
    table.assign(cap, Entry{kEmpty, -1, 0});
    mask = cap - 1;
    shift = 64 - bits;
    for (size_t i = 0; i < a.size(); ++i) {
        const uint64_t k = key(a[i], b[i]);
        uint64_t h = (k * 0x9E3779B97F4A7C15ull) >> shift;
        while (table[h].key != kEmpty && table[h].key != k) h = (h + 1) & mask;
        table[h].key = k;
        table[h].rank = rank[i];
    }
    dense_n = 0;
    dense.clear();
    if (a.size() < 32767) {  // ranks fit int16
        dense_n = std::min<int32_t>(vocab_size, 256);
        dense.assign(static_cast<size_t>(dense_n) * dense_n, -1);
        for (size_t i = 0; i < a.size(); ++i)
            if (a[i] < dense_n && b[i] < dense_n) dense[static_cast<size_t>(a[i]) * dense_n + b[i]] = static_cast<int16_t>(rank[i]);
    }
}

void AddedMatcher::build(std::vector<AddedToken> toks) {
    tokens.clear();
    for (auto& t : toks)
        if (!t.content.empty()) tokens.push_back(std::move(t));
    by_first.assign(256, {});
    std::memset(first, 0, sizeof(first));
    for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) {
        const unsigned char c = static_cast<unsigned char>(tokens[i].content[0]);
        first[c] = true;
        by_first[c].push_back(i);
    }
    single_first = -1;
    int distinct = 0;
    for (int c = 0; c < 256; ++c)
        if (first[c]) {
            ++distinct;
            single_first = c;
        }
    if (distinct != 1) single_first = -1;
    for (auto& v : by_first)
        std::stable_sort(v.begin(), v.end(), [&](int32_t x, int32_t y) {
            return tokens[x].content.size() > tokens[y].content.size();
        });
}

bool check_monotone(const BpeModel& m, const std::vector<int32_t>& a, const std::vector<int32_t>& b,
                    const std::vector<int32_t>& rank, const std::vector<int32_t>& new_id) {
    // Only merges that survive in the pair table count (HF keeps the last of duplicate pairs).
    std::vector<int32_t> max_prod(m.vocab_size, -1), min_cons(m.vocab_size, INT32_MAX);
    for (size_t i = 0; i < a.size(); ++i) {
        if (m.pairs.find(a[i], b[i]) != rank[i]) continue;
        max_prod[new_id[i]] = std::max(max_prod[new_id[i]], rank[i]);
        min_cons[a[i]] = std::min(min_cons[a[i]], rank[i]);
        min_cons[b[i]] = std::min(min_cons[b[i]], rank[i]);
    }
    for (int32_t c = 0; c < m.vocab_size; ++c)
        if (max_prod[c] >= 0 && min_cons[c] <= max_prod[c]) return false;
    return true;
}

void pre_tokenize(const BpeModel& m, const char* p, int64_t n, int64_t base, int64_t index,
                  std::vector<std::pair<int64_t, int64_t>>& words) {
    if (n <= 0) return;
    if (m.pre == PreTok::None) {
        words.emplace_back(0, n);
        return;
    }
    const auto* u = reinterpret_cast<const unsigned char*>(p);
    int cur = -1;  // class of the open run, -1: none
    int64_t start = 0;
    const bool ws_regex = m.pre == PreTok::Whitespace;
    for (int64_t i = 0; i < n;) {
        if (cur == 0 && ws_regex) {  // inside a \w run (all of a DNA sequence): tight ASCII loop
            while (i < n && u[i] < 0x80 && m.ascii_class[u[i]] == 0) ++i;
            if (i >= n) break;
        }
        const unsigned char c = u[i];
        int cls, clen = 1;
        if (c < 0x80) {
            cls = m.pre == PreTok::Whitespace ? m.ascii_class[c] : (is_white(c) ? 1 : 0);
        } else {
            uint32_t cp;
            clen = utf8_decode(u + i, n - i, cp);
            if (clen == 0) throw InvalidSequence::at(index, base + i, c, "valid UTF-8");
            cls = m.pre == PreTok::Whitespace ? word_class(cp) : (is_white(cp) ? 1 : 0);
        }
        if (cls == 1) {
            if (cur >= 0) words.emplace_back(start, i);
            cur = -1;
        } else if (cls != cur) {
            if (cur >= 0) words.emplace_back(start, i);
            cur = cls;
            start = i;
        }
        i += clen;
    }
    if (cur >= 0) words.emplace_back(start, n);
}

void encode_sequence(const BpeModel& m, const char* p, int64_t n, int64_t index, int algo, bool uppercase,
                     std::vector<int32_t>& out, std::vector<uint8_t>* soft, std::vector<int64_t>* spans) {
    Workspace& ws = workspace();
    const char* text = p;
    if (uppercase) {
        ws.upper.assign(p, static_cast<size_t>(n));
        for (auto& ch : ws.upper)
            if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 32);
        text = ws.upper.data();
    }
    // Nested calls below use other workspace vectors than the one being iterated.
    split_added(m.added_raw, text, n, ws.segs1);
    for (const Segment& s1 : ws.segs1) {
        if (s1.id >= 0) {
            out.push_back(s1.id);
            if (soft) soft->push_back(0);
            if (spans) {
                spans->push_back(s1.start);
                spans->push_back(s1.end);
            }
            continue;
        }
        const char* piece = text + s1.start;
        const int64_t plen = s1.end - s1.start;
        std::string lowered;
        if (m.norm == Norm::Lowercase) {
            lowered.assign(piece, static_cast<size_t>(plen));
            for (int64_t k = 0; k < plen; ++k) {
                const unsigned char c = static_cast<unsigned char>(lowered[k]);
                if (c >= 0x80)
                    throw InvalidSequence::at(index, s1.start + k, c,
                                              "ASCII (this tokenizer.json's Lowercase normalizer is supported for "
                                              "ASCII text only)");
                if (c >= 'A' && c <= 'Z') lowered[k] = static_cast<char>(c + 32);
            }
            piece = lowered.data();
        }
        split_added(m.added_norm, piece, plen, ws.segs2);
        for (const Segment& s2 : ws.segs2) {
            if (s2.id >= 0) {
                out.push_back(s2.id);
                if (soft) soft->push_back(0);
                if (spans) {
                    spans->push_back(s1.start + s2.start);
                    spans->push_back(s1.start + s2.end);
                }
                continue;
            }
            ws.words.clear();
            pre_tokenize(m, piece + s2.start, s2.end - s2.start, s1.start + s2.start, index, ws.words);
            for (const auto& wd : ws.words) {
                const int64_t off = s2.start + wd.first;
                encode_word(m, ws, piece + off, wd.second - wd.first, p, s1.start + off, index, algo, out, soft, spans);
            }
        }
    }
}

}  // namespace bpe
}  // namespace omicskern
