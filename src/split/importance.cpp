// `moefy split gradient` on an importance file (split/importance.h).
#include "split/importance.h"

#include "common/error.h"

namespace moefy {

ExpertPlan gradient_split_from_importance(const ImportanceFile& f, ImportanceTarget target, GradientSplitOptions opt) {
    const int C = f.clusters, I = f.intermediate_size;
    if (opt.experts < 0) fail("--experts {} must be positive", opt.experts);
    const int E = opt.experts > 0 ? opt.experts : C;
    if (E < 2) fail("{}: {} expert(s); a split needs at least 2", f.path, E);
    if (C < E)
        fail("{}: {} data clusters for {} experts; the gradient split builds each expert from its own cluster "
             "(cluster the text into at least {} clusters)",
             f.path, C, E, E);
    if (opt.residual < 0) fail("--residual {} must not be negative", opt.residual);
    if (opt.residual >= E)
        fail("{} residual experts of {} experts leave no routed experts (--residual must be below --experts)", opt.residual, E);
    const int R = opt.residual;
    int es = opt.expert_size;
    if (es < 0) fail("--expert-size {} must be positive", es);
    if (!opt.share) {
        if (es == 0 && I % E != 0)
            fail("{} experts do not divide the intermediate size {}; give --expert-size with --share, or another expert count",
                 E, I);
        if (es > 0 && int64_t(es) * E != I)
            fail("--expert-size {} does not fit: without --share the {} experts partition the {} neurons, so the size "
                 "must be {}/{}{}",
                 es, E, I, I, E, I % E == 0 ? fmt::format(" = {}", I / E) : std::string(" (not an integer)"));
    } else {
        if (es == 0) {
            if (I % E != 0) fail("{} experts do not divide the intermediate size {}; give --expert-size", E, I);
            es = I / E;
        }
        if (R == 0 && es > I) fail("--expert-size {} exceeds the intermediate size {}", es, I);
        if (R > 0 && int64_t(R + 1) * es > I)
            fail("--expert-size {} does not fit: {} residual experts take {} neurons and each routed expert needs {} more "
                 "of the {} (at most {} per expert)",
                 es, R, int64_t(R) * es, es, I, I / (R + 1));
    }
    opt.hidden_size = f.hidden_size;
    opt.ffn_fingerprint = f.ffn_fingerprint;
    ExpertPlan p = gradient_split_plan(f.scores(target), opt);
    p.params["importance"] = {{"file", f.path},
                              {"target", importance_target_name(target)},
                              {"kind", importance_kind_name(f.settings.kind)},
                              {"kernel", importance_kernel_name(f.settings.kernel)},
                              {"level", importance_level_name(f.settings.level)},
                              {"tokens", f.tokens}};
    return p;
}

}  // namespace moefy
