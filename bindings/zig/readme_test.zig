//! Keeps README.md honest: its Zig example must be examples/quickstart.zig
//! verbatim, which `zig build test` compiles and runs against the relay.
const std = @import("std");

test "README.md shows examples/quickstart.zig verbatim" {
    const readme = @embedFile("README.md");
    const quickstart = @embedFile("examples/quickstart.zig");
    const block = "```zig\n" ++ quickstart ++ "```\n";
    if (std.mem.indexOf(u8, readme, block) == null) {
        std.debug.print("README.md no longer contains examples/quickstart.zig as a ```zig block: copy it over\n", .{});
        return error.TestReadmeOutOfDate;
    }
}
