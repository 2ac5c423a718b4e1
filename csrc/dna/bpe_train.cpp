// BPE trainer (as Hugging Face's BpeTrainer, which DNABERT-2 used), linear-memory and fast on
// long DNA words.
//
// HF re-scans every word containing the chosen pair at each merge, which is O(word length) per
// merge for a genome-long word. Here every symbol of every distinct word lives in one flat linked
// list, each pair keeps the list of positions where it was formed, and a merge visits only those
// positions (stale ones are skipped on a cheap check). Pair counts are updated incrementally with
// the same +/- changes HF's Word::merge reports.
//
// Selection rule (deterministic, the same as HF's heap): the pair with the highest count (word
// frequency x occurrences, overlapping occurrences of "AA" in "AAA" all counted); ties go to the
// smallest (left id, right id). Within a word, occurrences merge left to right ("AAA" -> "AA" "A").
// Ids: special tokens first (in the given order), then the alphabet sorted by code point, then
// one new id per merge (an existing id when the merged string is already in the vocabulary).
#include <algorithm>
#include <cstdint>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/errors.h"
#include "dna/bpe.h"

namespace omicskern {
namespace bpe {

namespace {

struct Cand {
    int64_t count;
    int32_t a, b;
};
struct CandLess {  // priority_queue top = highest count, then smallest (a, b)
    bool operator()(const Cand& x, const Cand& y) const {
        if (x.count != y.count) return x.count < y.count;
        if (x.a != y.a) return x.a > y.a;
        return x.b > y.b;
    }
};

struct PairInfo {
    int64_t count = 0;
    std::vector<int32_t> where;  // left positions where the pair was formed (may be stale)
};

void append_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

}  // namespace

// seqs: views of the corpus; pre: 0 none, 1 Whitespace, 2 WhitespaceSplit.
TrainResult train(const std::vector<std::pair<const char*, int64_t>>& seqs, int64_t vocab_size,
                  const std::vector<std::string>& specials, int64_t min_frequency, int pre,
                  const std::vector<uint32_t>& initial_alphabet, int64_t limit_alphabet) {
    BpeModel cls;  // only for the pre-tokenizer's character classes
    cls.pre = static_cast<PreTok>(pre);
    for (int c = 0; c < 128; ++c) cls.ascii_class[c] = static_cast<uint8_t>(word_class(static_cast<uint32_t>(c)));

    // 1. distinct words and their counts
    std::unordered_map<std::string_view, int64_t> word_count;
    std::vector<std::string_view> word_order;  // first-seen order (deterministic)
    std::vector<std::pair<int64_t, int64_t>> words;
    for (size_t i = 0; i < seqs.size(); ++i) {
        words.clear();
        pre_tokenize(cls, seqs[i].first, seqs[i].second, 0, static_cast<int64_t>(i), words);
        for (const auto& w : words) {
            std::string_view v(seqs[i].first + w.first, static_cast<size_t>(w.second - w.first));
            auto it = word_count.find(v);
            if (it == word_count.end()) {
                word_count.emplace(v, 1);
                word_order.push_back(v);
            } else {
                ++it->second;
            }
        }
    }

    // 2. alphabet (HF compute_alphabet): weighted char counts, initial alphabet forced in
    std::unordered_map<uint32_t, int64_t> char_count;
    int64_t total_chars = 0;
    for (const auto& w : word_order) {
        const int64_t c = word_count[w];
        const auto* u = reinterpret_cast<const unsigned char*>(w.data());
        for (size_t i = 0; i < w.size();) {
            uint32_t cp;
            const int len = utf8_decode(u + i, static_cast<int64_t>(w.size() - i), cp);
            if (len == 0) throw std::invalid_argument("training corpus is not valid UTF-8");
            char_count[cp] += c;
            i += static_cast<size_t>(len);
            ++total_chars;
        }
    }
    if (total_chars >= INT32_MAX) throw std::length_error("training corpus: more than 2^31 distinct-word characters");
    for (uint32_t cp : initial_alphabet) char_count[cp] = INT64_MAX;
    std::vector<std::pair<uint32_t, int64_t>> alpha(char_count.begin(), char_count.end());
    if (limit_alphabet >= 0 && static_cast<int64_t>(alpha.size()) > limit_alphabet) {
        // Keep the most frequent; among equal counts the smaller code point (documented rule).
        std::sort(alpha.begin(), alpha.end(), [](const auto& x, const auto& y) {
            return x.second != y.second ? x.second > y.second : x.first < y.first;
        });
        alpha.resize(static_cast<size_t>(limit_alphabet));
    }
    std::sort(alpha.begin(), alpha.end());

    TrainResult res;
    std::unordered_map<std::string, int32_t> tok2id;
    auto add_token = [&](const std::string& s) -> int32_t {
        auto it = tok2id.find(s);
        if (it != tok2id.end()) return it->second;
        const int32_t id = static_cast<int32_t>(res.vocab.size());
        res.vocab.push_back(s);
        tok2id.emplace(s, id);
        return id;
    };
    for (const auto& s : specials) add_token(s);
    std::unordered_map<uint32_t, int32_t> cp2id;
    for (const auto& a : alpha) {
        std::string s;
        append_utf8(s, a.first);
        cp2id[a.first] = add_token(s);
    }

    // 3. symbols of all distinct words in one linked list (characters outside the alphabet are
    // dropped, as HF's tokenize_words does)
    std::vector<int32_t> id, prev, next, word_of;
    std::vector<int64_t> weight;
    id.reserve(static_cast<size_t>(total_chars));
    for (const auto& w : word_order) {
        const int32_t wi = static_cast<int32_t>(weight.size());
        weight.push_back(word_count[w]);
        const auto* u = reinterpret_cast<const unsigned char*>(w.data());
        const int32_t first = static_cast<int32_t>(id.size());
        for (size_t i = 0; i < w.size();) {
            uint32_t cp;
            const int len = utf8_decode(u + i, static_cast<int64_t>(w.size() - i), cp);
            i += static_cast<size_t>(len);
            auto it = cp2id.find(cp);
            if (it == cp2id.end()) continue;
            const int32_t pos = static_cast<int32_t>(id.size());
            id.push_back(it->second);
            prev.push_back(pos == first ? -1 : pos - 1);
            next.push_back(-1);
            if (pos != first) next[pos - 1] = pos;
            word_of.push_back(wi);
        }
    }

    // 4. initial pair counts and positions
    std::unordered_map<uint64_t, PairInfo> pairs;
    for (int32_t p = 0; p < static_cast<int32_t>(id.size()); ++p) {
        if (next[p] < 0) continue;
        PairInfo& pi = pairs[PairTable::key(id[p], id[next[p]])];
        pi.count += weight[word_of[p]];
        pi.where.push_back(p);
    }
    std::priority_queue<Cand, std::vector<Cand>, CandLess> queue;
    for (const auto& kv : pairs)
        if (kv.second.count > 0)
            queue.push({kv.second.count, static_cast<int32_t>(kv.first >> 32), static_cast<int32_t>(kv.first & 0xFFFFFFFFu)});

    // 5. merges
    std::vector<uint64_t> grown;  // pairs whose count went up during this merge
    std::vector<int32_t> occ;
    while (static_cast<int64_t>(res.vocab.size()) < vocab_size && !queue.empty()) {
        Cand top = queue.top();
        queue.pop();
        auto it = pairs.find(PairTable::key(top.a, top.b));
        const int64_t cur = it == pairs.end() ? 0 : it->second.count;
        if (cur != top.count) {  // stale entry: requeue with the true count
            if (cur > 0) queue.push({cur, top.a, top.b});
            continue;
        }
        if (cur < 1 || cur < min_frequency) break;
        const int32_t a = top.a, b = top.b;
        const int32_t c = add_token(res.vocab[a] + res.vocab[b]);
        res.merges.emplace_back(a, b);
        occ.swap(it->second.where);
        pairs.erase(it);  // every occurrence is merged below (HF never requeues it either)
        std::sort(occ.begin(), occ.end());
        occ.erase(std::unique(occ.begin(), occ.end()), occ.end());
        grown.clear();
        auto change = [&](int32_t x, int32_t y, int64_t delta, int32_t where) {
            const uint64_t k = PairTable::key(x, y);
            PairInfo& pi = pairs[k];
            pi.count += delta;
            if (delta > 0) {
                pi.where.push_back(where);
                grown.push_back(k);
            }
        };
        for (const int32_t p : occ) {
            if (id[p] != a) continue;
            const int32_t q = next[p];
            if (q < 0 || id[q] != b) continue;
            const int64_t w = weight[word_of[p]];
            const int32_t o = prev[p], r = next[q];
            if (o >= 0) {
                change(id[o], a, -w, -1);
                change(id[o], c, w, o);
            }
            if (r >= 0) {
                change(b, id[r], -w, -1);
                change(c, id[r], w, p);
            }
            id[p] = c;
            id[q] = -1;
            next[p] = r;
            if (r >= 0) prev[r] = p;
        }
        // The merged pair may have been touched (e.g. "AAA": the overlapping "AA" loses a count):
        // it is gone for good, as it is in HF, which never requeues it.
        pairs.erase(PairTable::key(a, b));
        std::sort(grown.begin(), grown.end());
        grown.erase(std::unique(grown.begin(), grown.end()), grown.end());
        for (const uint64_t k : grown) {
            auto g = pairs.find(k);
            if (g != pairs.end() && g->second.count > 0)
                queue.push({g->second.count, static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xFFFFFFFFu)});
        }
    }
    return res;
}

}  // namespace bpe
}  // namespace omicskern
