#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.h"

namespace moefy {

namespace {

// Mappings the SIGBUS handler can name. Slots are claimed with a CAS on `begin`
// (0 = free) so the handler, which takes no lock, sees either a whole entry or none.
struct MappingSlot {
    std::atomic<uintptr_t> begin{0};
    std::atomic<size_t> size{0};
    char path[512] = {};
};
constexpr int kSlots = 256;
MappingSlot g_slots[kSlots];
constexpr uintptr_t kClaimed = 1;  // claimed, being filled

void register_mapping(const void* p, size_t n, const std::string& path) {
    for (MappingSlot& s : g_slots) {
        uintptr_t expected = 0;
        if (!s.begin.compare_exchange_strong(expected, kClaimed)) continue;
        std::strncpy(s.path, path.c_str(), sizeof s.path - 1);
        s.path[sizeof s.path - 1] = 0;
        s.size.store(n);
        s.begin.store(reinterpret_cast<uintptr_t>(p));
        return;
    }
    // Table full: the mapping works, a fault in it is just not named.
}

void unregister_mapping(const void* p) {
    for (MappingSlot& s : g_slots)
        if (s.begin.load() == reinterpret_cast<uintptr_t>(p)) {
            s.begin.store(0);
            return;
        }
}

void write_all(const char* s) {
    size_t n = std::strlen(s);
    while (n > 0) {
        const ssize_t w = ::write(2, s, n);
        if (w <= 0) return;
        s += w;
        n -= size_t(w);
    }
}

void on_sigbus(int sig, siginfo_t* info, void*) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
    for (MappingSlot& s : g_slots) {
        const uintptr_t b = s.begin.load();
        if (b > kClaimed && a >= b && a - b < s.size.load()) {
            write_all("moefy: error: ");
            write_all(s.path);
            write_all(": the file shrank while moefy was reading it (bus error reading a mapped page past its new end); "
                      "stopped, the output was not written\n");
            _exit(1);
        }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

}  // namespace

void install_mapped_file_fault_handler() {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, nullptr);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        fail("{}: cannot stat: {}", path, std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        fail("{}: not a regular file{}", path, S_ISDIR(st.st_mode) ? " (it is a directory)" : "");
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
        void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            ::close(fd);
            fail("{}: cannot mmap: {}", path, std::strerror(e));
        }
        data_ = static_cast<const uint8_t*>(p);
        register_mapping(data_, size_, path);
    }
    fd_ = fd;
}

MappedFile::~MappedFile() {
    if (data_) unregister_mapping(data_), munmap(const_cast<uint8_t*>(data_), size_);
    if (fd_ >= 0) ::close(fd_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)),
      data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      fd_(std::exchange(o.fd_, -1)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
    if (this != &o) {
        if (data_) unregister_mapping(data_), munmap(const_cast<uint8_t*>(data_), size_);
        if (fd_ >= 0) ::close(fd_);
        path_ = std::move(o.path_);
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
        fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
}

void MappedFile::release(const void* ptr, size_t n) const {
    if (!data_ || n == 0) return;
    const long page = sysconf(_SC_PAGESIZE);
    uintptr_t begin = reinterpret_cast<uintptr_t>(ptr);
    uintptr_t end = begin + n;
    begin = (begin + page - 1) / page * page;  // only whole pages inside the range
    end = end / page * page;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace moefy
