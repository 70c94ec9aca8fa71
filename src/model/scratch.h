#pragma once
// Reusable scratch buffers of the engine: grown to the largest size asked for,
// never shrunk, so steady-state calls allocate nothing.
#include <algorithm>
#include <cstddef>
#include <vector>

namespace moefy {

// v's data, resized first when it holds fewer than n elements.
template <typename T>
T* grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

// grow, then the first n elements set to zero.
template <typename T>
T* grow_zeroed(std::vector<T>& v, size_t n) {
    T* p = grow(v, n);
    std::fill(p, p + n, T(0));
    return p;
}

}  // namespace moefy
