#pragma once
// The engine's worker threads. A waiting thread spins for a few microseconds,
// then sleeps in the kernel (futex). OpenMP's default policy spins ~3 ms at
// every barrier, which on an oversubscribed machine (tests and builds running
// beside us on 2 cores) burns whole time slices: measured 5 vs 180 tokens/s
// decoding the demo model. Thread count: OMP_NUM_THREADS, else the CPU count.
// This pool is the engine's one thread runtime: every parallel loop of
// src/model (products, attention, norms, the backward) runs on it, and
// OpenBLAS is only ever called single-threaded from inside it.
//
// Bodies must not throw. A call from inside a running body (nested), or while
// another thread owns the pool, runs serially on the calling thread.
#include <cstdint>
#include <functional>

namespace moefy {

int parallel_threads();

// While alive, parallel runs use at most n threads (n >= 1): the tests of
// thread-count independence, and MPI ranks sharing a machine. Construct it
// outside parallel regions; not thread safe.
class ScopedThreadLimit {
public:
    explicit ScopedThreadLimit(int n);
    ~ScopedThreadLimit();
    ScopedThreadLimit(const ScopedThreadLimit&) = delete;
    ScopedThreadLimit& operator=(const ScopedThreadLimit&) = delete;

private:
    int prev_;
};

// Runs fn(thread, nthreads) once per thread, thread = 0..nthreads-1 (the
// caller is thread 0), and returns when all are done. parallel = false runs
// fn(0, 1) on the caller.
void parallel_run(const std::function<void(int thread, int nthreads)>& fn, bool parallel = true);

// body(begin, end) over one contiguous share of [0, n) per thread.
inline void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& body, bool parallel = true) {
    if (n <= 0) return;
    parallel_run(
        [&](int t, int P) {
            const int64_t b = n * t / P, e = n * (t + 1) / P;
            if (b < e) body(b, e);
        },
        parallel && n > 1);
}

// f(i) for every i in [0, n), contiguous shares per thread.
template <typename F>
void parallel_for_each(int64_t n, F&& f, bool parallel = true) {
    parallel_for(
        n, [&](int64_t b, int64_t e) { for (; b < e; ++b) f(b); }, parallel);
}

}  // namespace moefy
