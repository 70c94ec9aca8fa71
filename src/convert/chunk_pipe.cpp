#include "convert/chunk_pipe.h"

#include "io/safetensors.h"

namespace moefy::convert {

ChunkPipe::ChunkPipe(size_t chunk_bytes, int depth) : chunk_(chunk_bytes), bufs_(size_t(depth)) {
    for (int i = 0; i < depth; ++i) free_.push_back(i);
    writer_ = std::thread([this] { run(); });
}

ChunkPipe::~ChunkPipe() {
    abort();
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    to_writer_.notify_all();
    writer_.join();
}

void ChunkPipe::begin(ByteSink& sink) {
    std::lock_guard<std::mutex> lk(mu_);
    sink_ = &sink;
    error_ = nullptr;
}

uint8_t* ChunkPipe::acquire(size_t need) {
    std::unique_lock<std::mutex> lk(mu_);
    to_caller_.wait(lk, [&] { return !free_.empty() || error_; });
    if (error_) rethrow_locked(lk);
    acquired_ = free_.back();
    free_.pop_back();
    std::vector<uint8_t>& b = bufs_[size_t(acquired_)];
    if (b.size() < std::max(need, chunk_)) b.resize(std::max(need, chunk_));  // free: the writer does not touch it
    return b.data();
}

void ChunkPipe::submit(size_t n) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        queue_.push_back({acquired_, n});
        acquired_ = -1;
    }
    to_writer_.notify_one();
}

void ChunkPipe::end() {
    std::unique_lock<std::mutex> lk(mu_);
    to_caller_.wait(lk, [&] { return (queue_.empty() && !busy_) || error_; });
    if (error_) rethrow_locked(lk);
    sink_ = nullptr;
}

void ChunkPipe::abort() {
    std::unique_lock<std::mutex> lk(mu_);
    for (auto& q : queue_) free_.push_back(q.first);
    queue_.clear();
    if (acquired_ >= 0) free_.push_back(acquired_);
    acquired_ = -1;
    to_caller_.wait(lk, [&] { return !busy_; });
    sink_ = nullptr;
    error_ = nullptr;
}

// Called with the lock held and error_ set: leaves the pipe idle and empty, then throws.
void ChunkPipe::rethrow_locked(std::unique_lock<std::mutex>& lk) {
    to_caller_.wait(lk, [&] { return !busy_; });
    std::exception_ptr e = error_;
    error_ = nullptr;
    sink_ = nullptr;
    std::rethrow_exception(e);
}

void ChunkPipe::run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
        to_writer_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_
        const auto [b, n] = queue_.front();
        queue_.pop_front();
        busy_ = true;
        ByteSink* sink = sink_;
        lk.unlock();
        std::exception_ptr err;
        try {
            sink->write(bufs_[size_t(b)].data(), n);
        } catch (...) {
            err = std::current_exception();
        }
        lk.lock();
        busy_ = false;
        free_.push_back(b);
        if (err) {  // the rest of this tensor is dropped; the caller rethrows
            error_ = err;
            for (auto& q : queue_) free_.push_back(q.first);
            queue_.clear();
        }
        to_caller_.notify_one();
    }
}

}  // namespace moefy::convert
