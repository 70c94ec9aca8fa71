#pragma once
// Helpers shared by tests: temporary directories, file reading, fixture paths,
// running the CLI.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <string>

#include "common/error.h"
#include "mpi/rank_group.h"

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/moefy-test-XXXXXX";
        path = mkdtemp(tmpl);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

inline std::string read_file(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

inline std::string shared_path(const std::string& rel) { return std::string(MOEFY_SHARED_DIR) + "/" + rel; }
inline bool shared_exists(const std::string& rel) { return std::filesystem::exists(shared_path(rel)); }

// The demo model bundled with the repository.
// The message of the moefy::Error that `f` throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const moefy::Error& e) {
        return e.what();
    }
    return "(no error)";
}

inline std::string demo_model_dir() { return std::string(MOEFY_SOURCE_DIR) + "/models/tinyllama-demo"; }
inline std::string repo_data_file(const std::string& name) { return std::string(MOEFY_SOURCE_DIR) + "/data/" + name; }

// A fixture that is part of the repository: its absence is a broken checkout,
// so the test fails (it never skips). Fixtures from ../shared skip instead, and
// their tests are named Shared* (ctest label `shared`, see CMakeLists.txt).
#define REQUIRE_REPO_FILE(path)                                                                       \
    do {                                                                                              \
        if (!std::filesystem::exists(path)) GTEST_FAIL() << (path) << " is missing from the repository"; \
    } while (0)

struct CliResult {
    int status;
    std::string out;  // stdout and stderr together
};

// Runs the moefy CLI with `args` (already shell-quoted where needed); `env`:
// VAR=value assignments for that run only.
inline CliResult run_shell(const std::string& cmd) {
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int st = pclose(p);
    return {WEXITSTATUS(st), out};
}

inline CliResult run_cli(const std::string& args, const std::string& env = "") {
    return run_shell(env + (env.empty() ? "" : " ") + std::string(MOEFY_CLI_PATH) + " " + args);
}

// Why a test of `mpirun -np N moefy ...` cannot run here ("" when it can).
inline std::string mpirun_missing() {
    if (!moefy::RankGroup::built_with_mpi()) return "moefy built without MPI";
    if (std::system("command -v mpirun >/dev/null 2>&1") != 0) return "no mpirun";
    return "";
}

// The CLI under `mpirun -np ranks`. --oversubscribe: a machine with fewer cores
// than ranks still runs. Under the sanitizer build the ranks run without
// LeakSanitizer: Open MPI's components, dlopen'ed and unloaded at MPI_Finalize,
// leave allocations LSan can attribute to no library (so no suppression can
// name them); every other check stays on.
inline CliResult run_cli_mpi(int ranks, const std::string& args) {
    const char* asan = std::getenv("ASAN_OPTIONS");
    const std::string env = asan ? "ASAN_OPTIONS='" + std::string(asan) + ":detect_leaks=0' " : "";
    return run_shell(env + "mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(ranks) + " " +
                     std::string(MOEFY_CLI_PATH) + " " + args);
}
