// Character (single-nucleotide) tokenizer: one token per byte through a 256-entry table.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "dna/dna.h"

namespace omicskern {
namespace dna {

py::tuple finish(Buffer<int32_t>& ids, std::vector<int64_t>&& offsets, Buffer<uint8_t>* soft) {
    py::object soft_arr = py::none();
    py::array_t<int32_t> ids_arr = ids.release_to_numpy();
    if (soft) soft_arr = soft->release_to_numpy();
    return py::make_tuple(ids_arr, to_numpy(std::move(offsets)), soft_arr);
}

// lut[b]: token id of byte b, or < 0 for a byte that is an error. Any boundary is safe, so long
// sequences are cut every `chunk` bytes.
py::tuple char_encode(const py::object& seqs, py::array_t<int32_t, py::array::c_style | py::array::forcecast> lut,
                      const std::string& allowed, bool want_soft, int threads, int64_t chunk,
                      const std::vector<int32_t>& prefix, const std::vector<int32_t>& suffix) {
    const Specials sp{prefix, suffix};
    if (lut.ndim() != 1 || lut.size() != 256) throw py::value_error("lut must have 256 entries");
    const SeqViews pinned(seqs);  // owns/pins the inputs while the GIL is released
    const std::vector<SeqView>& views = pinned.views();
    std::vector<int32_t> table(lut.data(), lut.data() + 256);
    std::vector<Task> tasks;
    {
        py::gil_scoped_release release;
        // One thread gains nothing from cutting sequences (and NT cuts cost a scan).
        tasks = make_tasks(views, resolve_threads(threads) > 1 ? chunk : 0, [&](int64_t i, int64_t c) {
            std::vector<int64_t> cuts;
            for (int64_t p = c; p < views[i].size; p += c) cuts.push_back(p);
            return cuts;
        });
    }
    const int32_t* t = table.data();
    return run_tasks(
        tasks, static_cast<int64_t>(views.size()), want_soft, threads, sp,
        [](const Task& task) { return task.end - task.begin; },
        [&](const Task& task, int32_t* out, uint8_t* sm) {
            const unsigned char* s = reinterpret_cast<const unsigned char*>(views[task.seq].data);
            const int64_t b = task.begin, n = task.end - task.begin;
            // Branch-free: an invalid byte has a negative entry; OR keeps the sign bit.
            int32_t bad = 0;
            for (int64_t i = 0; i < n; ++i) {
                const int32_t x = t[s[b + i]];
                out[i] = x;
                bad |= x;
            }
            if (bad < 0) {
                for (int64_t i = 0; i < n; ++i)
                    if (t[s[b + i]] < 0) throw InvalidSequence::at(task.seq, b + i, s[b + i], allowed);
            }
            if (sm)
                for (int64_t i = 0; i < n; ++i) sm[i] = is_lower(s[b + i]) ? 1 : 0;
        },
        /*cheap_count=*/true);
}

}  // namespace dna
}  // namespace omicskern
