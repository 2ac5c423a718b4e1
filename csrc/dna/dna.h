// Char and k-mer DNA tokenizers: shared pieces (byte classes, work splitting, output buffers).
//
// Every encoder runs in two passes over "tasks" (a sequence, or a slice of a long sequence cut
// at a boundary where tokenization can restart without changing the result):
//   1. count: the exact number of tokens of every task (and the first invalid byte, if any),
//   2. write: every task writes its tokens straight into the final, preallocated output.
// Tasks are ordered by (sequence, position), and parallel_for rethrows the error of the lowest
// failing task, so the reported invalid byte is the first one of the batch whatever the threads.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/buffers.h"
#include "common/errors.h"
#include "common/threads.h"

namespace omicskern {
namespace dna {
namespace py = pybind11;

// Byte classes of the k-mer encoders (a 256-entry table built by the Python class).
enum : uint8_t {
    kA = 0, kT = 1, kC = 2, kG = 3,  // 2-bit codes in Nucleotide Transformer / DNABERT order
    kN = 4,                          // N: its own token (NT), breaks k-mers
    kUnk = 5,                        // unknown byte mapped to the unknown token (on_invalid="unk")
    kBad = 6,                        // invalid byte: error
};

struct Task {
    int64_t seq;    // index in the batch
    int64_t begin;  // first byte (char, NT) or first window start (overlapping)
    int64_t end;    // one past the last byte / window start
};

// Uninitialised heap buffer handed to numpy without a copy (no zero-fill pass: every element is
// written by the write pass; tests compare every element against references).
template <class T>
struct Buffer {
    T* data = nullptr;
    int64_t size = 0;
    explicit Buffer(int64_t n) : data(n > 0 ? new T[static_cast<size_t>(n)] : new T[1]), size(n) {}
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { delete[] data; }
    // Call with the GIL held. The array owns the memory afterwards.
    py::array_t<T> release_to_numpy() {
        T* p = data;
        data = nullptr;
        py::capsule owner(p, [](void* q) { delete[] static_cast<T*>(q); });
        return py::array_t<T>({static_cast<py::ssize_t>(size)}, {static_cast<py::ssize_t>(sizeof(T))}, p, owner);
    }
};

inline bool is_lower(unsigned char b) { return static_cast<unsigned char>(b - 'a') < 26; }

// Splits every sequence longer than 2*chunk into slices of about `chunk` bytes. `adjust(seq,
// nominal_boundary)` moves a nominal boundary to a safe one (>= the nominal one, monotone).
// Sequences of length 0 still get one empty task, so every sequence has at least one.
template <class Adjust>
std::vector<Task> make_tasks(const std::vector<SeqView>& views, int64_t chunk, Adjust&& adjust) {
    std::vector<Task> tasks;
    tasks.reserve(views.size());
    for (int64_t i = 0; i < static_cast<int64_t>(views.size()); ++i) {
        const int64_t n = views[i].size;
        if (chunk <= 0 || n <= 2 * chunk) {
            tasks.push_back({i, 0, n});
            continue;
        }
        std::vector<int64_t> cuts = adjust(i, chunk);  // interior boundaries, increasing
        int64_t start = 0;
        for (int64_t c : cuts) {
            if (c <= start || c >= n) continue;
            tasks.push_back({i, start, c});
            start = c;
        }
        tasks.push_back({i, start, n});
    }
    return tasks;
}

// Ragged result of an encoder: ids, per-sequence offsets, optional soft mask.
py::tuple finish(Buffer<int32_t>& ids, std::vector<int64_t>&& offsets, Buffer<uint8_t>* soft);

// Special tokens written around every sequence by the encoders themselves (one output pass
// instead of encoding, then copying into a larger array).
struct Specials {
    std::vector<int32_t> prefix, suffix;
};

// Runs count + write over tasks. Counter: int64_t(const Task&). Writer: void(const Task&,
// int32_t* out, uint8_t* soft_or_null). Returns (ids, offsets, soft|None). GIL released inside.
// cheap_count: the counter is O(1) per task (char), so it runs on the calling thread.
template <class Counter, class Writer>
py::tuple run_tasks(const std::vector<Task>& tasks, int64_t n_seqs, bool want_soft, int threads,
                    const Specials& sp, Counter&& count, Writer&& write, bool cheap_count = false) {
    const int64_t nt = static_cast<int64_t>(tasks.size());
    const int64_t p = static_cast<int64_t>(sp.prefix.size()), s = static_cast<int64_t>(sp.suffix.size());
    std::vector<int64_t> task_off(static_cast<size_t>(nt + 1), 0);
    std::vector<int64_t> offsets(static_cast<size_t>(n_seqs + 1), 0);
    std::unique_ptr<Buffer<int32_t>> ids;
    std::unique_ptr<Buffer<uint8_t>> soft;
    {
        py::gil_scoped_release release;
        // Grab several short tasks at a time: scheduling cost stays small for 1 kbp batches.
        int64_t total_bytes = 0;
        for (const Task& t : tasks) total_bytes += t.end - t.begin;
        const int64_t avg = nt ? std::max<int64_t>(1, total_bytes / nt) : 1;
        const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(256, (64 << 10) / avg));
        // Under ~1 MB a single thread finishes before a thread hand-off would pay off.
        if (total_bytes < (1 << 20)) threads = 1;
        std::vector<int64_t> counts(static_cast<size_t>(nt));
        parallel_for(nt, cheap_count ? 1 : threads, [&](int64_t t) { counts[t] = count(tasks[t]); }, grain);
        // Tasks of one sequence are contiguous and every sequence has at least one.
        int64_t pos = 0;
        for (int64_t t = 0; t < nt; ++t) {
            const bool first = t == 0 || tasks[t - 1].seq != tasks[t].seq;
            const bool last = t + 1 == nt || tasks[t + 1].seq != tasks[t].seq;
            if (first) pos += p;
            task_off[t] = pos;
            pos += counts[t];
            if (last) {
                pos += s;
                offsets[tasks[t].seq + 1] = pos;
            }
        }
        task_off[nt] = pos;
        ids.reset(new Buffer<int32_t>(pos));
        if (want_soft) soft.reset(new Buffer<uint8_t>(pos));
        int32_t* out = ids->data;
        uint8_t* sm = want_soft ? soft->data : nullptr;
        if (p || s) {
            for (int64_t i = 0; i < n_seqs; ++i) {
                std::copy(sp.prefix.begin(), sp.prefix.end(), out + offsets[i]);
                std::copy(sp.suffix.begin(), sp.suffix.end(), out + offsets[i + 1] - s);
                if (sm) {
                    std::fill(sm + offsets[i], sm + offsets[i] + p, uint8_t(0));
                    std::fill(sm + offsets[i + 1] - s, sm + offsets[i + 1], uint8_t(0));
                }
            }
        }
        parallel_for(nt, threads, [&](int64_t t) {
            write(tasks[t], out + task_off[t], sm ? sm + task_off[t] : nullptr);
        }, grain);
    }
    return finish(*ids, std::move(offsets), soft.get());
}

}  // namespace dna
}  // namespace omicskern
