// C++ exceptions that bindings.cpp translates into omicskern.errors classes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace omicskern {

// A byte a tokenizer cannot read. Becomes omicskern.errors.InvalidSequenceError with
// .index (sequence in the batch), .position (byte offset in it) and .byte set.
struct InvalidSequence : std::runtime_error {
    int64_t index;
    int64_t position;
    int byte;
    InvalidSequence(int64_t index_, int64_t position_, unsigned char byte_, const std::string& what_)
        : std::runtime_error(what_), index(index_), position(position_), byte(byte_) {}

    // "sequence 3, position 517: byte 0xE2 is not a valid nucleotide (allowed: ACGTN)"
    static InvalidSequence at(int64_t index, int64_t position, unsigned char byte, const std::string& allowed) {
        char buf[160];
        if (byte >= 0x20 && byte < 0x7F)
            std::snprintf(buf, sizeof(buf), "sequence %lld, position %lld: '%c' (byte 0x%02X) is not a valid character",
                          (long long)index, (long long)position, byte, byte);
        else
            std::snprintf(buf, sizeof(buf), "sequence %lld, position %lld: byte 0x%02X is not a valid character%s",
                          (long long)index, (long long)position, byte, byte >= 0x80 ? " (non-ASCII)" : "");
        std::string msg(buf);
        if (!allowed.empty()) msg += " (allowed: " + allowed + ")";
        return InvalidSequence(index, position, byte, msg);
    }
};

}  // namespace omicskern
