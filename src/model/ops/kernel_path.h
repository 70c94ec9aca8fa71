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
// Default: amx where the CPU and kernel allow it, else avx2 (avx512bf16 when
// activations are rounded to one BF16: it is faster than avx2 only then).
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
//   exact (default)  x = t0 + t1 + t2, three BF16 terms (all 24 bits of an f32):
//                    three products per weight, the f32 result (golden and
//                    identity tests hold at their f32 tolerances)
//   bf16             x rounded to one BF16 (llama.cpp's choice): a third of
//                    the products; NLL moves (see README for the measured deviation)
bool exact_activations();
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
