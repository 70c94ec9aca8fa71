#pragma once
// `--shared N` for the split commands that otherwise read no text (random, cluster):
// the options and the one call that measures the shared neurons on --data.
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "common/error.h"
#include "data/documents.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "split/shared_split.h"
#include "tokenizer/tokenizer.h"

namespace moefy::cli {

struct SharedCli {
    int shared = 0;
    std::string criterion = "rate", data, text_field;
    int ctx = 512;
    size_t tokens = 32768;

    void add(CLI::App* cmd) {
        cmd->add_option("--shared", shared, "Of the experts, this many always active: the neurons most active on --data")
            ->capture_default_str();
        cmd->add_option("--shared-criterion", criterion, "Shared neurons by activation rate or mass (mean |h|)")
            ->capture_default_str();
        cmd->add_option("--data", data, "Calibration text for --shared (.jsonl or .txt)");
        cmd->add_option("--text-field", text_field, "JSONL field holding the text");
        cmd->add_option("--ctx", ctx, "Tokens per window of --data")->capture_default_str();
        cmd->add_option("--tokens", tokens, "Tokens of --data at most")->capture_default_str();
    }

    std::optional<SharedChoice> choose(const Checkpoint& ck, const std::string& model_dir, int experts) const {
        const SharedCriterion c = parse_shared_criterion(criterion);
        check_shared_count(shared, experts);
        if (shared == 0) return std::nullopt;
        if (data.empty()) fail("--shared {} needs calibration text (--data FILE): shared experts are the neurons most active on it", shared);
        check_context(ck.config, ctx, model_dir);
        auto tok = Tokenizer::from_dir(model_dir);
        const auto windows = make_windows(read_documents(data, text_field), *tok, {ctx, tokens, true});
        return measure_shared(ck, windows, experts, shared, c, tokens);
    }
};

}  // namespace moefy::cli
