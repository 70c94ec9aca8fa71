#pragma once
// `moefy build --budget RATIO`: the cheapest MoE within a quality budget.
//
// Searches split method × experts × shared experts × top-k × refit for the
// configuration with the smallest active FFN fraction whose perplexity on
// held-out *calibration* text (the last windows of --data, never used for
// fitting) is within RATIO × the dense model's on the same text, then converts
// the winner to --out and evaluates it on --eval-data.
//
// Reuse: one dense pass caches every layer's FFN inputs and activations on the
// fitting tokens (route/calibration.h DenseLayerActs); every plan's calibration
// statistics, shared-expert choice and refit are computed from that cache, not
// by running the model again (the graph split still reads the text itself). The
// router of a plan is fitted once and reused for every top-k (its scale is
// refitted per k, in closed form). Within one (method, experts, shared, refit)
// group, perplexity falls with top-k, so a binary search finds the group's
// smallest top-k within the budget in ⌈log2 k⌉ + 1 evaluations.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moefy {

struct BuildOptions;
struct BuildResult;

struct BudgetCandidate {
    std::string method;
    int experts = 0, shared = 0, top_k = 0;
    bool refit = false;
    double active = 0;  // active FFN fraction: (shared + top_k) / experts for equal widths
    // measured
    double ppl = 0, ratio = 0;  // held-out calibration perplexity and ratio to dense
    bool meets = false;         // ratio <= budget
    bool front = false;         // on the Pareto front of the evaluated candidates
    double seconds = 0;
};

struct BudgetSpace {
    std::vector<std::string> methods = {"random", "cluster", "graph"};
    std::vector<int> experts;           // empty: the build's --experts
    std::vector<int> shared = {0, 1, 2};
    std::vector<bool> refit = {true, false};
};

// Every candidate of a space (shared < experts - 1, 1 <= top_k <= experts - shared - 1),
// grouped, each group by ascending top-k. `shared_ok`: false drops shared > 0 (mixtral).
std::vector<BudgetCandidate> budget_candidates(const BudgetSpace& space, int default_experts, bool shared_ok);

struct BudgetSearch {
    double budget = 0;
    double dense_ppl = 0;
    size_t holdout_tokens = 0, fit_tokens = 0;
    std::vector<BudgetCandidate> evaluated;  // in evaluation order
    int winner = -1;                         // index into evaluated; -1: nothing met the budget
    int plans = 0;
    double seconds = 0;
};

// The search strategy alone: evaluates candidates (eval returns the perplexity
// ratio) by a binary search over top-k per group and returns the cheapest within
// the budget (ties: the lower ratio), with the Pareto front marked.
BudgetSearch search_budget(const std::vector<BudgetCandidate>& space, double budget,
                           const std::function<double(const BudgetCandidate&)>& eval);

// Marks the evaluated candidates no other one beats in both active fraction and ratio.
void mark_pareto_front(std::vector<BudgetCandidate>& c);

using BudgetProgress = std::function<void(const std::string& stage, double done, double total)>;

// The whole `build --budget`: search, then convert and evaluate the winner
// (BuildResult::budget holds the search). Throws when nothing meets the budget.
BuildResult run_budget_build(const BuildOptions& opt, double budget, const BudgetSpace& space, const BudgetProgress& progress = {});

nlohmann::json budget_json(const BudgetSearch& s);
// The Pareto front as a text table (one line per candidate on the front).
std::string budget_table(const BudgetSearch& s);

}  // namespace moefy
