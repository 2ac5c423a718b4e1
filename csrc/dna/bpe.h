// BPE tokenizer core: Hugging Face `tokenizers`-exact encoding of a tokenizer.json BPE model, and
// a BPE trainer. The Python side (omicskern/tokenizers/hf_json.py) parses tokenizer.json and
// hands plain tables to BpeModel, so that this file never deals with JSON.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace omicskern {
namespace bpe {

// (left id, right id) -> slot in flat arrays (rank, new id). Open addressing, linear probing:
// a DNA vocabulary's ~4k merges fit in ~100 kB, so lookups stay in L2.
struct PairTable {
    std::vector<uint64_t> keys;
    std::vector<int32_t> ranks, new_ids;
    uint64_t mask = 0;
    int shift = 63;
    static constexpr uint64_t kEmpty = ~0ull;

    static inline uint64_t key(int32_t a, int32_t b) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    void build(const std::vector<int32_t>& a, const std::vector<int32_t>& b, const std::vector<int32_t>& rank,
               const std::vector<int32_t>& new_id);
    // Slot of (a, b) or -1.
    inline int64_t find(int32_t a, int32_t b) const {
        const uint64_t k = key(a, b);
        uint64_t h = (k * 0x9E3779B97F4A7C15ull) >> shift;
        for (;;) {
            const uint64_t kk = keys[h];
            if (kk == k) return static_cast<int64_t>(h);
            if (kk == kEmpty) return -1;
            h = (h + 1) & mask;
        }
    }
};

struct AddedToken {
    std::string content;
    int32_t id;
    bool lstrip, rstrip;
};

// Hugging Face's added-token splitting: leftmost-longest, non-overlapping matches of the tokens'
// contents (its Aho-Corasick with MatchKind::LeftmostLongest), with lstrip/rstrip.
struct AddedMatcher {
    std::vector<AddedToken> tokens;
    std::vector<std::vector<int32_t>> by_first;  // first byte -> token indices, longest first
    bool first[256] = {};
    void build(std::vector<AddedToken> toks);
    bool empty() const { return tokens.empty(); }
};

// One piece of a sequence after added-token splitting: a token (id >= 0) or text [start, end).
struct Segment {
    int64_t start, end;
    int32_t id;
};

enum class PreTok { None = 0, Whitespace = 1, WhitespaceSplit = 2 };
enum class Norm { None = 0, Lowercase = 1 };

struct BpeModel {
    int32_t vocab_size = 0;
    // Initial symbol of one character; variant = (first char of word ? 0 : 1) + (last ? 2 : 0), which
    // only differ with a continuing_subword_prefix / end_of_word_suffix.
    int32_t ascii[4][128];
    std::unordered_map<uint32_t, int32_t> cp[4];
    bool has_affix = false;
    int32_t unk_id = -1;  // -1: no unk token (unknown characters are dropped, as HF does)
    bool fuse_unk = false;
    bool byte_fallback = false;
    int32_t byte_ids[256];
    PairTable pairs;
    std::vector<int32_t> rank_new_id;  // rank -> new id (-1 for ranks lost to duplicate merges)
    int32_t n_ranks = 0;
    bool monotone = false;  // every merge producing c ranks below every merge consuming c
    PreTok pre = PreTok::None;
    Norm norm = Norm::None;
    AddedMatcher added_raw, added_norm;
    uint8_t ascii_class[128];  // Whitespace regex class: 0 word (\w), 1 space (\s), 2 other
};

// Encodes sequence `index` (bytes [p, p+n)) into out (ids) and soft (1 where the token covers a
// lower-case ASCII letter of the input; only when soft != nullptr). algo: 0 auto, 1 heap, 2 bucket.
// uppercase: opt-in, ASCII a-z -> A-Z before anything else (added tokens included).
void encode_sequence(const BpeModel& m, const char* p, int64_t n, int64_t index, int algo, bool uppercase,
                     std::vector<int32_t>& out, std::vector<uint8_t>* soft);

bool check_monotone(const BpeModel& m, const std::vector<int32_t>& a, const std::vector<int32_t>& b,
                    const std::vector<int32_t>& rank, const std::vector<int32_t>& new_id);

// Unicode helpers shared with the trainer.
int word_class(uint32_t cp);   // 0 \w, 1 \s, 2 other (HF Whitespace regex)
bool is_white(uint32_t cp);    // char::is_whitespace
// Decodes one UTF-8 character at p (n bytes left); returns its length (0: invalid) and sets cp.
int utf8_decode(const unsigned char* p, int64_t n, uint32_t& cp);

// Splits text into words the way the pre-tokenizer does: appends [start, end) pairs.
void pre_tokenize(const BpeModel& m, const char* p, int64_t n, int64_t base, int64_t index,
                  std::vector<std::pair<int64_t, int64_t>>& words);

struct TrainResult {
    std::vector<std::string> vocab;                   // id -> token
    std::vector<std::pair<int32_t, int32_t>> merges;  // (left id, right id) in rank order
};
// BPE training (bpe_train.cpp). pre: 0 none, 1 Whitespace, 2 WhitespaceSplit.
TrainResult train(const std::vector<std::pair<const char*, int64_t>>& seqs, int64_t vocab_size,
                  const std::vector<std::string>& specials, int64_t min_frequency, int pre,
                  const std::vector<uint32_t>& initial_alphabet, int64_t limit_alphabet);

}  // namespace bpe
}  // namespace omicskern
