#pragma once
// Deterministic random numbers, identical on every platform and compiler
// (std:: distributions are implementation-defined, so we do not use them).
#include <cmath>
#include <cstdint>

namespace moefy {

inline uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// xoshiro256** seeded through splitmix64. `stream` separates independent
// streams from one user seed (e.g. one per layer).
class Rng {
public:
    explicit Rng(uint64_t seed, uint64_t stream = 0) {
        uint64_t s = seed ^ (stream * 0xd1b54a32d192ed03ull + 0x632be59bd9b4e019ull);
        for (auto& x : s_) x = splitmix64(s);
    }
    uint64_t next() {
        const uint64_t r = rotl(s_[1] * 5, 7) * 9;
        const uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0]; s_[3] ^= s_[1]; s_[1] ^= s_[2]; s_[0] ^= s_[3];
        s_[2] ^= t; s_[3] = rotl(s_[3], 45);
        return r;
    }
    // Uniform integer in [0, n), unbiased (Lemire's method with rejection).
    uint64_t below(uint64_t n) {
        __uint128_t m = __uint128_t(next()) * n;
        uint64_t lo = uint64_t(m);
        if (lo < n) {
            const uint64_t t = (0 - n) % n;
            while (lo < t) { m = __uint128_t(next()) * n; lo = uint64_t(m); }
        }
        return uint64_t(m >> 64);
    }
    double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
    double normal() {  // Box-Muller, one value per call
        double u1 = uniform(), u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
    template <typename It>
    void shuffle(It first, It last) {  // Fisher-Yates
        for (auto n = last - first; n > 1; --n) {
            auto j = below(uint64_t(n));
            std::swap(first[n - 1], first[j]);
        }
    }

private:
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t s_[4];
};

}  // namespace moefy
