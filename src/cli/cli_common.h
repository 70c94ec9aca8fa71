#pragma once
// The CLI is a thin shell: each subcommand lives in its own cmd_<name>.cpp and
// registers itself with MOEFY_COMMAND; it parses flags, calls the library and
// prints. Errors (moefy::Error) are turned into one message and exit code 1 by main.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/enum_names.h"

namespace moefy {
struct ExpertPlan;
}

namespace moefy::cli {

using CommandSetup = std::function<void(CLI::App& app)>;

struct CommandEntry {
    int order;  // position in --help
    CommandSetup setup;
};
std::vector<CommandEntry>& command_registry();

struct CommandRegistrar {
    CommandRegistrar(int order, CommandSetup setup) { command_registry().push_back({order, std::move(setup)}); }
};

// The `split` command group; each split method adds its own subcommand to it.
CLI::App* split_group(CLI::App& app);

// Progress with an ETA on stderr: a bar redrawn in place on a terminal, a plain
// line every kLogInterval seconds otherwise (a log of a long run). Use as a
// library progress callback.
class ProgressBar {
public:
    explicit ProgressBar(std::string label);
    ~ProgressBar();
    void update(double done, double total, const std::string& unit = "");
    void finish();
    static constexpr double kLogInterval = 10;  // seconds between lines when stderr is not a terminal

private:
    std::string label_;
    double start_;
    double last_draw_ = -1;
    double last_update_ = 0;  // the stage's end, once its last update came (finish may be called later)
    bool tty_;
    bool drawn_ = false;
};

// A file bundled with moefy (e.g. "data/calib.jsonl"), found relative to the
// executable: <prefix>/bin/moefy reads <prefix>/share/moefy/<rel>; a moefy in
// its CMake build directory reads the source tree named by that directory's
// CMakeCache.txt. "" when neither has it.
std::string bundled_file(const std::string& rel);

// One-line summary of a written plan (the split commands).
void print_plan_summary(const ExpertPlan& p, const std::string& out);

// --flag WORD for a value parsed once, here, into `target` by `parse` (which
// throws moefy::Error naming the flag); the help shows `default_word`.
template <class T, class Parse>
CLI::Option* add_parsed_option(CLI::App* cmd, const std::string& flag, T& target, Parse parse, const std::string& help,
                               const std::string& default_word = "") {
    CLI::Option* opt = cmd->add_option_function<std::string>(
        flag, [&target, parse](const std::string& s) { target = parse(s); }, help);
    if (!default_word.empty()) opt->default_str(default_word);
    return opt;
}

// --flag WORD for an enum with a name table (common/enum_names.h): the help
// lists the choices and the current value of `target` as the default.
template <class E, size_t N>
CLI::Option* add_enum_option(CLI::App* cmd, const std::string& flag, E& target, const EnumName<E> (&table)[N],
                             const std::string& help) {
    return add_parsed_option(
        cmd, flag, target, [&table, flag](const std::string& s) { return parse_enum(table, s, flag); },
        fmt::format("{}: {}", help, enum_choices(table, " | ", " | ")), enum_name(table, target));
}

}  // namespace moefy::cli

#define MOEFY_CONCAT_(a, b) a##b
#define MOEFY_CONCAT(a, b) MOEFY_CONCAT_(a, b)
#define MOEFY_COMMAND(order, ...) static ::moefy::cli::CommandRegistrar MOEFY_CONCAT(moefy_cmd_, __LINE__)(order, __VA_ARGS__)
