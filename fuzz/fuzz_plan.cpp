// Expert plans: parse and validate; an accepted plan must survive to_json/from_json unchanged.
#include <cstdlib>

#include "fuzz_util.h"
#include "io/json.h"
#include "split/expert_plan.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    FUZZ_EXPECT_ERRORS({
        const auto j = moefy::parse_json(fuzz::as_text(data, size), "plan.json");
        const moefy::ExpertPlan p = moefy::ExpertPlan::from_json(j, "plan.json");
        (void)p.is_partition();
        (void)p.equal_widths();
        const moefy::ExpertPlan q = moefy::ExpertPlan::from_json(p.to_json(), "round trip");
        if (q.layers.size() != p.layers.size() || q.layers[0].experts != p.layers[0].experts) std::abort();
    });
    return 0;
}
