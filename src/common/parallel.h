#pragma once
// moefy's one thread runtime: every parallel loop (the engine's products,
// attention, norms and backward; text clustering, the splits, router fits and
// calibration) runs on these worker threads, and OpenBLAS is only called
// single-threaded inside them (parallel.cpp sets it to one thread for the whole
// process at start-up; a large BLAS product is split over the pool in fixed
// blocks). A waiting thread spins for a few microseconds, then sleeps in the
// kernel (futex): a runtime that spins ~3 ms at every barrier (libgomp's
// default) burns whole time slices on an oversubscribed machine (tests and
// builds beside us on 2 cores): measured 5 vs 180 tokens/s decoding the demo
// model. Thread count: OMP_NUM_THREADS (the variable users and scripts already
// set), else the CPU count.
//
// Bodies must not throw. A call from inside a running body (nested), or while
// another thread owns the pool, runs serially on the calling thread.
#include <cstdint>
#include <functional>

namespace moefy {

int parallel_threads();

// True while this thread runs a parallel body (the caller's share included):
// a parallel call made now would run serially. For code that plans its own
// thread budget (balanced k-means inside a parallel restart).
bool in_parallel_region();

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
// fn(0, 1) on the caller; max_threads > 0 caps this call's threads (a loop of
// few items, or a caller's own budget: KMeansOptions::threads).
void parallel_run(const std::function<void(int thread, int nthreads)>& fn, bool parallel = true, int max_threads = 0);

// body(begin, end) over one contiguous share of [0, n) per thread.
inline void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& body, bool parallel = true,
                         int max_threads = 0) {
    if (n <= 0) return;
    parallel_run(
        [&](int t, int P) {
            const int64_t b = n * t / P, e = n * (t + 1) / P;
            if (b < e) body(b, e);
        },
        parallel && n > 1, max_threads);
}

// f(i) for every i in [0, n), contiguous shares per thread.
template <typename F>
void parallel_for_each(int64_t n, F&& f, bool parallel = true) {
    parallel_for(
        n, [&](int64_t b, int64_t e) { for (; b < e; ++b) f(b); }, parallel);
}

// Loops whose items cost very different amounts (rows of a triangle, clusters
// of any size): threads take `grain` consecutive indices at a time from a shared
// counter until [0, n) is used up, and call body(begin, end, thread). Which
// thread runs an index varies between runs, so a body writes per-index results
// (or per-thread ones that do not depend on the order, like integer counts).
void parallel_for_dynamic(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end, int thread)>& body,
                          bool parallel = true, int max_threads = 0);

}  // namespace moefy
