// The suite asserts f32-level results (goldens at 1e-4, exact identities,
// finite differences), so it runs the engine with exact activations: set in
// the environment before any test runs, so the CLI runs the tests start
// inherit it too. Tests named *Bf16Activations* switch to the default bf16 mode
// themselves and check it at the accuracy it promises.
#include <cstdlib>

namespace {
[[maybe_unused]] const bool kExactActivations = setenv("MOEFY_BF16_ACTIVATIONS", "exact", 1) == 0;
}  // namespace
