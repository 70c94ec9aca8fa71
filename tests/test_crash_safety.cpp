// Crash safety and determinism of every writer, through the CLI on the demo model.
//
// Kill test: each writer is SIGKILLed at 20 points spread over its run time
// (measured by one uninterrupted run), half of them with no previous output and
// half over a previous output (--force / overwrite). After each kill the output
// path is absent or holds the complete previous content, or (a kill after the
// commit) the complete new content; a rerun then succeeds, removes the killed
// run's temporary sibling and equals the uninterrupted run byte for byte.
//
// Determinism: the same command gives the same bytes twice and with
// OMP_NUM_THREADS=1 and 2 (plans, checkpoints of every layout, importance files,
// build reports).
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <thread>

#include <gtest/gtest.h>

#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using Tree = std::map<std::string, std::string>;  // relative path -> bytes

Tree snapshot(const std::string& path) {
    Tree t;
    if (!fs::exists(fs::symlink_status(path))) return t;
    if (fs::is_regular_file(path)) {
        t[""] = read_file(path);
        return t;
    }
    for (const auto& e : fs::recursive_directory_iterator(path))
        if (e.is_regular_file()) t[fs::relative(e.path(), path).string()] = read_file(e.path().string());
    return t;
}

// "" when equal, else the first difference (gtest would print every byte of both trees).
std::string diff(const Tree& a, const Tree& b) {
    for (const auto& [k, v] : a) {
        auto it = b.find(k);
        if (it == b.end()) return "'" + k + "' only in the first";
        if (it->second != v) return "'" + k + "' differs";
    }
    for (const auto& [k, v] : b)
        if (!a.count(k)) return "'" + k + "' only in the second";
    return "";
}

std::vector<std::string> temp_siblings(const std::string& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n.find(".tmp-") != std::string::npos || n.find(".old-") != std::string::npos) out.push_back(n);
    }
    return out;
}

pid_t spawn(const std::string& args, const std::string& env = "") {
    const std::string cmd = env + " exec " + std::string(MOEFY_CLI_PATH) + " " + args + " >/dev/null 2>&1";
    const pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    return pid;
}

int wait_for(pid_t pid) {
    int st = 0;
    waitpid(pid, &st, 0);
    return st;
}

int run(const std::string& args, const std::string& env = "") {
    const int st = wait_for(spawn(args, env));
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

struct Writer {
    std::string name;
    std::string args;       // with {out} for the output path
    std::string prev_args;  // the same writer, another seed: the "previous content"
    bool dir;               // output is a directory (then --force is appended for the overwrite half)
};

std::string with_out(std::string s, const std::string& out) {
    const size_t p = s.find("{out}");
    return s.replace(p, 5, out);
}

const std::string demo = demo_model_dir();
const std::string calib = std::string(MOEFY_SOURCE_DIR) + "/data/calib.jsonl";

// A plan for the demo model and a cluster directory, shared by the writers below.
struct Inputs {
    TempDir tmp;
    std::string plan, shared_plan, clusters;
    Inputs() {
        plan = tmp.path + "/plan.json";
        EXPECT_EQ(run("split random --model " + demo + " --experts 4 --seed 3 --out " + plan), 0);
        clusters = tmp.path + "/clusters";
        fs::create_directories(clusters);
        std::ifstream in(calib);
        std::string line;
        for (int i = 0; i < 4 && std::getline(in, line); ++i) std::ofstream(clusters + "/" + std::to_string(i / 2) + ".jsonl", std::ios::app) << line << "\n";
    }
};

Inputs& inputs() {
    static Inputs in;
    return in;
}

std::vector<Writer> writers() {
    const Inputs& in = inputs();
    auto conv = [&](const std::string& fmt) {
        return Writer{"convert-" + fmt, "convert --model " + demo + " --plan " + in.plan + " --format " + fmt + " --top-k 2 --out {out}",
                      "convert --model " + demo + " --plan " + in.plan + " --format " + fmt + " --top-k 1 --out {out}", true};
    };
    return {
        {"split-random", "split random --model " + demo + " --experts 4 --seed 1 --out {out}",
         "split random --model " + demo + " --experts 4 --seed 2 --out {out}", false},
        {"split-cluster", "split cluster --model " + demo + " --experts 4 --restarts 1 --max-iter 5 --seed 1 --out {out}",
         "split cluster --model " + demo + " --experts 4 --restarts 1 --max-iter 5 --seed 2 --out {out}", false},
        {"split-graph", "split graph --model " + demo + " --data " + calib + " --tokens 256 --ctx 64 --experts 4 --seed 1 --out {out}",
         "split graph --model " + demo + " --data " + calib + " --tokens 256 --ctx 64 --experts 4 --seed 2 --out {out}", false},
        conv("llama-moe"),
        conv("mixtral"),
        conv("deepseek"),
        {"build", "build --model " + demo + " --method random --experts 4 --top-k 2 --data " + calib + " --calib-tokens 256 --ctx 64 --seed 1 --out {out}",
         "build --model " + demo + " --method random --experts 4 --top-k 2 --data " + calib + " --calib-tokens 256 --ctx 64 --seed 2 --out {out}", true},
        {"importance", "importance --model " + demo + " --data " + in.clusters + " --ctx 32 --max-tokens-per-cluster 32 --out {out}",
         "importance --model " + demo + " --data " + in.clusters + " --ctx 32 --max-tokens-per-cluster 16 --out {out}", false},
    };
}

constexpr int kKills = 20;

}  // namespace

std::string param_name(const ::testing::TestParamInfo<int>& i) {
    static const char* names[] = {"split_random", "split_cluster", "split_graph", "convert_llama_moe", "convert_mixtral",
                                  "convert_deepseek", "build", "importance", "build_report"};
    return names[i.param];
}

// One instance per writer, so ctest runs them in parallel.
class CrashSafety : public ::testing::TestWithParam<int> {};
class Determinism : public ::testing::TestWithParam<int> {};

TEST_P(CrashSafety, SigkillAtTwentyPointsLeavesOldOrNothingAndRerunMatches) {
    {
        const Writer w = writers()[size_t(GetParam())];
        SCOPED_TRACE(w.name);
        TempDir tmp;
        const std::string out = tmp.path + "/out";
        const std::string force = w.dir ? " --force" : "";
        // The uninterrupted run: reference bytes and duration.
        const auto t0 = std::chrono::steady_clock::now();
        ASSERT_EQ(run(with_out(w.args, out)), 0);
        const double dur0 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const Tree ref = snapshot(out);
        ASSERT_FALSE(ref.empty());
        fs::remove_all(out);
        // The previous content for the overwrite half.
        const std::string prev_out = tmp.path + "/prev";
        const auto t1 = std::chrono::steady_clock::now();
        ASSERT_EQ(run(with_out(w.prev_args, prev_out)), 0);
        // The shorter of the two runs: on a loaded machine one of them may stall.
        const double dur = std::min(dur0, std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
        const Tree prev = snapshot(prev_out);
        ASSERT_NE(diff(prev, ref), "");
        int killed_mid_run = 0;
        for (int k = 0; k < kKills; ++k) {
            const bool over_previous = k % 2 == 1;
            fs::remove_all(out);
            if (over_previous) fs::copy(prev_out, out, fs::copy_options::recursive);
            const pid_t pid = spawn(with_out(w.args, out) + (over_previous ? force : ""));
            std::this_thread::sleep_for(std::chrono::duration<double>(0.9 * dur * (k + 0.5) / kKills));
            kill(pid, SIGKILL);
            const int st = wait_for(pid);
            if (WIFSIGNALED(st)) ++killed_mid_run;
            const Tree now = snapshot(out);
            if (over_previous) EXPECT_TRUE(now == prev || now == ref) << "kill " << k << ": output is neither old nor complete: " << diff(now, prev);
            else EXPECT_TRUE(now.empty() || now == ref) << "kill " << k << ": a partial output is at the output path";
            if (k % 5 == 4 || k == kKills - 1) {
                // The rerun: succeeds, cleans the killed run's sibling, equals the reference.
                ASSERT_EQ(run(with_out(w.args, out) + force), 0) << "rerun after kill " << k;
                EXPECT_EQ(diff(snapshot(out), ref), "") << "rerun after kill " << k;
                EXPECT_TRUE(temp_siblings(tmp.path).empty()) << "rerun left or kept " << temp_siblings(tmp.path).front();
            }
        }
        EXPECT_GE(killed_mid_run, kKills / 2) << "most kills should land while the writer runs";
        RecordProperty(w.name + "_seconds", std::to_string(dur));
    }
}

INSTANTIATE_TEST_SUITE_P(Writers, CrashSafety, ::testing::Range(0, 8), param_name);

TEST(FullDisk, WriteFailureIsAnErrorWithNothingLeftBehind) {
    // RLIMIT_FSIZE with SIGXFSZ ignored makes write(2) fail with EFBIG once a file
    // reaches the limit: a disk that fills up while moefy writes.
    const Inputs& in = inputs();
    TempDir tmp;
    for (const std::string& args : {"convert --model " + demo + " --plan " + in.plan + " --format mixtral --out " + tmp.path + "/out",
                                    "split random --model " + demo + " --experts 4 --out " + tmp.path + "/out"}) {
        SCOPED_TRACE(args);
        const std::string cmd = "trap '' XFSZ; ulimit -f 8; exec " + std::string(MOEFY_CLI_PATH) + " " + args + " 2>&1";
        FILE* p = popen(("/bin/sh -c \"" + cmd + "\"").c_str(), "r");
        std::string msg;
        char buf[4096];
        for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) msg.append(buf, n);
        const int st = pclose(p);
        EXPECT_EQ(WEXITSTATUS(st), 1) << msg;
        EXPECT_NE(msg.find("moefy: error:"), std::string::npos) << msg;
        EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
        EXPECT_FALSE(fs::exists(tmp.path + "/out"));
        EXPECT_TRUE(temp_siblings(tmp.path).empty());
    }
}

TEST_P(Determinism, SameBytesAcrossRunsAndThreadCounts) {
    std::vector<Writer> ws = writers();
    const Inputs& in = inputs();
    // The build report (HTML) too.
    ws.push_back({"build-report", "build --model " + demo + " --method random --experts 4 --top-k 2 --data " + calib +
                                      " --eval-data " + calib + " --eval-tokens 64 --calib-tokens 256 --ctx 64 --seed 1 --out "
                                      "{out}/model --report {out}/report.html", "", true});
    (void)in;
    {
        const Writer w = ws[size_t(GetParam())];
        SCOPED_TRACE(w.name);
        TempDir tmp;
        std::vector<Tree> got;
        const std::string out = tmp.path + "/out";  // one path: config.json and reports name it
        for (const char* env : {"OMP_NUM_THREADS=2", "OMP_NUM_THREADS=2", "OMP_NUM_THREADS=1"}) {
            fs::remove_all(out);
            std::string args = w.args;
            if (w.name == "build-report") {
                fs::create_directories(out);
                for (size_t p; (p = args.find("{out}")) != std::string::npos;) args.replace(p, 5, out);
            } else {
                args = with_out(args, out);
            }
            ASSERT_EQ(run(args, env), 0) << env;
            got.push_back(snapshot(out));
        }
        EXPECT_EQ(diff(got[0], got[1]), "") << "two runs differ";
        EXPECT_EQ(diff(got[0], got[2]), "") << "OMP_NUM_THREADS=1 and 2 differ";
    }
}

INSTANTIATE_TEST_SUITE_P(Writers, Determinism, ::testing::Range(0, 9), param_name);
