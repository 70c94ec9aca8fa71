#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include <cblas.h>
#include <immintrin.h>

namespace moefy {

namespace {

// OpenBLAS runs single-threaded for the whole process, set once here before any
// BLAS call: every BLAS call of moefy is one thread's share of a pool loop (a
// fixed block of rows or columns), so OpenBLAS's own threads would be a second
// runtime competing with the pool for the same cores, and its results depend on
// its thread count (ours must not depend on OMP_NUM_THREADS). Only the setting
// happens at static-init time, not the pool's threads (they start on first use:
// bench_eval forks before it starts any thread).
[[maybe_unused]] const bool g_blas_single_threaded = [] {
    openblas_set_num_threads(1);
    return true;
}();

// About 20-50 µs of pause instructions before a waiting thread sleeps: long
// enough to catch the next job of a forward pass, short next to a time slice.
constexpr int kSpin = 2000;

thread_local bool t_in_pool = false;

template <typename T>
void wait_while_equal(const std::atomic<T>& a, T v) {
    for (int i = 0; i < kSpin; ++i) {
        if (a.load(std::memory_order_acquire) != v) return;
        _mm_pause();
    }
    while (a.load(std::memory_order_acquire) == v) a.wait(v, std::memory_order_acquire);
}

int threads_from_env() {
    if (const char* s = std::getenv("OMP_NUM_THREADS")) {
        const int n = std::atoi(s);
        if (n > 0) return n;
    }
    const unsigned hc = std::thread::hardware_concurrency();
    return hc > 0 ? int(hc) : 1;
}

class Pool {
public:
    explicit Pool(int n) : n_(n) {
        for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { work(i); });
    }
    ~Pool() {
        stop_ = true;
        gen_.fetch_add(1, std::memory_order_acq_rel);
        gen_.notify_all();
        for (auto& w : workers_) w.join();
    }
    int size() const { return n_; }

    int limit = 0;  // 0: all n_ threads

    void run(const std::function<void(int, int)>& fn, int max_threads) {
        std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
        int P = limit > 0 ? std::min(limit, n_) : n_;
        if (max_threads > 0) P = std::min(P, max_threads);
        if (!lock.owns_lock() || P == 1) {
            fn(0, 1);
            return;
        }
        job_ = &fn;
        active_ = P;
        pending_.store(n_ - 1, std::memory_order_release);
        gen_.fetch_add(1, std::memory_order_acq_rel);
        gen_.notify_all();
        t_in_pool = true;
        fn(0, P);
        t_in_pool = false;
        for (int left = pending_.load(std::memory_order_acquire); left != 0; left = pending_.load(std::memory_order_acquire))
            wait_while_equal(pending_, left);
        job_ = nullptr;
    }

private:
    void work(int idx) {
        t_in_pool = true;
        uint32_t seen = 0;
        for (;;) {
            wait_while_equal(gen_, seen);
            seen = gen_.load(std::memory_order_acquire);
            if (stop_) return;
            if (idx < active_) (*job_)(idx, active_);
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
        }
    }

    const int n_;
    std::vector<std::thread> workers_;
    std::mutex busy_;
    std::atomic<uint32_t> gen_{0};
    std::atomic<int> pending_{0};
    const std::function<void(int, int)>* job_ = nullptr;
    int active_ = 0;  // threads of the current job; the others only check in
    std::atomic<bool> stop_{false};
};

Pool& pool() {
    static Pool p(threads_from_env());
    return p;
}

}  // namespace

int parallel_threads() {
    Pool& p = pool();
    return p.limit > 0 ? std::min(p.limit, p.size()) : p.size();
}

ScopedThreadLimit::ScopedThreadLimit(int n) : prev_(pool().limit) { pool().limit = std::max(1, n); }
ScopedThreadLimit::~ScopedThreadLimit() { pool().limit = prev_; }

bool in_parallel_region() { return t_in_pool; }

void parallel_run(const std::function<void(int, int)>& fn, bool parallel, int max_threads) {
    if (!parallel || t_in_pool || max_threads == 1) {
        fn(0, 1);
        return;
    }
    pool().run(fn, max_threads);
}

void parallel_for_dynamic(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& body, bool parallel,
                          int max_threads) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    std::atomic<int64_t> next{0};
    parallel_run(
        [&](int t, int) {
            for (int64_t b = next.fetch_add(grain, std::memory_order_relaxed); b < n;
                 b = next.fetch_add(grain, std::memory_order_relaxed))
                body(b, std::min(n, b + grain), t);
        },
        parallel && n > grain, max_threads);
}

}  // namespace moefy
