// Exact BPE by greedy longest match with backtracking (the idea of GitHub's rust-gems `bpe` crate,
// rederived here for Hugging Face's tie-breaking).
//
// Conditions (checked at load, else the bucket/heap engines run): the merge table is monotone
// (every merge producing c ranks below every merge consuming c), no two surviving merges make the
// same token, and tokens carry no continuing-subword prefix / end-of-word suffix.
//
// Facts used (docs/bpe.md has the argument):
// 1. A token is "valid" when BPE of its own string gives back the token. Only valid tokens can
//    appear in an encoding; the trie holds exactly those.
// 2. Under the conditions, a sequence of valid tokens is THE BPE encoding of its string iff every
//    two neighbours a, b are compatible (BPE(str(a) + str(b)) == [a, b]): the first merge across a
//    boundary in the whole string would happen identically in that pair alone.
// 3. So the encoding of every prefix that ends on one of its boundaries is unique: a position from
//    which the search once failed fails whatever led there ("dead" bit), and the depth-first search
//    (longest token first, then shorter prefixes, backtracking) is linear in the word length times
//    the longest token.
// 4. Compatibility without running BPE: in the pair alone, before any cross merge, a's span evolves
//    through a's merge tree, so its last symbol walks up a's right spine (bottom to top) and b's
//    first symbol up b's left spine. A spine node x of a is present for cross ranks r < death(x)
//    (the rank of the merge consuming it inside a: at equal rank that merge lies to the left, so it
//    goes first); a node y of b for r <= death(y) (its consuming merge lies to the right, so the
//    cross pair, further left, goes first at equal rank). a, b are incompatible iff some such
//    coexisting (x, y) has a merge of rank r in range. Sweeping both spines in rank order visits
//    every coexisting pair: O(depth(a) + depth(b)) pair lookups.
#include <algorithm>
#include <climits>
#include <cstring>

#include "dna/bpe.h"

namespace omicskern {
namespace bpe {

namespace {

constexpr int32_t kBtDense = 512;  // ids below this: int16 rank table (512 KB)

// Raw pointers of the tables, loaded once per word (keeps the test's load chains short).
struct BtView {
    const Backtrack::SpineNode* rsp;
    const Backtrack::SpineNode* lsp;
    const int16_t* dense;
    uint32_t dense_n;
    const BpeModel* m;
    const Backtrack::Tok* tok;
    const int32_t* letter_rank;
    int32_t K;

    explicit BtView(const BpeModel& model) {
        const Backtrack& bt = model.bt;
        rsp = bt.rsp.data();
        lsp = bt.lsp.data();
        dense = bt.dense.data();
        dense_n = static_cast<uint32_t>(bt.dense_n);
        m = &model;
        tok = bt.tok.data();
        letter_rank = bt.letter_rank.data();
        K = bt.K;
    }

    inline int32_t find(int32_t a, int32_t b) const {
        if (static_cast<uint32_t>(a) < dense_n && static_cast<uint32_t>(b) < dense_n)
            return dense[static_cast<size_t>(a) * dense_n + b];
        return m->pairs.find(a, b);
    }

    inline bool compatible(int32_t a, int32_t b) const {
        // Step 0, the two letters at the boundary, from small tables (half the failures end here).
        const Backtrack::Tok& ta = tok[a];
        const Backtrack::Tok& tb = tok[b];
        const int32_t r0 = letter_rank[ta.last_letter * K + tb.first_letter];
        if (static_cast<uint32_t>(r0) <
            std::min(static_cast<uint32_t>(ta.last_death), static_cast<uint32_t>(tb.first_death) + 1u))
            return false;
        const bool adv0 = ta.last_death <= tb.first_death;
        const Backtrack::SpineNode* x = rsp + ta.rsp + adv0;
        const Backtrack::SpineNode* y = lsp + tb.lsp + !adv0;
        // Every step moves one spine up, so the sweep takes |spine(a)| + |spine(b)| - 1 steps.
        const int32_t steps = ta.rsp_n + tb.lsp_n - 2;
        for (int32_t k = 0; k < steps; ++k) {
            const Backtrack::SpineNode xn = *x, yn = *y;
            const int32_t r = find(xn.id, yn.id);
            // present together: r < death(x) and r <= death(y); r = -1 (no merge) fails the unsigned test
            const uint32_t limit = std::min(static_cast<uint32_t>(xn.death), static_cast<uint32_t>(yn.death) + 1u);
            if (__builtin_expect(static_cast<uint32_t>(r) < limit, 0)) return false;
            // Advance the node that leaves first (x is present up to death - 1, y up to death; the
            // tokens themselves have death INT32_MAX). Branch-free: the choice is unpredictable.
            const bool adv_x = xn.death <= yn.death;
            x += adv_x;
            y += !adv_x;
        }
        return true;
    }
};

}  // namespace

bool bt_compatible(const BpeModel& m, int32_t a, int32_t b) { return BtView(m).compatible(a, b); }

int32_t backtrack_word(const BpeModel& m, const unsigned char* u, int32_t n, std::vector<int32_t>& toks,
                       std::vector<int32_t>& starts, std::vector<uint64_t>& dead) {
    const Backtrack& bt = m.bt;
    const BtView view(m);
    const size_t nw = static_cast<size_t>(n) / 64 + 1;
    if (dead.size() < nw) dead.resize(nw);
    std::memset(dead.data(), 0, nw * sizeof(uint64_t));
    uint64_t* dd = dead.data();
    // At most one token per byte: plain arrays with a stack pointer (grown, never shrunk or cleared).
    if (toks.size() < static_cast<size_t>(n)) {
        toks.resize(static_cast<size_t>(n));
        starts.resize(static_cast<size_t>(n));
    }
    int32_t* tk = toks.data();
    int32_t* st = starts.data();
    int32_t top = 0;
    const int32_t K = bt.K;
    const int32_t* child = bt.child.data();
    const int32_t* node_tok = bt.node_tok.data();
    const int8_t* alpha = bt.alpha;
    const Backtrack::Tok* rec = bt.tok.data();
    const int32_t L0 = bt.L0;
    const std::pair<int32_t, int32_t>* jump = bt.jump.data();
    auto longest = [&](int32_t pos) {
        int32_t node = 0, best = -1, i = pos;
        if (L0 > 0 && pos + L0 <= n) {
            uint32_t code = 0;
            if (K == 4) {  // DNA: shifts instead of multiplications
                for (int32_t k = 0; k < L0; ++k) code = (code << 2) | static_cast<uint32_t>(alpha[u[pos + k]]);
            } else {
                for (int32_t k = 0; k < L0; ++k)
                    code = code * static_cast<uint32_t>(K) + static_cast<uint32_t>(alpha[u[pos + k]]);
            }
            node = jump[code].first;
            best = jump[code].second;
            if (node < 0) return best;
            i = pos + L0;
        }
        for (; i < n; ++i) {
            node = child[static_cast<size_t>(node) * K + alpha[u[i]]];
            if (node < 0) break;
            if (node_tok[node] >= 0) best = node_tok[node];
        }
        return best;
    };
    int32_t pos = 0;
    int32_t t = longest(0);
    for (;;) {
        if (t < 0) {  // every token starting at pos failed: pos is no boundary of the encoding
            if (top == 0) return -1;
            dd[pos >> 6] |= 1ull << (pos & 63);
            --top;
            pos = st[top];
            t = rec[tk[top]].next_prefix;
            continue;
        }
        const int32_t end = pos + rec[t].len;
        if (!((dd[end >> 6] >> (end & 63)) & 1) && (top == 0 || view.compatible(tk[top - 1], t))) {
            tk[top] = t;
            st[top] = pos;
            ++top;
            pos = end;
            if (pos == n) break;
            t = longest(pos);
        } else {
            t = rec[t].next_prefix;
        }
    }
    return top;
}

void build_backtrack(BpeModel& m) {
    Backtrack& bt = m.bt;
    bt = Backtrack();
    std::fill(bt.alpha, bt.alpha + 256, static_cast<int8_t>(-1));
    if (!m.monotone || !m.unique_results || m.has_affix) return;
    const int32_t V = m.vocab_size;
    // Alphabet: ASCII characters with a token of their own.
    std::vector<int32_t> letter(V, -1);  // token id -> alphabet index (single-character tokens)
    int32_t K = 0;
    for (int c = 0; c < 128; ++c) {
        const int32_t id = m.ascii[0][c];
        if (id < 0) continue;
        if (letter[id] < 0) letter[id] = K++;
        bt.alpha[c] = static_cast<int8_t>(letter[id]);
    }
    if (K == 0) return;
    bt.K = K;
    // Producing merge of each token (surviving ranks only), and its string over the alphabet.
    std::vector<int32_t> prod(V, -1);
    for (int32_t r = 0; r < m.n_ranks; ++r)
        if (m.pairs.find(m.rank_a[r], m.rank_b[r]) == r) prod[m.rank_new_id[r]] = r;
    std::vector<std::vector<int32_t>> str(V);  // initial symbol ids; empty: not over the alphabet
    for (int32_t id = 0; id < V; ++id)
        if (letter[id] >= 0) str[id] = {id};
    size_t total = 0;
    for (int32_t r = 0; r < m.n_ranks; ++r) {  // monotone: children are made at lower ranks
        const int32_t c = m.rank_new_id[r];
        if (prod[c] != r || letter[c] >= 0) continue;
        const auto& sa = str[m.rank_a[r]];
        const auto& sb = str[m.rank_b[r]];
        if (sa.empty() || sb.empty()) continue;
        str[c] = sa;
        str[c].insert(str[c].end(), sb.begin(), sb.end());
        total += str[c].size();
        if (total > (size_t{1} << 24)) return;  // absurd token lengths: not worth a trie
    }
    // Valid tokens: BPE of the token's own string gives the token.
    std::vector<char> valid(V, 0);
    for (int32_t id = 0; id < V; ++id) {
        if (str[id].empty()) continue;
        if (letter[id] >= 0) {
            valid[id] = 1;
            continue;
        }
        const std::vector<int32_t> got = merge_symbols(m, str[id]);
        valid[id] = got.size() == 1 && got[0] == id;
    }
    // Trie.
    bt.child.assign(static_cast<size_t>(K), -1);
    bt.node_tok.assign(1, -1);
    bt.len.assign(V, 0);
    for (int32_t id = 0; id < V; ++id) {
        if (!valid[id]) continue;
        int32_t node = 0;
        for (int32_t s : str[id]) {
            const size_t slot = static_cast<size_t>(node) * K + letter[s];
            if (bt.child[slot] < 0) {
                if (bt.node_tok.size() * K > (size_t{1} << 22)) return;  // trie over 16 MB: not worth it
                bt.child[slot] = static_cast<int32_t>(bt.node_tok.size());
                bt.node_tok.push_back(-1);
                bt.child.resize(bt.child.size() + K, -1);
            }
            node = bt.child[slot];
        }
        bt.node_tok[node] = id;
        bt.len[id] = static_cast<int32_t>(str[id].size());
    }
    bt.next_prefix.assign(V, -1);
    for (int32_t id = 0; id < V; ++id) {
        if (!valid[id]) continue;
        int32_t node = 0, best = -1;
        for (size_t k = 0; k + 1 < str[id].size(); ++k) {
            node = bt.child[static_cast<size_t>(node) * K + letter[str[id][k]]];
            if (bt.node_tok[node] >= 0) best = bt.node_tok[node];
        }
        bt.next_prefix[id] = best;
    }
    // Spines, bottom first. Right spine of c: c, right child, its right child, ... down to a letter.
    bt.rsp_off.assign(V + 1, 0);
    bt.lsp_off.assign(V + 1, 0);
    std::vector<Backtrack::SpineNode> tmp;
    for (int side = 0; side < 2; ++side) {
        auto& sp = side == 0 ? bt.rsp : bt.lsp;
        auto& off = side == 0 ? bt.rsp_off : bt.lsp_off;
        sp.clear();
        for (int32_t id = 0; id < V; ++id) {
            off[id] = static_cast<int32_t>(sp.size());
            if (!valid[id]) continue;
            tmp.clear();
            int32_t x = id, death = INT32_MAX;
            for (;;) {
                tmp.push_back({x, death});
                if (letter[x] >= 0) break;
                const int32_t r = prod[x];
                death = r;
                x = side == 0 ? m.rank_b[r] : m.rank_a[r];
            }
            sp.insert(sp.end(), tmp.rbegin(), tmp.rend());
        }
        off[V] = static_cast<int32_t>(sp.size());
    }
    bt.tok.assign(V, Backtrack::Tok{0, -1, 0, 0, 0, 0, 0, 0, 0, 0});
    for (int32_t id = 0; id < V; ++id) {
        if (!valid[id]) continue;
        const Backtrack::SpineNode xr = bt.rsp[bt.rsp_off[id]], yl = bt.lsp[bt.lsp_off[id]];
        const int32_t rn = bt.rsp_off[id + 1] - bt.rsp_off[id], ln = bt.lsp_off[id + 1] - bt.lsp_off[id];
        if (rn > INT16_MAX || ln > INT16_MAX) return;  // absurdly deep merge trees
        bt.tok[id] = {bt.len[id], bt.next_prefix[id], xr.death, yl.death, bt.rsp_off[id], bt.lsp_off[id],
                      static_cast<int16_t>(letter[xr.id]), static_cast<int16_t>(letter[yl.id]),
                      static_cast<int16_t>(rn), static_cast<int16_t>(ln)};
    }
    bt.letter_rank.assign(static_cast<size_t>(K) * K, -1);
    std::vector<int32_t> letters;
    for (int32_t id = 0; id < V; ++id)
        if (letter[id] >= 0) letters.push_back(id);
    for (int32_t x : letters)
        for (int32_t y : letters) bt.letter_rank[static_cast<size_t>(letter[x]) * K + letter[y]] = m.pairs.find(x, y);
    // Jump table over the first L0 letters (at most 16384 codes, 128 KB; K = 4 gives L0 = 7, which
    // covers ~99% of the walks on DNABERT-2's vocabulary and E. coli).
    bt.L0 = 0;
    {
        int32_t L0 = 0;
        int64_t codes = 1;
        while (codes * K <= 16384) {
            codes *= K;
            ++L0;
        }
        if (L0 >= 2) {
            bt.L0 = L0;
            bt.jump.assign(static_cast<size_t>(codes), {-1, -1});
            for (int64_t code = 0; code < codes; ++code) {
                int32_t node = 0, best = -1;
                int64_t div = codes / K;  // K^(L0 - 1 - k): letter k is the k-th most significant digit
                for (int32_t k = 0; k < L0 && node >= 0; ++k, div /= K) {
                    const int64_t letter_k = (code / div) % K;
                    node = bt.child[static_cast<size_t>(node) * K + letter_k];
                    if (node >= 0 && bt.node_tok[node] >= 0) best = bt.node_tok[node];
                }
                bt.jump[code] = {node, best};
            }
        }
    }
    // Dense rank table over the first ids (spine nodes are mostly short, early tokens).
    bt.dense_n = 0;
    bt.dense.clear();
    if (m.n_ranks < 32767) {
        bt.dense_n = std::min<int32_t>(V, kBtDense);
        bt.dense.assign(static_cast<size_t>(bt.dense_n) * bt.dense_n, -1);
        for (int32_t r = 0; r < m.n_ranks; ++r) {
            const int32_t a = m.rank_a[r], b = m.rank_b[r];
            if (a < bt.dense_n && b < bt.dense_n)
                bt.dense[static_cast<size_t>(a) * bt.dense_n + b] = static_cast<int16_t>(m.pairs.find(a, b));
        }
    }
    bt.unk_inert = m.unk_id >= 0 && !m.byte_fallback;
    for (int32_t r = 0; r < m.n_ranks && bt.unk_inert; ++r)
        if (m.rank_a[r] == m.unk_id || m.rank_b[r] == m.unk_id || m.rank_new_id[r] == m.unk_id)
            bt.unk_inert = false;
    bt.ok = true;
}

}  // namespace bpe
}  // namespace omicskern
