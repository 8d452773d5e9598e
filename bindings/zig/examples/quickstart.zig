const std = @import("std");
const msb = @import("microsandbox");

pub fn main(init: std.process.Init) !void {
    const gpa = init.gpa;
    // The relay socket: the first argument, else $MSB_SOCKET.
    const args = try init.minimal.args.toSlice(init.arena.allocator());
    const socket_path = if (args.len > 1) args[1] else init.minimal.environ.getPosix("MSB_SOCKET") orelse
        return error.NoSocketPath;

    var stdout_buffer: [4096]u8 = undefined;
    var stdout_writer = std.Io.File.stdout().writer(init.io, &stdout_buffer);
    const out = &stdout_writer.interface;
    defer out.flush() catch {};

    // Failing calls leave the library's message here.
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    errdefer std.debug.print("failed: {s}\n", .{diag.message()});

    const client = try msb.Client.connect(socket_path, .{}, &diag);
    defer client.deinit();
    // What the sandbox speaks decides which calls it has (README: generations).
    const agent_version = if (client.agentVersion().len > 0) client.agentVersion() else "unknown";
    try out.print("protocol generation {d}, agent {s}\n", .{ client.generation(), agent_version });

    // Run to completion; the output is copied into `gpa` memory.
    const result = try client.run(gpa, &.{ "echo", "hello from the sandbox" }, .{}, &diag);
    defer result.deinit(gpa);
    try out.print("exec: {s}exit code: {d}\n", .{ result.stdout, result.exit_code });

    // Files.
    const timeout: msb.Timeout = .ms(10_000);
    try client.mkdir("/tmp", timeout, &diag);
    try client.writeFile("/tmp/hello.txt", "written from Zig\n", .{ .mode = 0o644 }, &diag);
    const data = try client.readFile(gpa, "/tmp/hello.txt", timeout, &diag);
    defer gpa.free(data);
    try out.print("read back: {s}", .{data});

    const listing = try client.list(gpa, "/tmp", timeout, &diag);
    defer listing.deinit(gpa);
    for (listing.entries) |entry| try out.print("  {s} ({t}, {d} bytes)\n", .{ entry.path, entry.kind, entry.size });

    // Newer sandboxes can do more: check the generation (or `supports`)
    // first, else such calls fail with error.Unsupported.
    if (client.generation() >= 2) {
        const file = try client.openFile("/tmp/hello.txt", .{ .read = true }, &diag);
        defer file.deinit();
        var first_word: [7]u8 = undefined;
        const len = try file.readAt(&first_word, 0, timeout, &diag);
        try out.print("read through a handle: {s}\n", .{first_word[0..len]});
    }
    if (client.supports("core.ping")) try client.ping(timeout, &diag);

    // A missing file is error.FileNotFound, with the guest's words and
    // errno in `diag`.
    if (client.readFile(gpa, "/tmp/missing", timeout, &diag)) |unexpected| {
        gpa.free(unexpected);
    } else |err| {
        try out.print("expected failure: {t} (errno {?d}): {s}\n", .{ err, diag.guestErrno(), diag.message() });
    }

    // A streaming process: pull events until it exits.
    const process = try client.spawn(&.{ "sh", "-c", "echo out; echo err >&2" }, .{}, &diag);
    defer process.deinit();
    while (try process.nextEvent(.infinite, &diag)) |event| {
        defer event.deinit();
        switch (event) {
            .started => |pid| try out.print("started pid {d}\n", .{pid}),
            .stdout => |bytes| try out.print("stdout: {s}", .{bytes.slice()}),
            .stderr => |bytes| try out.print("stderr: {s}", .{bytes.slice()}),
            .exited => |code| {
                try out.print("exited {d}\n", .{code});
                break;
            },
            .failed => |failure| {
                try out.print("could not start ({s}): {s}\n", .{ failure.kind(), failure.message() });
                break;
            },
            .stdin_error => |stdin_error| try out.print("stdin: {s}\n", .{stdin_error.message()}),
        }
    }
}
