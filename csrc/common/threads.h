// Thread helpers shared by the C++ core. Work is split by item (sequence, cell), dynamically,
// so one long sequence does not stall a static partition. Items never share mutable state.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace omicskern {

// n <= 0 means "all hardware threads".
inline int resolve_threads(int n) {
    if (n > 0) return n;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

// Calls fn(i) for i in [0, n) on up to `threads` threads, grabbing `chunk` items at a time.
// If fn throws, the exception of the LOWEST failing index is rethrown in the caller after all
// threads joined (deterministic error messages whatever the thread count): items above a known
// failure are skipped, items below it are still run.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn&& fn, int64_t chunk = 1) {
    if (n <= 0) return;
    threads = std::max(1, std::min<int>(resolve_threads(threads), static_cast<int>(std::min<int64_t>(n, 1 << 20))));
    chunk = std::max<int64_t>(1, chunk);
    if (threads == 1) {
        for (int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<int64_t> first_failed{n};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto run_one = [&](int64_t i) -> bool {  // false: stop this chunk
        if (i > first_failed.load(std::memory_order_relaxed)) return false;
        try {
            fn(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (i < first_failed.load()) {
                first_failed.store(i);
                error = std::current_exception();
            }
            return false;
        }
        return true;
    };
#ifdef OMICSKERN_OPENMP
    // OpenMP keeps a warm thread pool: cheaper than spawning threads for small batches.
    const int64_t n_chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t stop = std::min(n, (c + 1) * chunk);
        for (int64_t i = c * chunk; i < stop; ++i)
            if (!run_one(i)) break;
    }
#else
    std::atomic<int64_t> next{0};
    auto worker = [&]() {
        for (;;) {
            int64_t start = next.fetch_add(chunk, std::memory_order_relaxed);
            if (start >= n || start > first_failed.load(std::memory_order_relaxed)) break;
            const int64_t stop = std::min(n, start + chunk);
            for (int64_t i = start; i < stop; ++i)
                if (!run_one(i)) break;
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
#endif
    if (error) std::rethrow_exception(error);
}

}  // namespace omicskern
