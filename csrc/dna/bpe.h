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

// (left id, right id) -> merge rank. Open addressing with linear probing, one 16-byte entry per
// slot (a probe is one cache line); pairs of small ids (the early, most frequent merges) skip the
// hash through a dense int16 table that stays in L2.
struct PairTable {
    struct Entry {
        uint64_t key;
        int32_t rank;
        int32_t unused;
    };
    std::vector<Entry> table;
    uint64_t mask = 0;
    int shift = 63;
    std::vector<int16_t> dense;
    int32_t dense_n = 0;
    static constexpr uint64_t kEmpty = ~0ull;

    static inline uint64_t key(int32_t a, int32_t b) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    // rank[i] of pair (a[i], b[i]); a later duplicate pair overwrites an earlier one (as HF's HashMap).
    void build(const std::vector<int32_t>& a, const std::vector<int32_t>& b, const std::vector<int32_t>& rank,
               int32_t vocab_size);
    // Rank of (a, b), -1 when it is no merge.
    inline int32_t find(int32_t a, int32_t b) const {
        if (static_cast<uint32_t>(a) < static_cast<uint32_t>(dense_n) &&
            static_cast<uint32_t>(b) < static_cast<uint32_t>(dense_n))
            return dense[static_cast<size_t>(a) * dense_n + b];
        const uint64_t k = key(a, b);
        uint64_t h = (k * 0x9E3779B97F4A7C15ull) >> shift;
        for (;;) {
            const Entry& e = table[h];
            if (e.key == k) return e.rank;
            if (e.key == kEmpty) return -1;
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
    int single_first = -1;  // the one first byte of all tokens, or -1
    void build(std::vector<AddedToken> toks);
    bool empty() const { return tokens.empty(); }
};

// One piece of a sequence after added-token splitting: a token (id >= 0) or text [start, end).
struct Segment {
    int64_t start, end;
    int32_t id;
};

// Greedy longest-match with backtracking (bpe_backtrack.cpp): for a monotone table whose merges
// make distinct tokens, the BPE encoding of a word is the only sequence of "valid" tokens (each its
// own BPE encoding) in which every two neighbours are compatible (BPE of their concatenation gives
// them back). A depth-first search over a trie of the valid tokens, longest first, finds it.
struct Backtrack {
    struct SpineNode {
        int32_t id;
        int32_t death;  // rank of the merge consuming this node inside the token (INT32_MAX: the token)
    };
    bool ok = false;
    bool unk_inert = false;     // unk_id >= 0 and no merge uses it (a hard boundary), no byte fallback
    int32_t K = 0;              // alphabet size (distinct ASCII initial symbols)
    int8_t alpha[256];          // byte -> alphabet index, -1: not handled here
    std::vector<int32_t> child;     // node * K + letter -> node, -1; node 0 is the root
    std::vector<int32_t> node_tok;  // node -> valid token spelled by the path, -1
    std::vector<int32_t> len;       // token -> length in characters (0: not in the trie)
    std::vector<int32_t> next_prefix;  // token -> longest proper prefix that is a trie token, -1
    std::vector<int32_t> rsp_off, lsp_off;  // token -> its right / left spine in rsp / lsp
    std::vector<SpineNode> rsp, lsp;
    // The first L0 letters of a match in one load: code (base K, first letter most significant) ->
    // (node after L0 letters or -1, longest trie token of length <= L0 or -1). L0 = 0: no table.
    int32_t L0 = 0;
    std::vector<std::pair<int32_t, int32_t>> jump;
    // (left, right) -> rank for the compatibility test: dense int16 over ids < dense_n (the spines'
    // lower nodes are short, early tokens), else the pair table.
    std::vector<int16_t> dense;
    int32_t dense_n = 0;
    // Everything the search and the test read about a token, in one 32-byte record (one cache line
    // per token): its length, next_prefix, its spines, and for the test's first step (last letter of
    // a, first letter of b; read from a K x K letter-pair table) those letters and their deaths.
    struct Tok {
        int32_t len, next_prefix;
        int32_t last_death, first_death;
        int32_t rsp, lsp;  // offsets of the spines in rsp / lsp
        int16_t last_letter, first_letter;
        int16_t rsp_n, lsp_n;
    };
    std::vector<Tok> tok;
    std::vector<int32_t> letter_rank;  // K * K, -1: no merge
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
    std::vector<int32_t> rank_a, rank_b;  // rank -> its pair
    int32_t n_ranks = 0;
    bool monotone = false;  // every merge producing c ranks below every merge consuming c
    bool unique_results = false;  // no two merges produce the same token
    PreTok pre = PreTok::None;
    Norm norm = Norm::None;
    AddedMatcher added_raw, added_norm;
    uint8_t ascii_class[128];  // Whitespace regex class: 0 word (\w), 1 space (\s), 2 other
    Backtrack bt;              // built by build_backtrack; bt.ok false: not applicable
};

// Builds m.bt (call last, once everything else in m is set). Leaves bt.ok false when the table is
// not monotone, two merges make one token, tokens carry a prefix/suffix, or the trie would be huge.
void build_backtrack(BpeModel& m);
// Backtracking encoding of one word of n bytes, all with bt.alpha >= 0: token ids into toks[0, k)
// and their first byte offsets into starts[0, k) (both grown to >= n, never shrunk); returns k, or
// -1 if no encoding was found (callers fall back to the exact engines).
int32_t backtrack_word(const BpeModel& m, const unsigned char* u, int32_t n, std::vector<int32_t>& toks,
                       std::vector<int32_t>& starts, std::vector<uint64_t>& dead);
// True when BPE of the concatenation of valid tokens a, b gives back [a, b] (bt.ok tables).
bool bt_compatible(const BpeModel& m, int32_t a, int32_t b);
// Runs the exact engine on initial symbols (for load-time checks): the resulting ids.
std::vector<int32_t> merge_symbols(const BpeModel& m, const std::vector<int32_t>& init);

// Encodes sequence `index` (bytes [p, p+n)) into out (ids) and soft (1 where the token covers a
// lower-case ASCII letter of the input; only when soft != nullptr). algo: 0 auto (backtracking
// where it applies, else 5), 1 heap (whole words), 2 bucket queue (whole words), 3 bucket/heap with
// tiny windows (tests), 4 backtracking where it applies (else 5), 5 bucket/heap with windows.
// uppercase: opt-in, ASCII a-z -> A-Z before anything else (added tokens included).
// spans (when not null): two int64 per token, its [start, end) byte offsets in the sequence, as
// Hugging Face's Encoding.offsets (in bytes) gives them; added tokens cover their match (with the
// whitespace lstrip/rstrip took).
void encode_sequence(const BpeModel& m, const char* p, int64_t n, int64_t index, int algo, bool uppercase,
                     std::vector<int32_t>& out, std::vector<uint8_t>* soft, std::vector<int64_t>* spans = nullptr);

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
