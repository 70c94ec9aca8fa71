// moefy: turn a dense LLaMA-family model into a Mixture-of-Experts model.
#include <algorithm>
#include <cstdio>

#include "cli/cli_common.h"
#include "common/error.h"
#include "common/warn.h"
#include "io/mapped_file.h"
#include "model/ops/kernel_path.h"

int main(int argc, char** argv) {
    CLI::App app{"moefy: split a dense LLaMA-family model's FFNs into experts and write MoE checkpoints"};
    app.require_subcommand(1);
    app.set_version_flag("--version", fmt::format("moefy {}\nkernels: {} (activations {})", MOEFY_VERSION, moefy::ops::kernel_path_name(),
                                                   moefy::ops::activation_mode_name()));
    auto& reg = moefy::cli::command_registry();
    std::stable_sort(reg.begin(), reg.end(), [](auto& a, auto& b) { return a.order < b.order; });
    for (auto& c : reg) c.setup(app);
    moefy::install_mapped_file_fault_handler();
    moefy::set_warning_handler([](const std::string& m) { std::fprintf(stderr, "moefy: warning: %s\n", m.c_str()); });
    // Exit codes: 0 success (and --help / --version), 2 usage error (a flag CLI11
    // cannot parse, a missing or unknown option), 1 every other error (bad input
    // files, failed writes), always after one "moefy: ..." line on stderr.
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "moefy: usage error: %s (see moefy --help)\n", e.what());
        return 2;
    } catch (const moefy::Error& e) {
        std::fprintf(stderr, "moefy: error: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "moefy: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
