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

struct Workspace {
    std::vector<int32_t> ids, prev, next, starts;
    std::vector<HeapItem> heap;
    std::vector<int32_t> head, tail, pool_pos, pool_link, tmp;
    std::vector<uint64_t> bits;
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
    auto& ids = ws.ids;
    auto& prev = ws.prev;
    auto& next = ws.next;
    auto& heap = ws.heap;
    const PairTable& pt = m.pairs;
    heap.clear();
    for (int32_t i = 0; i + 1 < n; ++i) {
        const int64_t s = pt.find(ids[i], ids[i + 1]);
        if (s >= 0) heap.push_back({pt.ranks[s], i, pt.new_ids[s]});
    }
    std::make_heap(heap.begin(), heap.end(), heap_after);
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), heap_after);
        const HeapItem top = heap.back();
        heap.pop_back();
        const int32_t pos = top.pos;
        if (ids[pos] < 0) continue;
        const int32_t nx = next[pos];
        if (nx < 0) continue;
        const int64_t s = pt.find(ids[pos], ids[nx]);
        if (s < 0 || pt.new_ids[s] != top.new_id) continue;
        ids[pos] = top.new_id;
        ids[nx] = -1;
        const int32_t nn = next[nx];
        next[pos] = nn;
        if (nn >= 0) prev[nn] = pos;
        const int32_t pv = prev[pos];
        if (pv >= 0) {
            const int64_t s2 = pt.find(ids[pv], ids[pos]);
            if (s2 >= 0) {
                heap.push_back({pt.ranks[s2], pv, pt.new_ids[s2]});
                std::push_heap(heap.begin(), heap.end(), heap_after);
            }
        }
        if (nn >= 0) {
            const int64_t s2 = pt.find(ids[pos], ids[nn]);
            if (s2 >= 0) {
                heap.push_back({pt.ranks[s2], pos, pt.new_ids[s2]});
                std::push_heap(heap.begin(), heap.end(), heap_after);
            }
        }
    }
}

void merge_bucket(const BpeModel& m, Workspace& ws, int32_t n) {
    auto& ids = ws.ids;
    auto& prev = ws.prev;
    auto& next = ws.next;
    const PairTable& pt = m.pairs;
    const int32_t R = m.n_ranks;
    if (static_cast<int32_t>(ws.head.size()) != R) {
        ws.head.assign(R, -1);
        ws.tail.assign(R, -1);
        ws.bits.assign((R + 63) / 64, 0);
    }
    int32_t* head = ws.head.data();
    int32_t* tail = ws.tail.data();
    uint64_t* bits = ws.bits.data();
    const int64_t nwords = static_cast<int64_t>(ws.bits.size());
    auto& pool_pos = ws.pool_pos;
    auto& pool_link = ws.pool_link;
    pool_pos.clear();
    pool_link.clear();
    auto push = [&](int32_t rank, int32_t pos) {
        const int32_t e = static_cast<int32_t>(pool_pos.size());
        pool_pos.push_back(pos);
        pool_link.push_back(-1);
        if (head[rank] < 0) {
            head[rank] = e;
            bits[rank >> 6] |= 1ull << (rank & 63);
        } else {
            pool_link[tail[rank]] = e;
        }
        tail[rank] = e;
    };
    for (int32_t i = 0; i + 1 < n; ++i) {
        const int64_t s = pt.find(ids[i], ids[i + 1]);
        if (s >= 0) push(pt.ranks[s], i);
    }
    auto& tmp = ws.tmp;
    int64_t w = 0;
    while (true) {
        while (w < nwords && bits[w] == 0) ++w;
        if (w >= nwords) break;
        const int32_t r = static_cast<int32_t>(w * 64 + __builtin_ctzll(bits[w]));
        bits[w] &= bits[w] - 1;
        tmp.clear();
        for (int32_t e = head[r]; e >= 0; e = pool_link[e]) tmp.push_back(pool_pos[e]);
        head[r] = -1;
        // Pushes arrive in runs that are each sorted; most buckets are sorted already.
        if (!std::is_sorted(tmp.begin(), tmp.end())) std::sort(tmp.begin(), tmp.end());
        const int32_t new_id = m.rank_new_id[r];
        for (const int32_t pos : tmp) {
            if (ids[pos] < 0) continue;
            const int32_t nx = next[pos];
            if (nx < 0) continue;
            const int64_t s = pt.find(ids[pos], ids[nx]);
            if (s < 0 || pt.new_ids[s] != new_id) continue;
            ids[pos] = new_id;
            ids[nx] = -1;
            const int32_t nn = next[nx];
            next[pos] = nn;
            if (nn >= 0) prev[nn] = pos;
            const int32_t pv = prev[pos];
            // Monotone table: these ranks are > r, so the sweep has not passed them.
            if (pv >= 0) {
                const int64_t s2 = pt.find(ids[pv], new_id);
                if (s2 >= 0) push(pt.ranks[s2], pv);
            }
            if (nn >= 0) {
                const int64_t s2 = pt.find(new_id, ids[nn]);
                if (s2 >= 0) push(pt.ranks[s2], pos);
            }
        }
    }
}

// HF BPE::merge_word + Word::merge_all on one pre-tokenized word w[0, len), whose first byte is
// at `base` in the sequence (for error positions and the soft mask).
void encode_word(const BpeModel& m, Workspace& ws, const char* w, int64_t len, const char* orig, int64_t base,
                 int64_t index, int algo, std::vector<int32_t>& out, std::vector<uint8_t>* soft) {
    if (len <= 0) return;
    if (len > INT32_MAX - 2)
        throw std::length_error("sequence " + std::to_string(index) + ": a single BPE word longer than 2^31 bytes");
    auto& ids = ws.ids;
    auto& starts = ws.starts;
    const bool track = soft != nullptr;
    ids.clear();
    starts.clear();
    int32_t pend = -1, pend_start = 0;  // pending unk symbol (HF's `unk`)
    const auto* u = reinterpret_cast<const unsigned char*>(w);
    for (int64_t i = 0; i < len;) {
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
                ids.push_back(pend);
                if (track) starts.push_back(pend_start);
                pend = -1;
            }
            ids.push_back(id);
            if (track) starts.push_back(start);
            continue;
        }
        if (m.byte_fallback) {
            bool all = true;
            for (int k = 0; k < clen; ++k) all = all && m.byte_ids[u[start + k]] >= 0;
            if (all) {  // HF adds the byte tokens without flushing a pending unk
                for (int k = 0; k < clen; ++k) {
                    ids.push_back(m.byte_ids[u[start + k]]);
                    if (track) starts.push_back(start + k);
                }
                continue;
            }
        }
        if (m.unk_id >= 0) {
            if (pend >= 0 && m.fuse_unk) continue;
            if (pend >= 0) {
                ids.push_back(pend);
                if (track) starts.push_back(pend_start);
            }
            pend = m.unk_id;
            pend_start = start;
        }
    }
    if (pend >= 0) {
        ids.push_back(pend);
        if (track) starts.push_back(pend_start);
    }
    const int32_t n = static_cast<int32_t>(ids.size());
    if (n == 0) return;
    ws.prev.resize(n);
    ws.next.resize(n);
    for (int32_t i = 0; i < n; ++i) {
        ws.prev[i] = i - 1;
        ws.next[i] = i + 1 < n ? i + 1 : -1;
    }
    if (n >= 2) {
        const bool bucket = algo == 2 || (algo == 0 && m.monotone && n >= 48);
        if (bucket && m.monotone) merge_bucket(m, ws, n);
        else merge_heap(m, ws, n);
    }
    for (int32_t pos = 0; pos >= 0; pos = ws.next[pos]) {
        out.push_back(ids[pos]);
        if (track) {
            const int64_t a = base + starts[pos];
            const int64_t b = base + (ws.next[pos] >= 0 ? starts[ws.next[pos]] : len);
            uint8_t lower = 0;
            for (int64_t k = a; k < b; ++k) lower |= (orig[k] >= 'a' && orig[k] <= 'z');
            soft->push_back(lower);
        }
    }
}

}  // namespace

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
                      const std::vector<int32_t>& new_id) {
    uint64_t cap = 16;
    int bits = 4;
    while (cap < 2 * a.size() + 2) {
        cap <<= 1;
        ++bits;
    }
    keys.assign(cap, kEmpty);
    ranks.assign(cap, -1);
    new_ids.assign(cap, -1);
    mask = cap - 1;
    shift = 64 - bits;
    for (size_t i = 0; i < a.size(); ++i) {
        const uint64_t k = key(a[i], b[i]);
        uint64_t h = (k * 0x9E3779B97F4A7C15ull) >> shift;
        while (keys[h] != kEmpty && keys[h] != k) h = (h + 1) & mask;
        keys[h] = k;  // a later duplicate overwrites, as HF's HashMap collect does
        ranks[h] = rank[i];
        new_ids[h] = new_id[i];
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
        const int64_t s = m.pairs.find(a[i], b[i]);
        if (s < 0 || m.pairs.ranks[s] != rank[i]) continue;
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
    for (int64_t i = 0; i < n;) {
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
                     std::vector<int32_t>& out, std::vector<uint8_t>* soft) {
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
                continue;
            }
            ws.words.clear();
            pre_tokenize(m, piece + s2.start, s2.end - s2.start, s1.start + s2.start, index, ws.words);
            for (const auto& wd : ws.words) {
                const int64_t off = s2.start + wd.first;
                encode_word(m, ws, piece + off, wd.second - wd.first, p, s1.start + off, index, algo, out, soft);
            }
        }
    }
}

}  // namespace bpe
}  // namespace omicskern
