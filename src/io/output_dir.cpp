#include "io/output_dir.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace moefy {

namespace fs = std::filesystem;

OutputDir::OutputDir(const std::string& final_path, bool force) : final_(final_path), force_(force) {
    while (final_.size() > 1 && final_.back() == '/') final_.pop_back();
    if (final_.empty()) fail("output path is empty");
    if (fs::exists(final_) && !force_) fail("{}: output already exists (use --force to replace it)", final_);
    fs::path parent = fs::path(final_).parent_path();
    if (!parent.empty() && !fs::is_directory(parent)) fail("{}: parent directory {} does not exist", final_, parent.string());
    tmp_ = final_ + ".tmp-" + std::to_string(getpid());
    std::error_code ec;
    fs::remove_all(tmp_, ec);
    if (!fs::create_directory(tmp_, ec)) fail("{}: cannot create temporary directory: {}", tmp_, ec.message());
}

OutputDir::~OutputDir() {
    if (!committed_) {
        std::error_code ec;
        fs::remove_all(tmp_, ec);
    }
}

void OutputDir::commit() {
    std::error_code ec;
    if (fs::exists(final_)) {
        if (!force_) fail("{}: output appeared while writing; not replacing it without --force", final_);
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

void write_file_atomic(const std::string& path, const std::string& text) {
    std::string tmp = path + ".tmp-" + std::to_string(getpid());
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) fail("{}: cannot create: {}", tmp, std::strerror(errno));
        f.write(text.data(), std::streamsize(text.size()));
        f.flush();
        if (!f) {
            std::error_code ec;
            fs::remove(tmp, ec);
            fail("{}: write failed", path);
        }
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) {
        fs::remove(tmp, ec);
        fail("{}: cannot rename into place: {}", path, ec.message());
    }
}

std::string read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("{}: cannot open: {}", path, std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

}  // namespace moefy
