#pragma once
// A two-stage pipeline for streaming one tensor into a ByteSink: the caller
// fills chunk k+1 (a gather from the mmap) while a writer thread hands chunk k
// to the sink (the kernel's page-cache copy). On two cores this overlaps the
// two halves of the converter's work instead of adding them up.
//
// Use per tensor:  begin(sink); { p = acquire(n); fill p; submit(n); }...; end();
// end() returns once every byte is in the sink and rethrows a writer error. If
// the caller throws between begin and end, the destructor of Tensor (or abort())
// waits for the write in flight and drops the rest, so the sink is never used
// after it is gone.
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace moefy {

class ByteSink;

namespace convert {

class ChunkPipe {
public:
    explicit ChunkPipe(size_t chunk_bytes, int depth = 4);
    ~ChunkPipe();
    ChunkPipe(const ChunkPipe&) = delete;
    ChunkPipe& operator=(const ChunkPipe&) = delete;

    size_t chunk_bytes() const { return chunk_; }
    void begin(ByteSink& sink);
    uint8_t* acquire(size_t need);  // a free chunk of at least `need` bytes; blocks while all are queued
    void submit(size_t n);  // the last acquired chunk holds n bytes
    void end();             // everything written; rethrows a writer error
    void abort();           // wait for the write in flight, drop the queue

    // begin() ... end(), or abort() when unwinding.
    class Tensor {
    public:
        Tensor(ChunkPipe& p, ByteSink& sink) : p_(p) { p_.begin(sink); }
        ~Tensor() {
            if (!done_) p_.abort();
        }
        void end() {
            done_ = true;
            p_.end();
        }

    private:
        ChunkPipe& p_;
        bool done_ = false;
    };

private:
    void run();
    void rethrow_locked(std::unique_lock<std::mutex>& lk);

    size_t chunk_;
    std::vector<std::vector<uint8_t>> bufs_;
    std::vector<int> free_;                      // indices of free buffers
    std::deque<std::pair<int, size_t>> queue_;   // (buffer, bytes) to write, in order
    int acquired_ = -1;
    bool busy_ = false;                          // the writer holds a buffer
    bool stop_ = false;
    ByteSink* sink_ = nullptr;
    std::exception_ptr error_;
    std::mutex mu_;
    std::condition_variable to_writer_, to_caller_;
    std::thread writer_;
};

}  // namespace convert
}  // namespace moefy
