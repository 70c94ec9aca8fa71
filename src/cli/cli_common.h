#pragma once
// The CLI is a thin shell: each subcommand lives in its own cmd_<name>.cpp and
// registers itself with MOEFY_COMMAND; it parses flags, calls the library and
// prints. Errors (moefy::Error) are turned into one message and exit code 1 by main.
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

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

// Draws a one-line progress bar with an ETA on stderr when it is a terminal;
// otherwise prints nothing. Use as a library progress callback.
class ProgressBar {
public:
    explicit ProgressBar(std::string label);
    ~ProgressBar();
    void update(double done, double total, const std::string& unit = "");
    void finish();

private:
    std::string label_;
    double start_;
    double last_draw_ = -1;
    bool tty_;
    bool drawn_ = false;
};

}  // namespace moefy::cli

#define MOEFY_CONCAT_(a, b) a##b
#define MOEFY_CONCAT(a, b) MOEFY_CONCAT_(a, b)
#define MOEFY_COMMAND(order, ...) static ::moefy::cli::CommandRegistrar MOEFY_CONCAT(moefy_cmd_, __LINE__)(order, __VA_ARGS__)
