#pragma once
// Shared by the libFuzzer targets: a per-process scratch directory on tmpfs for
// the readers that take a path, and the rule that a moefy::Error is the
// expected outcome of bad input (anything else escaping is a finding).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/error.h"

namespace fuzz {

inline const std::string& scratch_dir() {
    // Leaked on purpose: the atexit cleanup runs after static destructors.
    static const std::string* dir = [] {
        const char* base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
        auto* d = new std::string(std::string(base) + "/moefy-fuzz-" + std::to_string(getpid()));
        std::filesystem::create_directories(*d);
        std::atexit([] { std::error_code ec; std::filesystem::remove_all(scratch_dir(), ec); });
        return d;
    }();
    return *dir;
}

// Writes the input to scratch_dir()/name and returns the path.
inline std::string write_input(const uint8_t* data, size_t size, const std::string& name) {
    const std::string path = scratch_dir() + "/" + name;
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) std::abort();
    if (size && std::fwrite(data, 1, size, f) != size) std::abort();
    std::fclose(f);
    return path;
}

inline std::string_view as_text(const uint8_t* data, size_t size) { return {reinterpret_cast<const char*>(data), size}; }

}  // namespace fuzz

// Runs `body`; a moefy::Error (a clean refusal) is fine, everything else propagates to libFuzzer.
#define FUZZ_EXPECT_ERRORS(...)       \
    try {                             \
        __VA_ARGS__;                  \
    } catch (const moefy::Error&) {   \
    }
