// BPE tokenizer bindings (owned by the BPE area): omicskern._C.BpeModel and bpe_train.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common/buffers.h"
#include "common/threads.h"
#include "dna/bpe.h"

namespace py = pybind11;

namespace omicskern {
namespace bpe {

namespace {

using CharTable = std::pair<std::vector<int64_t>, std::vector<int64_t>>;  // (code points, ids)
using AddedSpec = std::tuple<py::bytes, int64_t, bool, bool>;              // (content, id, lstrip, rstrip)

void check_id(int64_t id, int64_t vocab, const char* what) {
    if (id < 0 || id >= vocab)
        throw py::value_error(std::string(what) + " id " + std::to_string(id) + " is outside [0, " +
                              std::to_string(vocab) + ")");
}

PreTok parse_pre(const std::string& s) {
    if (s == "none") return PreTok::None;
    if (s == "whitespace") return PreTok::Whitespace;
    if (s == "whitespace_split") return PreTok::WhitespaceSplit;
    throw py::value_error("pre_tokenizer must be 'none', 'whitespace' or 'whitespace_split', got '" + s + "'");
}

std::vector<AddedToken> parse_added(const std::vector<AddedSpec>& specs, int64_t vocab) {
    std::vector<AddedToken> out;
    for (const auto& t : specs) {
        check_id(std::get<1>(t), vocab, "added token");
        out.push_back({std::string(std::get<0>(t)), static_cast<int32_t>(std::get<1>(t)), std::get<2>(t),
                       std::get<3>(t)});
    }
    return out;
}

std::shared_ptr<BpeModel> make_model(int64_t vocab_size, const std::vector<CharTable>& chars, int64_t unk_id,
                                     bool fuse_unk, const std::vector<int64_t>& byte_ids,
                                     const std::vector<int64_t>& merge_a, const std::vector<int64_t>& merge_b,
                                     const std::vector<int64_t>& merge_new, const std::string& pre_tokenizer,
                                     bool lowercase, const std::vector<AddedSpec>& added_raw,
                                     const std::vector<AddedSpec>& added_norm) {
    if (vocab_size <= 0 || vocab_size >= INT32_MAX) throw py::value_error("vocab_size must be in [1, 2^31)");
    if (chars.size() != 4) throw py::value_error("chars must hold 4 tables (first/middle/last/only character)");
    auto m = std::make_shared<BpeModel>();
    m->vocab_size = static_cast<int32_t>(vocab_size);
    for (int v = 0; v < 4; ++v) {
        const auto& t = chars[v];
        if (t.first.size() != t.second.size()) throw py::value_error("char table: code points and ids differ in length");
        std::fill(m->ascii[v], m->ascii[v] + 128, -1);
        for (size_t i = 0; i < t.first.size(); ++i) {
            check_id(t.second[i], vocab_size, "character token");
            const int64_t cp = t.first[i];
            if (cp < 0 || cp > 0x10FFFF) throw py::value_error("invalid code point " + std::to_string(cp));
            if (cp < 128) m->ascii[v][cp] = static_cast<int32_t>(t.second[i]);
            else m->cp[v][static_cast<uint32_t>(cp)] = static_cast<int32_t>(t.second[i]);
        }
    }
    m->has_affix = !(chars[1] == chars[0] && chars[2] == chars[0] && chars[3] == chars[0]);
    if (unk_id >= 0) check_id(unk_id, vocab_size, "unk token");
    m->unk_id = unk_id < 0 ? -1 : static_cast<int32_t>(unk_id);
    m->fuse_unk = fuse_unk;
    std::fill(m->byte_ids, m->byte_ids + 256, -1);
    if (!byte_ids.empty()) {
        if (byte_ids.size() != 256) throw py::value_error("byte_ids must have 256 entries (-1: missing)");
        m->byte_fallback = true;
        for (int i = 0; i < 256; ++i) {
            if (byte_ids[i] >= 0) check_id(byte_ids[i], vocab_size, "byte fallback token");
            m->byte_ids[i] = static_cast<int32_t>(byte_ids[i]);
        }
    }
    const size_t nm = merge_a.size();
    if (merge_b.size() != nm || merge_new.size() != nm) throw py::value_error("merge arrays differ in length");
    if (nm >= static_cast<size_t>(INT32_MAX)) throw py::value_error("too many merges");
    std::vector<int32_t> a(nm), b(nm), rank(nm), nid(nm);
    for (size_t i = 0; i < nm; ++i) {
        check_id(merge_a[i], vocab_size, "merge");
        check_id(merge_b[i], vocab_size, "merge");
        check_id(merge_new[i], vocab_size, "merge result");
        a[i] = static_cast<int32_t>(merge_a[i]);
        b[i] = static_cast<int32_t>(merge_b[i]);
        nid[i] = static_cast<int32_t>(merge_new[i]);
        rank[i] = static_cast<int32_t>(i);
    }
    m->pairs.build(a, b, rank, static_cast<int32_t>(vocab_size));
    m->n_ranks = static_cast<int32_t>(nm);
    m->rank_new_id = nid;
    m->rank_a = a;
    m->rank_b = b;
    m->monotone = check_monotone(*m, a, b, rank, nid);
    {
        std::vector<char> made(static_cast<size_t>(vocab_size), 0);
        m->unique_results = true;
        for (size_t i = 0; i < nm; ++i) {
            if (m->pairs.find(a[i], b[i]) != rank[i]) continue;  // lost to a later duplicate pair
            if (made[nid[i]]++) m->unique_results = false;
        }
    }
    m->pre = parse_pre(pre_tokenizer);
    m->norm = lowercase ? Norm::Lowercase : Norm::None;
    for (int c = 0; c < 128; ++c) m->ascii_class[c] = static_cast<uint8_t>(word_class(static_cast<uint32_t>(c)));
    m->added_raw.build(parse_added(added_raw, vocab_size));
    m->added_norm.build(parse_added(added_norm, vocab_size));
    build_backtrack(*m);
    return m;
}

py::tuple encode(const BpeModel& m, const py::object& seqs, int num_threads, bool return_soft_mask, bool uppercase,
                 int algo, bool return_spans) {
    if (algo < 0 || algo > 5)
        throw py::value_error("algo must be 0 (auto), 1 (heap), 2 (bucket), 3 (small windows), 4 (backtrack) or "
                              "5 (windows)");
    const SeqViews pinned(seqs);  // owns/pins the inputs while the GIL is released
    const std::vector<SeqView>& views = pinned.views();
    const int64_t n = static_cast<int64_t>(views.size());
    std::vector<std::vector<int32_t>> parts(static_cast<size_t>(n));
    std::vector<std::vector<uint8_t>> soft_parts(return_soft_mask ? static_cast<size_t>(n) : 0);
    std::vector<std::vector<int64_t>> span_parts(return_spans ? static_cast<size_t>(n) : 0);
    Ragged r;
    std::vector<uint8_t> soft;
    std::vector<int64_t> spans;
    {
        py::gil_scoped_release release;
        parallel_for(n, num_threads, [&](int64_t i) {
            parts[i].reserve(static_cast<size_t>(views[i].size / 4 + 4));
            encode_sequence(m, views[i].data, views[i].size, i, algo, uppercase, parts[i],
                             return_soft_mask ? &soft_parts[i] : nullptr, return_spans ? &span_parts[i] : nullptr);
        });
        if (return_spans) {
            std::vector<int64_t> at(static_cast<size_t>(n) + 1, 0);
            for (int64_t i = 0; i < n; ++i) at[i + 1] = at[i] + static_cast<int64_t>(span_parts[i].size());
            spans.resize(static_cast<size_t>(at[n]));
            parallel_for(n, num_threads, [&](int64_t i) {
                std::copy(span_parts[i].begin(), span_parts[i].end(), spans.begin() + at[i]);
                std::vector<int64_t>().swap(span_parts[i]);
            });
        }
        if (return_soft_mask) {
            size_t total = 0;
            for (const auto& s : soft_parts) total += s.size();
            soft.reserve(total);
            for (auto& s : soft_parts) {
                soft.insert(soft.end(), s.begin(), s.end());
                std::vector<uint8_t>().swap(s);
            }
        }
        r = concat_parts(parts, num_threads);
    }
    py::object soft_out = py::none();
    if (return_soft_mask) soft_out = to_numpy(std::move(soft));
    if (!return_spans) return py::make_tuple(to_numpy(std::move(r.ids)), to_numpy(std::move(r.offsets)), soft_out);
    const py::ssize_t t = static_cast<py::ssize_t>(spans.size() / 2);
    py::array_t<int64_t> flat = to_numpy(std::move(spans));
    return py::make_tuple(to_numpy(std::move(r.ids)), to_numpy(std::move(r.offsets)), soft_out,
                          flat.reshape({t, static_cast<py::ssize_t>(2)}));
}

py::tuple train_py(const py::object& seqs, int64_t vocab_size, const std::vector<std::string>& specials,
                   int64_t min_frequency, const std::string& pre_tokenizer, const std::string& initial_alphabet,
                   int64_t limit_alphabet) {
    if (vocab_size < 1) throw py::value_error("vocab_size must be >= 1");
    const int pre = static_cast<int>(parse_pre(pre_tokenizer));
    const SeqViews pinned(seqs);  // owns/pins the inputs while the GIL is released
    const std::vector<SeqView>& views = pinned.views();
    std::vector<std::pair<const char*, int64_t>> v;
    v.reserve(views.size());
    for (const auto& s : views) v.emplace_back(s.data, s.size);
    std::vector<uint32_t> alphabet;
    const auto* u = reinterpret_cast<const unsigned char*>(initial_alphabet.data());
    for (size_t i = 0; i < initial_alphabet.size();) {
        uint32_t cp;
        const int len = utf8_decode(u + i, static_cast<int64_t>(initial_alphabet.size() - i), cp);
        if (len == 0) throw py::value_error("initial_alphabet is not valid UTF-8");
        alphabet.push_back(cp);
        i += static_cast<size_t>(len);
    }
    TrainResult res;
    {
        py::gil_scoped_release release;
        res = train(v, vocab_size, specials, min_frequency, pre, alphabet, limit_alphabet);
    }
    py::list vocab, merges;
    for (const auto& s : res.vocab) vocab.append(py::str(s));
    for (const auto& mg : res.merges) merges.append(py::make_tuple(mg.first, mg.second));
    return py::make_tuple(vocab, merges);
}

}  // namespace
}  // namespace bpe
}  // namespace omicskern

void register_bpe(py::module_& m) {
    using namespace pybind11::literals;
    using omicskern::bpe::BpeModel;
    py::class_<BpeModel, std::shared_ptr<BpeModel>>(m, "BpeModel",
                                                    "A Hugging Face tokenizer.json BPE pipeline compiled to tables "
                                                    "(built by omicskern.tokenizers.hf_json).")
        .def(py::init(&omicskern::bpe::make_model), "vocab_size"_a, "chars"_a, "unk_id"_a, "fuse_unk"_a,
             "byte_ids"_a, "merge_a"_a, "merge_b"_a, "merge_new"_a, "pre_tokenizer"_a, "lowercase"_a,
             "added_raw"_a, "added_norm"_a)
        .def_property_readonly("monotone", [](const BpeModel& b) { return b.monotone; },
                               "True when merges can run on the linear bucket queue (trained BPE tables).")
        .def_property_readonly("backtrack", [](const BpeModel& b) { return b.bt.ok; },
                               "True when words of vocabulary letters use the backtracking encoder.")
        .def("compatible", [](const BpeModel& b, int32_t x, int32_t y) {
                 if (!b.bt.ok) throw py::value_error("compatible: the backtracking tables are not built");
                 for (int32_t t : {x, y})
                     if (t < 0 || t >= b.vocab_size || b.bt.len[t] == 0)
                         throw py::value_error("compatible: token " + std::to_string(t) + " is not a valid token");
                 return omicskern::bpe::bt_compatible(b, x, y);
             }, "x"_a, "y"_a, "Backtracking's pair test: BPE of the two tokens' concatenation gives them back (tests).")
        .def("encode", &omicskern::bpe::encode, "seqs"_a, "num_threads"_a = 0, "return_soft_mask"_a = false,
             "uppercase"_a = false, "algo"_a = 0, "return_spans"_a = false,
             "Sequences -> (ids int32 [T], offsets int64 [N+1], soft_mask uint8 [T] or None), HF-exact ids;\n"
             "return_spans: a 4th item, int64 [T, 2], each token's [start, end) byte offsets in its sequence\n"
             "(HF's Encoding.offsets, in bytes).\n"
             "algo: 0 auto, 1 binary heap (HF's algorithm, whole words), 2 bucket queue (monotone tables, whole\n"
             "words), 3 bucket/heap with tiny windows (tests of the long-word path), 4 backtracking where it\n"
             "applies (else 5), 5 bucket/heap with cache-sized windows for long words.");
    m.def("bpe_train", &omicskern::bpe::train_py, "seqs"_a, "vocab_size"_a, "special_tokens"_a, "min_frequency"_a = 0,
          "pre_tokenizer"_a = "whitespace", "initial_alphabet"_a = "", "limit_alphabet"_a = -1,
          "Trains BPE merges on a list of str/bytes. Returns (vocab list[str] by id, merges list[(id, id)]).");
}
