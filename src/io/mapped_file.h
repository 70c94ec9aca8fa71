#pragma once
// Read-only memory mapping of a whole file. Move-only; unmaps on destruction.
#include <cstddef>
#include <cstdint>
#include <string>

namespace moefy {

class MappedFile {
public:
    MappedFile() = default;
    explicit MappedFile(const std::string& path);  // throws naming the path
    ~MappedFile();
    MappedFile(MappedFile&& o) noexcept;
    MappedFile& operator=(MappedFile&& o) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }
    // The open descriptor, for copies the kernel can do itself (copy_file_range).
    int fd() const { return fd_; }
    // Drops the pages of [ptr, ptr+n) from this process's resident set (the
    // page cache keeps them), so streaming over a large model keeps RSS flat.
    void release(const void* ptr, size_t n) const;

private:
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    int fd_ = -1;
};

// A mapped file that shrinks while it is read (another process truncates a
// checkpoint that convert is copying) makes the kernel send SIGBUS on the next
// touch of a page past the new end. Design: every MappedFile registers its
// address range in a fixed, lock-free table; this handler (installed once by
// the CLI) finds the range holding the faulting address, writes one line
// naming the file with write(2), and leaves with _exit(1). Nothing is
// unwound: longjmp out of a copy loop through C++ frames (pool workers,
// locks, half-built vectors) would not be safe, and a fault is not something
// to recover from. The temporary output the run was writing stays as
// "OUT.tmp-<pid>", which the next run writing OUT removes (io/output_dir.h);
// OUT itself is never touched. A SIGBUS at an address no mapping holds is
// re-raised with the default action.
void install_mapped_file_fault_handler();

}  // namespace moefy
