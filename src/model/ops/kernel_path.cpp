#include "model/ops/kernel_path.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace moefy::ops {

namespace {

KernelPath best_supported() {
    if (cpu_supports(KernelPath::Amx)) return KernelPath::Amx;
    if (!exact_activations() && cpu_supports(KernelPath::Avx512Bf16)) return KernelPath::Avx512Bf16;
    if (cpu_supports(KernelPath::Avx2)) return KernelPath::Avx2;
    return KernelPath::Sgemm;
}

// AMX: the CPU has AMX-TILE and AMX-BF16 (cpuid leaf 7, edx bits 24 and 22)
// and Linux lets this process use the tile data state (arch_prctl
// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA; asked once, for every thread).
bool amx_usable() {
    static const bool ok = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
        if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;
        constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
        return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
    }();
    return ok;
}

KernelPath from_env() {
    const char* s = std::getenv("MOEFY_KERNEL");
    if (s == nullptr || *s == '\0') return best_supported();
    const KernelPath p = parse_kernel_path(s);
    if (!cpu_supports(p)) fail("MOEFY_KERNEL={}: this CPU does not support that path", s);
    return p;
}

KernelPath& current() {
    static KernelPath p = from_env();
    return p;
}

}  // namespace

bool cpu_supports(KernelPath p) {
    __builtin_cpu_init();
    switch (p) {
        case KernelPath::Sgemm: return true;
        case KernelPath::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case KernelPath::Avx512Bf16:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512bf16");
        case KernelPath::Amx: return cpu_supports(KernelPath::Avx512Bf16) && amx_usable();
    }
    return false;
}

KernelPath parse_kernel_path(const std::string& s) {
    if (s == "amx") return KernelPath::Amx;
    if (s == "avx512bf16") return KernelPath::Avx512Bf16;
    if (s == "avx2") return KernelPath::Avx2;
    if (s == "sgemm") return KernelPath::Sgemm;
    fail("MOEFY_KERNEL '{}': expected amx, avx512bf16, avx2 or sgemm", s);
}

const char* kernel_path_name(KernelPath p) {
    switch (p) {
        case KernelPath::Amx: return "amx";
        case KernelPath::Avx512Bf16: return "avx512bf16";
        case KernelPath::Avx2: return "avx2";
        case KernelPath::Sgemm: return "sgemm";
    }
    return "?";
}

KernelPath kernel_path() { return current(); }
const char* kernel_path_name() { return kernel_path_name(kernel_path()); }

namespace {
bool& exact_mode() {
    static bool exact = [] {
        const char* s = std::getenv("MOEFY_BF16_ACTIVATIONS");
        if (s == nullptr || *s == '\0' || std::strcmp(s, "bf16") == 0) return false;
        if (std::strcmp(s, "exact") == 0) return true;
        fail("MOEFY_BF16_ACTIVATIONS '{}': expected exact or bf16", s);
    }();
    return exact;
}
}  // namespace

bool exact_activations() { return exact_mode(); }
bool rounds_activations_to_bf16() {
    const KernelPath p = kernel_path();
    return !exact_mode() && (p == KernelPath::Amx || p == KernelPath::Avx512Bf16);
}
const char* activation_mode_name() {
    const KernelPath p = kernel_path();
    if (p != KernelPath::Amx && p != KernelPath::Avx512Bf16) return "f32";
    return exact_mode() ? "exact" : "bf16";
}
bool set_exact_activations(bool exact) {
    const bool prev = exact_mode();
    exact_mode() = exact;
    return prev;
}

ScopedKernelPath::ScopedKernelPath(KernelPath p) : prev_(current()) {
    if (!cpu_supports(p)) fail("kernel path {}: this CPU does not support it", kernel_path_name(p));
    current() = p;
}
ScopedKernelPath::~ScopedKernelPath() { current() = prev_; }

}  // namespace moefy::ops
