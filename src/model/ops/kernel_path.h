#pragma once
// Which kernels the engine's products run on, chosen once per process from
// what this CPU supports (cpuid), so a build never relies on -march=native to
// pick (or to be able to run) a path:
//   amx         own tile kernels on BF16 weights with AMX-BF16 (tdpbf16ps),
//               f32 accumulation
//   avx512bf16  own micro-kernels on BF16 weights with vdpbf16ps (AVX512-BF16),
//               f32 accumulation
//   avx2        own micro-kernels on BF16 weights with AVX2/FMA, f32 activations
//   sgemm       each block of weights converted to f32, then OpenBLAS sgemm
// Default: amx where the CPU and kernel allow it, else avx512bf16 with BF16
// activations (the default mode), else avx2. With exact activations and no
// AMX, avx2: on Sapphire Rapids it measured 23.4 GFLOP/s against avx512bf16
// exact's 10.3; on Zen 5 the order is reversed (187 against 288), which this
// choice does not yet tell apart (MOEFY_KERNEL=avx512bf16 picks it by hand).
// MOEFY_KERNEL=amx|avx512bf16|avx2|sgemm forces a path (the tests run the golden
// engine tests under each); a path the CPU lacks is refused. F32 and F16
// weights always take the sgemm path for batched products.
#include <string>

namespace moefy::ops {

enum class KernelPath { Sgemm, Avx2, Avx512Bf16, Amx };

// The path in use: MOEFY_KERNEL when set, else the best this CPU supports.
KernelPath kernel_path();
const char* kernel_path_name(KernelPath p);  // "amx" | "avx512bf16" | "avx2" | "sgemm"
// The path in use, by name (what `moefy --version` reports).
const char* kernel_path_name();
bool cpu_supports(KernelPath p);
// Parses a MOEFY_KERNEL value; throws naming the value for anything else.
KernelPath parse_kernel_path(const std::string& s);

// How the amx and avx512bf16 paths feed f32 activations x to BF16 products
// (MOEFY_BF16_ACTIVATIONS):
//   bf16 (default)   x rounded to one BF16 (llama.cpp's choice, and what makes
//                    these paths faster than the f32 ones): every BF16 x BF16
//                    product is exact in f32 and accumulates in f32; NLL moves
//                    by about 1e-4 relative (README: measured deviation)
//   exact            x = t0 + t1 + t2, three BF16 terms (all 24 bits of an f32):
//                    three products per weight, the f32 result (the tests run
//                    in this mode, so golden and identity tests hold at f32
//                    tolerances; tests named *Bf16Activations* check the default)
// The avx2 and sgemm paths always take f32 activations.
bool exact_activations();
// True when products on BF16 weights see x rounded to BF16: bf16 mode on the
// amx or avx512bf16 path. Every product then rounds x, whatever the token
// count, so decoding and prefill compute the same thing.
bool rounds_activations_to_bf16();
// "bf16" | "exact" (three-term split) | "f32" (avx2, sgemm): what --version prints.
const char* activation_mode_name();
// Sets the mode for the rest of the process (bench, tests); returns the old one.
bool set_exact_activations(bool exact);

// While alive, products run on `p` (tests: every path in one process).
// Not thread safe: construct outside parallel regions.
class ScopedKernelPath {
public:
    explicit ScopedKernelPath(KernelPath p);
    ~ScopedKernelPath();
    ScopedKernelPath(const ScopedKernelPath&) = delete;
    ScopedKernelPath& operator=(const ScopedKernelPath&) = delete;

private:
    KernelPath prev_;
};

}  // namespace moefy::ops
