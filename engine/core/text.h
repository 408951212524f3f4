// Text that ends up in JSON (manifests, logs, wire requests): UTF-8 checks,
// and a reversible escape for byte strings that are not UTF-8.
//
// nlohmann::json throws when it dumps a string that is not valid UTF-8, so
// every string from outside (file names, peer requests) is either checked
// here before it reaches a JSON document or escaped into valid UTF-8.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "io/status.h"

namespace dp420 {

// True when `s` is well-formed UTF-8 (RFC 3629): no overlong forms, no
// surrogates, nothing above U+10FFFF.
bool ValidUtf8(std::string_view s);

// A byte string (a Linux path: any bytes but NUL) as valid UTF-8: a
// backslash becomes "\\", each byte that is not part of a well-formed UTF-8
// sequence becomes "\xHH" (two lower-case hex digits); everything else is
// copied. Reversible with UnescapeBytes (docs/FORMAT.md, `source.path`).
std::string EscapeBytes(std::string_view raw);
// The inverse of EscapeBytes; false when `escaped` holds a backslash that
// starts neither "\\" nor "\xHH".
bool UnescapeBytes(std::string_view escaped, std::string* raw);

// The deepest nesting of arrays and objects in JSON text (brackets inside
// strings do not count). Meant as a bound checked before parsing: the
// parser's result is dumped and destroyed recursively.
size_t JsonNestingDepth(std::string_view json);

// kInvalidArgument "FIELD is not valid UTF-8" or "FIELD is N bytes (at most
// MAX)"; never quotes the offending value, which may not be printable.
Status CheckTextField(std::string_view field, std::string_view value, size_t max_bytes);

}  // namespace dp420
