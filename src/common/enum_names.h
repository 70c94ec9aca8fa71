#pragma once
// Enums that travel as words (command-line values, JSON fields): one table per
// enum gives both directions and the list of choices, so adding a value is one
// line next to the enum.
//
//   enum class Color { Red, Green };
//   inline constexpr EnumName<Color> color_names[] = {{Color::Red, "red"}, {Color::Green, "green"}};
//   parse_enum(color_names, "blue", "--color")  throws "--color 'blue': expected red or green"
#include <cstddef>
#include <string>
#include <string_view>

#include "common/error.h"

namespace moefy {

template <class E>
struct EnumName {
    E value;
    const char* name;
};

// "a, b or c" (sep ", ", last " or "); with sep = last = " | ": "a | b | c".
template <class E, size_t N>
std::string enum_choices(const EnumName<E> (&table)[N], std::string_view sep = ", ", std::string_view last = " or ") {
    std::string s;
    for (size_t i = 0; i < N; ++i) {
        if (i) s += i + 1 == N ? last : sep;
        s += table[i].name;
    }
    return s;
}

template <class E, size_t N>
const char* enum_name(const EnumName<E> (&table)[N], E v) {
    for (const auto& t : table)
        if (t.value == v) return t.name;
    return "?";
}

// The value named `s`; throws "<what> '<s>': expected <choices>" otherwise.
template <class E, size_t N>
E parse_enum(const EnumName<E> (&table)[N], std::string_view s, std::string_view what) {
    for (const auto& t : table)
        if (s == t.name) return t.value;
    fail("{} '{}': expected {}", what, s, enum_choices(table));
}

}  // namespace moefy
