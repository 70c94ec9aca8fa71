#include "io/output_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace moefy {

namespace fs = std::filesystem;

static std::string strip_slashes(std::string p) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    return p;
}

static const char* special_kind(mode_t m) {
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISSOCK(m)) return "a socket";
    return nullptr;
}

void check_output_path(const std::string& path_in, OutputKind kind, bool force) {
    const std::string path = strip_slashes(path_in);
    if (path.empty()) fail("output path is empty");
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (S_ISLNK(st.st_mode)) fail("{}: output path is a symbolic link; moefy does not write through or replace links", path);
        if (const char* k = special_kind(st.st_mode)) fail("{}: output path is {}, not a regular file; refusing to replace it", path, k);
        if (kind == OutputKind::File && S_ISDIR(st.st_mode))
            fail("{}: output path is a directory; give a file name", path);
        if (kind == OutputKind::Directory && !S_ISDIR(st.st_mode))
            fail("{}: output path is an existing file, not a directory; refusing to replace it", path);
        if (kind == OutputKind::Directory && !force) fail("{}: output already exists (use --force to replace it)", path);
    } else if (errno != ENOENT) {
        fail("{}: cannot check output path: {}", path, std::strerror(errno));
    }
    fs::path parent = fs::path(path).parent_path();
    if (!parent.empty() && !fs::is_directory(parent)) fail("{}: parent directory {} does not exist", path, parent.string());
}

std::string temp_sibling(const std::string& path) { return strip_slashes(path) + ".tmp-" + std::to_string(getpid()); }

void remove_stale_siblings(const std::string& path_in) {
    const fs::path path(strip_slashes(path_in));
    fs::path parent = path.parent_path();
    if (parent.empty()) parent = ".";
    const std::string base = path.filename().string();
    std::error_code ec;
    for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        for (const char* tag : {".tmp-", ".old-"}) {
            const std::string prefix = base + tag;
            if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
            const std::string digits = name.substr(prefix.size());
            if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
            const pid_t pid = pid_t(std::stol(digits));
            const bool gone = pid != getpid() && ::kill(pid, 0) != 0 && errno == ESRCH;
            if (gone || pid == getpid()) {
                std::error_code rm;
                fs::remove_all(it->path(), rm);
            }
        }
    }
}

// rename(2) that swaps when both exist, so `to` is never absent in between.
static int exchange_paths(const std::string& from, const std::string& to) {
#ifdef SYS_renameat2
    return int(::syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), 2 /* RENAME_EXCHANGE */));
#else
    errno = ENOSYS;
    return -1;
#endif
}

OutputDir::OutputDir(const std::string& final_path, bool force) : final_(strip_slashes(final_path)), force_(force) {
    check_output_path(final_, OutputKind::Directory, force_);
    remove_stale_siblings(final_);
    tmp_ = temp_sibling(final_);
    std::error_code ec;
    if (!fs::create_directory(tmp_, ec)) fail("{}: cannot create temporary directory: {}", tmp_, ec ? ec.message() : "it exists");
}

OutputDir::~OutputDir() {
    if (!committed_) {
        std::error_code ec;
        fs::remove_all(tmp_, ec);
    }
}

void OutputDir::commit() {
    check_output_path(final_, OutputKind::Directory, force_);
    std::error_code ec;
    if (fs::exists(fs::symlink_status(final_))) {
        // Swap the finished output in; the temporary then holds the old one.
        if (exchange_paths(tmp_, final_) == 0) {
            committed_ = true;
            fs::remove_all(tmp_, ec);
            return;
        }
        std::string old = final_ + ".old-" + std::to_string(getpid());
        fs::rename(final_, old, ec);
        if (ec) fail("{}: cannot move the old output aside: {}", final_, ec.message());
        fs::rename(tmp_, final_, ec);
        if (ec) fail("{}: cannot rename {} into place: {}", final_, tmp_, ec.message());
        fs::remove_all(old, ec);
    } else {
        fs::rename(tmp_, final_, ec);
        if (ec) fail("{}: cannot rename {} into place: {}", final_, tmp_, ec.message());
    }
    committed_ = true;
}

void commit_file(const std::string& tmp, const std::string& path) {
    try {
        check_output_path(path, OutputKind::File, true);
    } catch (...) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        std::error_code ec;
        fs::remove(tmp, ec);
        fail("{}: cannot rename {} into place: {}", path, tmp, std::strerror(e));
    }
}

void write_file_atomic(const std::string& path, const std::string& text) {
    check_output_path(path, OutputKind::File, true);
    remove_stale_siblings(path);
    const std::string tmp = temp_sibling(path);
    {
        const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) fail("{}: cannot create: {}", tmp, std::strerror(errno));
        const char* p = text.data();
        size_t left = text.size();
        while (left > 0) {
            const ssize_t w = ::write(fd, p, left);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                const int e = w < 0 ? errno : ENOSPC;
                ::close(fd);
                std::error_code ec;
                fs::remove(tmp, ec);
                fail("{}: write failed: {}", path, std::strerror(e));
            }
            p += w;
            left -= size_t(w);
        }
        if (::close(fd) != 0) {
            const int e = errno;
            std::error_code ec;
            fs::remove(tmp, ec);
            fail("{}: write failed: {}", path, std::strerror(e));
        }
    }
    commit_file(tmp, path);
}

std::string read_text_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) fail("{}: cannot open: {}", path, std::strerror(errno));
    if (S_ISDIR(st.st_mode)) fail("{}: is a directory, expected a file", path);
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("{}: cannot open: {}", path, std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) fail("{}: read failed", path);
    return ss.str();
}

}  // namespace moefy
