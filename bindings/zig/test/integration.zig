//! Integration tests against a development relay. Run them through
//! scripts/test-zig.sh, or under scripts/with-devrelay.sh, which sets
//! MSB_SOCKET; without it every test here fails.
const std = @import("std");
const testing = std.testing;
const msb = @import("microsandbox");

const timeout: msb.Timeout = .ms(10_000);

fn socketPath() ![:0]const u8 {
    return testing.environ.getPosix("MSB_SOCKET") orelse {
        std.debug.print("MSB_SOCKET is not set: run the tests under scripts/with-devrelay.sh\n", .{});
        return error.MsbSocketUnset;
    };
}

/// The release the development relay imitates: scripts/with-devrelay.sh
/// passes MSB_DEVRELAY_PROFILE to it, and the relay's default is 0.7.13.
const Profile = enum {
    @"0.3.14",
    @"0.6.14",
    @"0.7.13",

    fn current() !Profile {
        const name = testing.environ.getPosix("MSB_DEVRELAY_PROFILE") orelse return .@"0.7.13";
        return std.meta.stringToEnum(Profile, name) orelse {
            std.debug.print("unknown MSB_DEVRELAY_PROFILE {s}\n", .{name});
            return error.UnknownProfile;
        };
    }

    /// Whether the agent answers a spawn failure with `core.exec.failed`
    /// and a failed stdin write with `core.exec.stdin.error` (0.4.6+).
    fn reportsExecFailures(self: Profile) bool {
        return self != .@"0.3.14";
    }

    /// Client slots of the relay (a legacy relay has 16, later ones 128).
    fn maxClients(self: Profile) usize {
        return if (self == .@"0.3.14") 16 else 128;
    }
};

fn connect() !msb.Client {
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    return msb.Client.connect(try socketPath(), .{}, &diag) catch |err| {
        std.debug.print("connect failed: {t}: {s}\n", .{ err, diag.message() });
        return err;
    };
}

/// Pulls events until one that is not output arrives, collecting stdout.
fn collectUntilNonOutput(process: msb.Process, stdout: *std.ArrayList(u8)) !msb.Process.Event {
    while (true) {
        const event = (try process.nextEvent(timeout, null)) orelse return error.TestUnexpectedNothingYet;
        switch (event) {
            .stdout => |data| {
                defer data.deinit();
                try stdout.appendSlice(testing.allocator, data.slice());
            },
            .stderr => |data| {
                defer data.deinit();
                std.debug.print("unexpected stderr: {s}\n", .{data.slice()});
                return error.TestUnexpectedStderr;
            },
            .started, .exited, .failed, .stdin_error => return event,
        }
    }
}

/// Pulls output until `stdout` contains `needle` (a pty or pipe may split it).
fn readUntilContains(process: msb.Process, stdout: *std.ArrayList(u8), needle: []const u8) !void {
    while (std.mem.indexOf(u8, stdout.items, needle) == null) {
        const event = (try process.nextEvent(timeout, null)) orelse return error.TestUnexpectedNothingYet;
        defer event.deinit();
        switch (event) {
            .stdout => |data| try stdout.appendSlice(testing.allocator, data.slice()),
            else => {
                std.debug.print("wanted {q} in {q}, got event {t}\n", .{ needle, stdout.items, event });
                return error.TestUnexpectedEvent;
            },
        }
    }
}

/// A fresh guest directory per test so tests never see each other's files.
fn resetDir(client: msb.Client, dir: [:0]const u8) !void {
    client.removeDir(dir, timeout, null) catch |err| switch (err) {
        error.FileNotFound => {}, // not there yet
        else => return err,
    };
    try client.mkdir(dir, timeout, null);
}

test "connect reports ready timings and a client id range" {
    const client = try connect();
    defer client.deinit();
    const timings = client.readyTimings();
    try testing.expect(timings.ready_time_ns >= timings.init_time_ns or timings.ready_time_ns == 0);
    const payload = try client.readyPayload();
    defer payload.deinit();
    try testing.expect(payload.slice().len > 0);
    try testing.expect(client.counters().frames_received == 0 or client.counters().bytes_received > 0);
}

test "connect to a socket path with no relay is NotFound with a message" {
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(error.NotFound, msb.Client.connect("/nonexistent/msb-zig-test.sock", .{ .timeout_ms = 2000 }, &diag));
    try testing.expect(diag.message().len > 0);
}

test "connectSandbox with an unknown name is NotFound" {
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(
        error.NotFound,
        msb.Client.connectSandbox("msb-zig-test-no-such-sandbox-8c1f", .{}, &diag),
    );
    try testing.expectEqual(@as(i32, msb.c.MSB_ERR_NOT_FOUND), diag.code());
}

test "run captures stdout, stderr and the exit code" {
    const client = try connect();
    defer client.deinit();
    const result = try client.run(testing.allocator, &.{ "sh", "-c", "printf out; printf err >&2; exit 3" }, .{}, null);
    defer result.deinit(testing.allocator);
    try testing.expectEqual(@as(i32, 3), result.exit_code);
    try testing.expectEqualStrings("out", result.stdout);
    try testing.expectEqualStrings("err", result.stderr);
    try testing.expect(!result.truncated);
}

test "run passes environment and working directory, and truncates at the capture limit" {
    const client = try connect();
    defer client.deinit();
    const result = try client.run(testing.allocator, &.{ "sh", "-c", "printf '%s %s' \"$ZIG_TEST_VAR\" \"$(pwd)\"" }, .{
        .spawn = .{ .env = &.{.{ .name = "ZIG_TEST_VAR", .value = "hello" }}, .cwd = "/" },
        .capture_limit = 5,
    }, null);
    defer result.deinit(testing.allocator);
    try testing.expectEqualStrings("hello", result.stdout);
    try testing.expect(result.truncated);
}

test "run with an empty argv is InvalidArgument with the library's message" {
    const client = try connect();
    defer client.deinit();
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(error.InvalidArgument, client.run(testing.allocator, &.{}, .{}, &diag));
    try testing.expect(diag.message().len > 0);
}

test "run past its deadline is Timeout" {
    const client = try connect();
    defer client.deinit();
    try testing.expectError(error.Timeout, client.run(testing.allocator, &.{ "sleep", "5" }, .{ .timeout = .ms(300) }, null));
}

test "spawn: events in order, stdin round trip, and a zero-timeout pull finds nothing yet" {
    const client = try connect();
    defer client.deinit();
    const process = try client.spawn(&.{"cat"}, .{}, null);
    defer process.deinit();
    try testing.expect(process.id() != 0);

    var stdout: std.ArrayList(u8) = .empty;
    defer stdout.deinit(testing.allocator);
    const first = try collectUntilNonOutput(process, &stdout);
    try testing.expect(first == .started);
    try testing.expect(first.started > 0);

    // cat prints nothing until it gets input.
    try testing.expect((try process.nextEvent(.immediate, null)) == null);

    try process.writeStdin("ping\n", timeout, null);
    try readUntilContains(process, &stdout, "ping\n");
    try process.closeStdin(timeout, null);
    const last = try collectUntilNonOutput(process, &stdout);
    try testing.expectEqual(msb.Process.Event{ .exited = 0 }, last);
    try testing.expectEqualStrings("ping\n", stdout.items);
    try testing.expectError(error.EndOfStream, process.nextEvent(.immediate, null));
}

test "readiness fd is readable once an event is waiting" {
    const client = try connect();
    defer client.deinit();
    const process = try client.spawn(&.{ "echo", "ready" }, .{}, null);
    defer process.deinit();
    var fds = [_]std.posix.pollfd{.{ .fd = try process.readinessFd(null), .events = std.posix.POLL.IN, .revents = 0 }};
    try testing.expectEqual(@as(usize, 1), try std.posix.poll(&fds, 10_000));
    const event = (try process.nextEvent(.immediate, null)) orelse return error.TestExpectedEvent;
    defer event.deinit();
    try testing.expect(event == .started);
}

test "signal ends a process, which exits with -1" {
    const client = try connect();
    defer client.deinit();
    const process = try client.spawn(&.{ "sleep", "30" }, .{}, null);
    defer process.deinit();
    var stdout: std.ArrayList(u8) = .empty;
    defer stdout.deinit(testing.allocator);
    try testing.expect((try collectUntilNonOutput(process, &stdout)) == .started);
    try process.signal(15, timeout, null);
    try testing.expectEqual(msb.Process.Event{ .exited = -1 }, try collectUntilNonOutput(process, &stdout));
}

test "resize changes the size a tty process sees" {
    const client = try connect();
    defer client.deinit();
    // The process waits for a line, then prints the terminal size; the resize
    // is sent before the line, so it lands first.
    const process = try client.spawn(&.{ "sh", "-c", "read line; stty size" }, .{ .tty = .{ .rows = 24, .cols = 80 } }, null);
    defer process.deinit();
    var stdout: std.ArrayList(u8) = .empty;
    defer stdout.deinit(testing.allocator);
    try testing.expect((try collectUntilNonOutput(process, &stdout)) == .started);
    try process.resize(.{ .rows = 40, .cols = 100 }, timeout, null);
    try process.writeStdin("go\n", timeout, null);
    try readUntilContains(process, &stdout, "40 100");
}

test "fs: write, read back, stat and list" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/write-read";
    try resetDir(client, dir);
    const content = "written from zig\n";
    try client.writeFile(dir ++ "/hello.txt", content, .{ .mode = 0o640 }, null);

    const data = try client.readFile(testing.allocator, dir ++ "/hello.txt", timeout, null);
    defer testing.allocator.free(data);
    try testing.expectEqualStrings(content, data);

    const entry = try client.stat(testing.allocator, dir ++ "/hello.txt", timeout, null);
    defer entry.deinit(testing.allocator);
    try testing.expectEqual(msb.EntryKind.file, entry.kind);
    try testing.expectEqual(@as(u64, content.len), entry.size);
    try testing.expectEqual(@as(u32, 0o640), entry.mode & 0o777);
    try testing.expectEqualStrings("hello.txt", entry.name());

    try client.mkdir(dir ++ "/sub/deeper", timeout, null);
    const listing = try client.list(testing.allocator, dir, timeout, null);
    defer listing.deinit(testing.allocator);
    try testing.expectEqual(@as(usize, 2), listing.entries.len);
    try testing.expectEqual(msb.EntryKind.file, (listing.find("hello.txt") orelse return error.TestMissingEntry).kind);
    try testing.expectEqual(msb.EntryKind.dir, (listing.find("sub") orelse return error.TestMissingEntry).kind);
}

test "fs: empty and binary files survive a round trip without copies" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/binary";
    try resetDir(client, dir);
    try client.writeFile(dir ++ "/empty", "", .{}, null);
    const empty = try client.readFileBytes(dir ++ "/empty", timeout, null);
    defer empty.deinit();
    try testing.expectEqual(@as(usize, 0), empty.slice().len);

    var binary: [4096]u8 = undefined;
    for (&binary, 0..) |*byte, i| byte.* = @truncate(i *% 7);
    try client.writeFile(dir ++ "/binary", &binary, .{}, null);
    const back = try client.readFileBytes(dir ++ "/binary", timeout, null);
    defer back.deinit();
    try testing.expectEqualSlices(u8, &binary, back.slice());
}

test "fs: copy, rename, remove and removeDir" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/move";
    try resetDir(client, dir);
    try client.writeFile(dir ++ "/a", "A", .{}, null);
    try client.copy(dir ++ "/a", dir ++ "/b", timeout, null);
    try client.rename(dir ++ "/a", dir ++ "/c", timeout, null);

    const b = try client.readFile(testing.allocator, dir ++ "/b", timeout, null);
    defer testing.allocator.free(b);
    try testing.expectEqualStrings("A", b);
    try testing.expectError(error.FileNotFound, client.stat(testing.allocator, dir ++ "/a", timeout, null));

    try client.remove(dir ++ "/b", timeout, null);
    try testing.expectError(error.FileNotFound, client.stat(testing.allocator, dir ++ "/b", timeout, null));

    try client.removeDir(dir, timeout, null);
    try testing.expectError(error.FileNotFound, client.list(testing.allocator, dir, timeout, null));
}

test "reading a missing file is FileNotFound with the guest's message and errno" {
    const client = try connect();
    defer client.deinit();
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(error.FileNotFound, client.readFile(testing.allocator, "/zig-tests/no/such/file", timeout, &diag));
    try testing.expectEqual(@as(i32, msb.c.MSB_ERR_NOT_FOUND), diag.code());
    try testing.expectEqual(@as(?i32, 2), diag.guestErrno()); // ENOENT
    if (std.mem.indexOf(u8, diag.message(), "No such file or directory") == null) {
        std.debug.print("message without the guest's words: {s}\n", .{diag.message()});
        return error.TestMessageLacksGuestText;
    }
}

test "a later failure replaces the earlier one in the same Diagnostics" {
    const client = try connect();
    defer client.deinit();
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(error.FileNotFound, client.readFile(testing.allocator, "/zig-tests/first-missing", timeout, &diag));
    const first_message = try testing.allocator.dupe(u8, diag.message());
    defer testing.allocator.free(first_message);
    try testing.expectError(error.InvalidArgument, client.run(testing.allocator, &.{}, .{}, &diag));
    try testing.expectEqual(@as(i32, msb.c.MSB_ERR_INVALID_ARGUMENT), diag.code());
    try testing.expectEqual(@as(?i32, null), diag.guestErrno());
    try testing.expect(!std.mem.eql(u8, first_message, diag.message()));
}

test "a connect failure carries no guest errno" {
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(error.NotFound, msb.Client.connect("/nonexistent/msb-zig-test.sock", .{ .timeout_ms = 2000 }, &diag));
    try testing.expectEqual(@as(?i32, null), diag.guestErrno());
}

test "calls after close are Closed" {
    const client = try connect();
    defer client.deinit();
    client.close();
    client.close(); // idempotent
    try testing.expectError(error.Closed, client.readFile(testing.allocator, "/anything", timeout, null));
    try testing.expectError(error.Closed, client.spawn(&.{"true"}, .{}, null));
}

test "generation, legacy flag, agent version and id range are those of the relay's release" {
    const client = try connect();
    defer client.deinit();
    const range = client.idRange();
    try testing.expect(range.start > 0);
    try testing.expectEqual(client.idOffset() + 1, range.start);
    switch (try Profile.current()) {
        .@"0.3.14" => {
            try testing.expect(client.isLegacy());
            try testing.expectEqual(@as(u32, 1), client.generation());
            try testing.expectEqual(@as(u32, 1), client.peerGeneration());
            try testing.expectEqualStrings("", client.agentVersion());
            // 16 clients share the id space: ids offset+1 .. offset+268435454.
            try testing.expectEqual(@as(u32, 268435454), range.end_exclusive - range.start);
        },
        .@"0.6.14" => {
            try testing.expect(!client.isLegacy());
            try testing.expectEqual(@as(u32, 7), client.generation());
            try testing.expectEqual(@as(u32, 7), client.peerGeneration());
            try testing.expectEqualStrings("0.6.14", client.agentVersion());
            try testing.expectEqual(@as(u32, 33554430), range.end_exclusive - range.start);
        },
        .@"0.7.13" => {
            try testing.expect(!client.isLegacy());
            try testing.expectEqual(@as(u32, 10), client.generation());
            try testing.expectEqual(@as(u32, 10), client.peerGeneration());
            try testing.expectEqualStrings("0.7.13", client.agentVersion());
            try testing.expectEqual(@as(u32, 33554430), range.end_exclusive - range.start);
        },
    }
}

test "supports follows the negotiated generation" {
    const client = try connect();
    defer client.deinit();
    const generation = client.generation();
    try testing.expect(client.supports("core.exec.request"));
    // Legacy relays get the 0.3.14 file shapes, so files work everywhere.
    try testing.expect(client.supports("core.fs.request"));
    try testing.expectEqual(generation >= 4, client.supports("core.tcp.connect"));
    try testing.expectEqual(generation >= 6, client.supports("core.ping"));
    try testing.expect(!client.supports("core.no.such.type"));
}

test "a command the guest cannot start: failed event with kind, errno and stage, or exit -1 from old agents" {
    const client = try connect();
    defer client.deinit();
    const process = try client.spawn(&.{"/nonexistent/zig-no-such-command"}, .{}, null);
    defer process.deinit();
    const event = (try process.nextEvent(timeout, null)) orelse return error.TestUnexpectedNothingYet;
    defer event.deinit();
    if ((try Profile.current()).reportsExecFailures()) {
        const failure = switch (event) {
            .failed => |failure| failure,
            else => {
                std.debug.print("expected a failed event, got {t}\n", .{event});
                return error.TestUnexpectedEvent;
            },
        };
        try testing.expectEqualStrings("not_found", failure.kind());
        try testing.expectEqual(@as(?i32, 2), failure.errno()); // ENOENT
        try testing.expect(std.mem.indexOf(u8, failure.message(), "zig-no-such-command") != null);
        try testing.expect(failure.stage() != null);
    } else {
        try testing.expectEqual(msb.Process.Event{ .exited = -1 }, event);
    }
    // Either way that was the last event.
    try testing.expectError(error.EndOfStream, process.nextEvent(.immediate, null));
}

test "run of a command the guest cannot start is ExecFailed with the guest's words, or exit -1 from old agents" {
    const client = try connect();
    defer client.deinit();
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    const argv: []const [:0]const u8 = &.{"/nonexistent/zig-no-such-command"};
    if ((try Profile.current()).reportsExecFailures()) {
        try testing.expectError(error.ExecFailed, client.run(testing.allocator, argv, .{}, &diag));
        try testing.expectEqual(@as(i32, msb.c.MSB_ERR_EXEC_FAILED), diag.code());
        try testing.expect(std.mem.indexOf(u8, diag.message(), "zig-no-such-command") != null);
        try testing.expect(std.mem.indexOf(u8, diag.message(), "not_found") != null);
        try testing.expectEqual(@as(?i32, 2), diag.guestErrno()); // ENOENT
    } else {
        const result = try client.run(testing.allocator, argv, .{}, &diag);
        defer result.deinit(testing.allocator);
        try testing.expectEqual(@as(i32, -1), result.exit_code);
    }
}

test "writing to a process that closed its stdin: a stdin_error event (EPIPE), then the process runs on" {
    const client = try connect();
    defer client.deinit();
    const process = try client.spawn(&.{ "sh", "-c", "exec 0<&-; echo closed; sleep 1; echo still running" }, .{}, null);
    defer process.deinit();
    var stdout: std.ArrayList(u8) = .empty;
    defer stdout.deinit(testing.allocator);
    try testing.expect((try collectUntilNonOutput(process, &stdout)) == .started);
    try readUntilContains(process, &stdout, "closed\n");
    try process.writeStdin("nobody reads this\n", timeout, null);

    var stdin_errors: usize = 0;
    const exit_code = while (true) {
        const event = (try process.nextEvent(timeout, null)) orelse return error.TestUnexpectedNothingYet;
        defer event.deinit();
        switch (event) {
            .stdout => |data| try stdout.appendSlice(testing.allocator, data.slice()),
            .stdin_error => |stdin_error| {
                stdin_errors += 1;
                try testing.expectEqual(@as(?i32, 32), stdin_error.errno()); // EPIPE
                try testing.expect(stdin_error.message().len > 0);
            },
            .exited => |code| break code,
            else => {
                std.debug.print("unexpected event {t}\n", .{event});
                return error.TestUnexpectedEvent;
            },
        }
    };
    try testing.expectEqual(@as(i32, 0), exit_code);
    try testing.expectEqualStrings("closed\nstill running\n", stdout.items);
    const expected_errors: usize = if ((try Profile.current()).reportsExecFailures()) 1 else 0;
    try testing.expectEqual(expected_errors, stdin_errors);
}

test "a full relay is RelayBusy until a slot frees up" {
    const max_clients = (try Profile.current()).maxClients();
    var clients: std.ArrayList(msb.Client) = .empty;
    defer {
        for (clients.items) |client| client.deinit();
        clients.deinit(testing.allocator);
        // The relay frees the slots as it sees the connections end; let it
        // catch up, so the next test does not find it still full.
        waitForFreeSlot() catch {};
    }
    // Other tests' connections are closed, but the relay may not have seen
    // their ends yet: keep connecting until it refuses.
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    while (clients.items.len <= max_clients) {
        const client = msb.Client.connect(try socketPath(), .{}, &diag) catch |err| {
            try testing.expectEqual(error.RelayBusy, err);
            break;
        };
        try clients.append(testing.allocator, client);
    } else return error.TestRelayNeverFull;
    try testing.expectEqual(@as(i32, msb.c.MSB_ERR_RELAY_BUSY), diag.code());
    try testing.expect(diag.message().len > 0);
    try testing.expect(clients.items.len > 0 and clients.items.len <= max_clients);

    // Retrying later works once a slot is free.
    clients.pop().?.deinit();
    try clients.append(testing.allocator, try connectRetryingWhileBusy());
}

/// Connects, retrying for up to 2 s while the relay is full.
fn connectRetryingWhileBusy() !msb.Client {
    var attempts: usize = 0;
    while (true) : (attempts += 1) {
        return msb.Client.connect(try socketPath(), .{}, null) catch |err| {
            if (err != error.RelayBusy or attempts == 200) return err;
            try std.Io.sleep(testing.io, .fromMilliseconds(10), .awake);
            continue;
        };
    }
}

fn waitForFreeSlot() !void {
    const client = try connectRetryingWhileBusy();
    client.deinit();
}

/// Checks an `error.Unsupported` message names the operation's message type.
fn expectUnsupportedMessage(diag: *const msb.Diagnostics, message_type: []const u8) !void {
    try testing.expectEqual(@as(i32, msb.c.MSB_ERR_UNSUPPORTED), diag.code());
    if (std.mem.indexOf(u8, diag.message(), message_type) == null) {
        std.debug.print("Unsupported message without {s}: {s}\n", .{ message_type, diag.message() });
        return error.TestMessageLacksType;
    }
}

test "ping and touch answer on generation 6 and later, and are Unsupported before" {
    const client = try connect();
    defer client.deinit();
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    if (client.generation() >= 6) {
        try client.ping(timeout, &diag);
        const first = try client.touch(timeout, &diag);
        const second = try client.touch(timeout, &diag);
        try testing.expect(second > first);
    } else {
        try testing.expectError(error.Unsupported, client.ping(timeout, &diag));
        try expectUnsupportedMessage(&diag, "core.ping");
        try testing.expectError(error.Unsupported, client.touch(timeout, &diag));
        try expectUnsupportedMessage(&diag, "core.touch");
    }
}

/// A TCP server in the guest: accepts one connection, reads it to its end,
/// answers with the bytes upper-cased (unless the client is gone) and
/// closes. Its port is the first line of its stdout.
const upper_server_script =
    \\import socket
    \\s = socket.socket()
    \\s.bind(("127.0.0.1", 0))
    \\s.listen(1)
    \\print(s.getsockname()[1], flush=True)
    \\c, _ = s.accept()
    \\data = b""
    \\try:
    \\    while True:
    \\        d = c.recv(65536)
    \\        if not d:
    \\            break
    \\        data += d
    \\    c.sendall(data.upper())
    \\except OSError:
    \\    pass  # the client aborted: nobody to answer
    \\c.close()
;

const UpperServer = struct {
    process: msb.Process,
    port: u16,

    fn start(client: msb.Client) !UpperServer {
        const process = try client.spawn(&.{ "python3", "-c", upper_server_script }, .{}, null);
        errdefer process.deinit();
        var stdout: std.ArrayList(u8) = .empty;
        defer stdout.deinit(testing.allocator);
        try testing.expect((try collectUntilNonOutput(process, &stdout)) == .started);
        try readUntilContains(process, &stdout, "\n");
        const line = std.mem.trimEnd(u8, stdout.items, "\n");
        return .{ .process = process, .port = try std.fmt.parseInt(u16, line, 10) };
    }

    /// Waits for the server to exit 0.
    fn finish(self: UpperServer) !void {
        defer self.process.deinit();
        var stdout: std.ArrayList(u8) = .empty;
        defer stdout.deinit(testing.allocator);
        try testing.expectEqual(msb.Process.Event{ .exited = 0 }, try collectUntilNonOutput(self.process, &stdout));
    }
};

test "tcp: a guest connection carries bytes both ways, half-closes and ends (generation 4+), Unsupported before" {
    const client = try connect();
    defer client.deinit();
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    if (client.generation() < 4) {
        try testing.expectError(error.Unsupported, client.tcpConnect("127.0.0.1", 9, timeout, &diag));
        try expectUnsupportedMessage(&diag, "core.tcp.connect");
        return;
    }
    const server = try UpperServer.start(client);
    const stream = try client.tcpConnect("127.0.0.1", server.port, timeout, &diag);
    defer stream.deinit();
    try testing.expect(stream.id() != 0);

    // More than one 64 KiB chunk each way.
    var payload: [200 * 1024]u8 = undefined;
    for (&payload, 0..) |*byte, i| byte.* = "abcdefghijklmnopqrstuvwxyz"[i % 26];
    try stream.write(payload[0 .. payload.len / 2], timeout, &diag);
    try stream.write(payload[payload.len / 2 ..], timeout, &diag);
    // Nothing comes back before the server sees end-of-file.
    try testing.expectEqual(@as(?msb.Bytes, null), try stream.pull(.immediate, &diag));
    try stream.shutdownWrite(timeout, &diag);
    try stream.shutdownWrite(timeout, &diag); // idempotent
    try testing.expectError(error.WrongState, stream.write("late", timeout, &diag));

    var fds = [_]std.posix.pollfd{.{ .fd = try stream.readinessFd(&diag), .events = std.posix.POLL.IN, .revents = 0 }};
    try testing.expectEqual(@as(usize, 1), try std.posix.poll(&fds, 10_000));
    const echoed = try stream.readToEnd(testing.allocator, timeout, &diag);
    defer testing.allocator.free(echoed);
    try testing.expectEqual(payload.len, echoed.len);
    for (echoed, payload) |got, sent| try testing.expectEqual(std.ascii.toUpper(sent), got);
    try testing.expectError(error.EndOfStream, stream.pull(.immediate, &diag));
    try server.finish();
}

test "tcp: a refused connection is Guest with the guest's errno (generation 4+)" {
    const client = try connect();
    defer client.deinit();
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    if (client.generation() < 4) {
        try testing.expectError(error.Unsupported, client.tcpConnect("127.0.0.1", 1, timeout, &diag));
        try expectUnsupportedMessage(&diag, "core.tcp.connect");
        return;
    }
    // Nothing listens on port 1 (tcpmux) here.
    try testing.expectError(error.Guest, client.tcpConnect("127.0.0.1", 1, timeout, &diag));
    try testing.expectEqual(@as(?i32, 111), diag.guestErrno()); // ECONNREFUSED
}

test "tcp: deinit of an open stream aborts it and the guest's peer sees the connection end" {
    const client = try connect();
    defer client.deinit();
    if (client.generation() < 4) {
        try testing.expectError(error.Unsupported, client.tcpConnect("127.0.0.1", 9, timeout, null));
        return;
    }
    const server = try UpperServer.start(client);
    const stream = try client.tcpConnect("127.0.0.1", server.port, timeout, null);
    try stream.write("dropped", timeout, null);
    stream.deinit();
    // The server reads to its end and exits 0 whether or not the abort let
    // the bytes through; what matters is that it is not left waiting.
    try server.finish();
}

extern "c" fn setenv(name: [*:0]const u8, value: [*:0]const u8, overwrite: c_int) c_int;
extern "c" fn unsetenv(name: [*:0]const u8) c_int;

test "sandboxSocketPath follows MSB_HOME, and connectSandbox connects through the layout it finds" {
    // Short enough for the newest layout, whose agent.sock and control.sock
    // must both fit in a socket address.
    var random: [6]u8 = undefined;
    testing.io.random(&random);
    var home_buffer: [64]u8 = undefined;
    const home = try std.fmt.bufPrintSentinel(&home_buffer, "/tmp/msb-zig-{x}", .{random}, 0);
    try std.Io.Dir.cwd().createDirPath(testing.io, home);
    defer std.Io.Dir.cwd().deleteTree(testing.io, home) catch {};
    var home_dir = try std.Io.Dir.cwd().openDir(testing.io, home, .{});
    defer home_dir.close(testing.io);
    try testing.expectEqual(@as(c_int, 0), setenv("MSB_HOME", home, 1));
    defer _ = unsetenv("MSB_HOME");

    // No sandbox there yet: the newest layout's path, named by a hash.
    const fresh = try msb.sandboxSocketPath(testing.allocator, "worker", null);
    defer testing.allocator.free(fresh);
    const expected_fresh = try std.fmt.allocPrint(testing.allocator, "{s}/run/sandboxes/87eba76e7f3164534045ba92/agent.sock", .{home});
    defer testing.allocator.free(expected_fresh);
    try testing.expectEqualStrings(expected_fresh, fresh);

    // A sandbox of the oldest layout, whose socket is our relay's.
    try home_dir.createDirPath(testing.io, "sandboxes/worker/runtime");
    try home_dir.symLink(testing.io, try socketPath(), "sandboxes/worker/runtime/agent.sock", .{});
    const found = try msb.sandboxSocketPath(testing.allocator, "worker", null);
    defer testing.allocator.free(found);
    const expected_found = try std.fmt.allocPrint(testing.allocator, "{s}/sandboxes/worker/runtime/agent.sock", .{home});
    defer testing.allocator.free(expected_found);
    try testing.expectEqualStrings(expected_found, found);
    const client = try msb.Client.connectSandbox("worker", .{}, null);
    defer client.deinit();
    try testing.expect(client.generation() >= 1);

    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(error.InvalidArgument, msb.sandboxSocketPath(testing.allocator, "../escape", &diag));
    try testing.expect(diag.message().len > 0);
}

/// Every generation-2 file operation, each expected to fail with
/// `error.Unsupported` on an older sandbox, before anything is sent.
fn expectGen2FilesUnsupported(client: msb.Client) !void {
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    const a = testing.allocator;
    try testing.expectError(error.Unsupported, client.statFollow(a, "/zig-tests", timeout, &diag));
    try testing.expect(diag.message().len > 0);
    try testing.expectError(error.Unsupported, client.realPath(a, "/zig-tests", timeout, &diag));
    try testing.expectError(error.Unsupported, client.readLink(a, "/zig-tests", timeout, &diag));
    try testing.expectError(error.Unsupported, client.symLink("a", "/zig-tests/link", timeout, &diag));
    try testing.expectError(error.Unsupported, client.setStat("/zig-tests", .{ .mode = 0o755 }, .{}, &diag));
    try testing.expectError(error.Unsupported, client.removeEmptyDir("/zig-tests/none", timeout, &diag));
    try testing.expectError(error.Unsupported, client.openFile("/zig-tests/f", .{ .read = true }, &diag));
    try testing.expectEqual(@as(i32, msb.c.MSB_ERR_UNSUPPORTED), diag.code());
}

test "fs gen 2: symlinks are stat'ed with and without following, read and resolved (Unsupported on legacy)" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/links";
    try resetDir(client, dir);
    if (client.generation() < 2) return expectGen2FilesUnsupported(client);
    const a = testing.allocator;
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();

    try client.writeFile(dir ++ "/target.txt", "twelve bytes", .{}, &diag);
    try client.symLink("target.txt", dir ++ "/link", timeout, &diag);

    const link = try client.stat(a, dir ++ "/link", timeout, &diag);
    defer link.deinit(a);
    try testing.expectEqual(msb.EntryKind.symlink, link.kind);
    const followed = try client.statFollow(a, dir ++ "/link", timeout, &diag);
    defer followed.deinit(a);
    try testing.expectEqual(msb.EntryKind.file, followed.kind);
    try testing.expectEqual(@as(u64, 12), followed.size);

    const stored = try client.readLink(a, dir ++ "/link", timeout, &diag);
    defer a.free(stored);
    try testing.expectEqualStrings("target.txt", stored);
    // Through a linked directory and the link at its end.
    try client.symLink(".", dir ++ "/here", timeout, &diag);
    const resolved = try client.realPath(a, dir ++ "/here/link", timeout, &diag);
    defer a.free(resolved);
    try testing.expectEqualStrings(dir ++ "/target.txt", resolved);

    try testing.expectError(error.PathAlreadyExists, client.symLink("elsewhere", dir ++ "/link", timeout, &diag));
    try testing.expectEqual(@as(?i32, 17), diag.guestErrno()); // EEXIST
    try testing.expectError(error.Guest, client.readLink(a, dir ++ "/target.txt", timeout, &diag));
    try testing.expectEqual(@as(?i32, 22), diag.guestErrno()); // EINVAL

    try client.symLink("missing.txt", dir ++ "/dangling", timeout, &diag);
    try testing.expectError(error.FileNotFound, client.statFollow(a, dir ++ "/dangling", timeout, &diag));
    const dangling = try client.stat(a, dir ++ "/dangling", timeout, &diag);
    defer dangling.deinit(a);
    try testing.expectEqual(msb.EntryKind.symlink, dangling.kind);
}

test "fs gen 2: setStat changes mode, size and times; entries carry owner and atime (Unsupported on legacy)" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/set-stat";
    try resetDir(client, dir);
    const a = testing.allocator;
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try client.writeFile(dir ++ "/f", "0123456789", .{ .mode = 0o644 }, &diag);
    const before = try client.stat(a, dir ++ "/f", timeout, &diag);
    defer before.deinit(a);
    if (client.generation() < 2) {
        // The 0.3.14 shapes carry neither owner nor access time.
        try testing.expectEqual(@as(u32, 0), before.uid);
        try testing.expectEqual(@as(?i64, null), before.atime);
        return expectGen2FilesUnsupported(client);
    }
    // The development relay's guest is this host, as this user.
    try testing.expectEqual(std.os.linux.getuid(), before.uid);
    try testing.expectEqual(std.os.linux.getgid(), before.gid);
    try testing.expect(before.atime != null);

    try client.setStat(dir ++ "/f", .{
        .mode = 0o600,
        .size = 4,
        .atime = 1_000_000_000,
        .mtime = 1_500_000_000,
    }, .{}, &diag);
    const after = try client.stat(a, dir ++ "/f", timeout, &diag);
    defer after.deinit(a);
    try testing.expectEqual(@as(u32, 0o600), after.mode & 0o7777);
    try testing.expectEqual(@as(u64, 4), after.size);
    try testing.expectEqual(@as(?i64, 1_000_000_000), after.atime);
    try testing.expectEqual(@as(?i64, 1_500_000_000), after.mtime);

    // One time alone leaves the other as it was.
    try client.setStat(dir ++ "/f", .{ .mtime = 1_600_000_000 }, .{}, &diag);
    const one_time = try client.stat(a, dir ++ "/f", timeout, &diag);
    defer one_time.deinit(a);
    try testing.expectEqual(@as(?i64, 1_000_000_000), one_time.atime);
    try testing.expectEqual(@as(?i64, 1_600_000_000), one_time.mtime);

    // Only root may give a file away; anyone may "change" it to their own ids.
    const new_uid: u32 = if (before.uid == 0) 4321 else before.uid;
    try client.setStat(dir ++ "/f", .{ .uid = new_uid }, .{}, &diag);
    try client.setStat(dir ++ "/f", .{ .gid = before.gid }, .{}, &diag);
    const owned = try client.stat(a, dir ++ "/f", timeout, &diag);
    defer owned.deinit(a);
    try testing.expectEqual(new_uid, owned.uid);
    try testing.expectEqual(before.gid, owned.gid);
    const data = try client.readFile(a, dir ++ "/f", timeout, &diag);
    defer a.free(data);
    try testing.expectEqualStrings("0123", data);

    // Through a link: following changes the target, not following the link.
    try client.symLink("f", dir ++ "/link", timeout, &diag);
    try client.setStat(dir ++ "/link", .{ .mode = 0o640 }, .{ .follow_symlink = true }, &diag);
    const target = try client.stat(a, dir ++ "/f", timeout, &diag);
    defer target.deinit(a);
    try testing.expectEqual(@as(u32, 0o640), target.mode & 0o7777);

    try testing.expectError(error.FileNotFound, client.setStat(dir ++ "/missing", .{ .mode = 0o600 }, .{}, &diag));
    try testing.expectError(error.InvalidArgument, client.setStat(dir ++ "/f", .{ .mode = 0o10000 }, .{}, &diag));
}

test "fs gen 2: removeEmptyDir refuses a directory with entries (Unsupported on legacy)" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/remove-empty";
    try resetDir(client, dir);
    if (client.generation() < 2) return expectGen2FilesUnsupported(client);
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try client.mkdir(dir ++ "/full", timeout, &diag);
    try client.writeFile(dir ++ "/full/f", "x", .{}, &diag);
    try client.mkdir(dir ++ "/empty", timeout, &diag);

    try testing.expectError(error.Guest, client.removeEmptyDir(dir ++ "/full", timeout, &diag));
    try testing.expectEqual(@as(?i32, 39), diag.guestErrno()); // ENOTEMPTY
    try client.removeEmptyDir(dir ++ "/empty", timeout, &diag);
    try testing.expectError(error.FileNotFound, client.removeEmptyDir(dir ++ "/empty", timeout, &diag));

    const listing = try client.list(testing.allocator, dir, timeout, &diag);
    defer listing.deinit(testing.allocator);
    try testing.expectEqual(@as(usize, 1), listing.entries.len);
    try testing.expect(listing.find("full") != null);
}

test "fs gen 2: an open File reads and writes at offsets, stats, and closes once (Unsupported on legacy)" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/handles";
    try resetDir(client, dir);
    if (client.generation() < 2) return expectGen2FilesUnsupported(client);
    const a = testing.allocator;
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();

    const open_before = client.openFiles();
    const file = try client.openFile(dir ++ "/data", .{ .read = true, .write = true, .create_new = true, .mode = 0o600 }, &diag);
    defer file.deinit();
    try testing.expectEqual(open_before + 1, client.openFiles());

    try file.writeAt("hello", 0, timeout, &diag);
    try file.writeAt("world", 10, timeout, &diag); // leaves a hole of zeros
    var buffer: [32]u8 = undefined;
    const got = try file.readAt(&buffer, 0, timeout, &diag);
    try testing.expectEqualSlices(u8, "hello\x00\x00\x00\x00\x00world", buffer[0..got]);
    try testing.expectEqual(@as(usize, 3), try file.readAt(buffer[0..3], 11, timeout, &diag));
    try testing.expectEqualStrings("orl", buffer[0..3]);
    try testing.expectEqual(@as(usize, 0), try file.readAt(&buffer, 15, timeout, &diag));

    const entry = try file.stat(a, timeout, &diag);
    defer entry.deinit(a);
    try testing.expectEqual(@as(u64, 15), entry.size);
    try testing.expectEqual(@as(u32, 0o600), entry.mode & 0o777);

    try file.setStat(.{ .size = 5 }, timeout, &diag);
    const whole = try client.readFile(a, dir ++ "/data", timeout, &diag);
    defer a.free(whole);
    try testing.expectEqualStrings("hello", whole);

    try file.close(timeout, &diag);
    try testing.expectEqual(open_before, client.openFiles());
    try testing.expectError(error.WrongState, file.close(timeout, &diag));
    try testing.expectError(error.WrongState, file.readAt(&buffer, 0, timeout, &diag));

    try testing.expectError(error.PathAlreadyExists, client.openFile(dir ++ "/data", .{ .write = true, .create_new = true }, &diag));
    try testing.expectError(error.FileNotFound, client.openFile(dir ++ "/missing", .{ .read = true }, &diag));
    try testing.expectEqual(@as(?i32, 2), diag.guestErrno());
    try testing.expectError(error.InvalidArgument, client.openFile(dir ++ "/data", .{ .create = true }, &diag));
    try testing.expectEqual(open_before, client.openFiles());
}

test "fs gen 2: append goes to the end, and deinit of an open File gives its handle back (Unsupported on legacy)" {
    const client = try connect();
    defer client.deinit();
    const dir = "/zig-tests/append";
    try resetDir(client, dir);
    if (client.generation() < 2) return expectGen2FilesUnsupported(client);
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try client.writeFile(dir ++ "/log", "one\n", .{}, &diag);
    const open_before = client.openFiles();
    {
        const file = try client.openFile(dir ++ "/log", .{ .append = true }, &diag);
        defer file.deinit();
        try file.writeAt("two\n", 0, timeout, &diag);
    }
    try testing.expectEqual(open_before, client.openFiles());
    const data = try client.readFile(testing.allocator, dir ++ "/log", timeout, &diag);
    defer testing.allocator.free(data);
    try testing.expectEqualStrings("one\ntwo\n", data);
}

/// A relay of this test's own (msb-devrelay --fault flood, imitating the
/// profile under test) that answers every exec with 64 KiB output frames
/// without end, whatever the profile's flow control: a stream that fills
/// any memory budget. The relay binary is MSB_DEVRELAY, which
/// scripts/test-zig.sh sets.
const FloodRelay = struct {
    child: std.process.Child,
    dir: [:0]const u8,
    socket: [:0]const u8,

    fn start() !FloodRelay {
        const relay = testing.environ.getPosix("MSB_DEVRELAY") orelse {
            std.debug.print("MSB_DEVRELAY is not set: run the tests through scripts/test-zig.sh\n", .{});
            return error.MsbDevrelayUnset;
        };
        var random: [6]u8 = undefined;
        testing.io.random(&random);
        const dir = try std.fmt.allocPrintSentinel(testing.allocator, "/tmp/msb-zig-flood-{x}", .{random}, 0);
        errdefer testing.allocator.free(dir);
        const socket = try std.fmt.allocPrintSentinel(testing.allocator, "{s}/agent.sock", .{dir}, 0);
        errdefer testing.allocator.free(socket);
        const root = try std.fmt.allocPrint(testing.allocator, "{s}/root", .{dir});
        defer testing.allocator.free(root);
        try std.Io.Dir.cwd().createDirPath(testing.io, root);
        errdefer std.Io.Dir.cwd().deleteTree(testing.io, dir) catch {};
        const child = try std.process.spawn(testing.io, .{
            .argv = &.{ relay, "--socket", socket, "--root", root, "--quiet", "--profile", @tagName(try Profile.current()), "--fault", "flood" },
            .stdout = .ignore,
        });
        return .{ .child = child, .dir = dir, .socket = socket };
    }

    /// Connects once the relay listens (it was just started).
    fn connect(self: *const FloodRelay, options: msb.ConnectOptions) !msb.Client {
        var diag: msb.Diagnostics = .{};
        defer diag.deinit();
        var attempts: usize = 0;
        while (true) : (attempts += 1) {
            return msb.Client.connect(self.socket, options, &diag) catch |err| {
                if (err != error.NotFound or attempts == 500) {
                    std.debug.print("connect to the flood relay: {t}: {s}\n", .{ err, diag.message() });
                    return err;
                }
                try std.Io.sleep(testing.io, .fromMilliseconds(10), .awake);
                continue;
            };
        }
    }

    fn stop(self: *FloodRelay) void {
        self.child.kill(testing.io);
        std.Io.Dir.cwd().deleteTree(testing.io, self.dir) catch {};
        testing.allocator.free(self.socket);
        testing.allocator.free(self.dir);
    }
};

const smallest_budget = 64 * 1024;

fn millisecondsSince(start: std.Io.Timestamp) i64 {
    return start.durationTo(std.Io.Timestamp.now(testing.io, .awake)).toMilliseconds();
}

fn statRoot(client: msb.Client, wait: msb.Timeout, diag: ?*msb.Diagnostics) !void {
    const entry = try client.stat(testing.allocator, "/", wait, diag);
    entry.deinit(testing.allocator);
}

test "memory budget: by default a stream nobody pulls fails with StreamOverflow after the 1 s grace, and the connection carries on" {
    var relay = try FloodRelay.start();
    defer relay.stop();
    const client = try relay.connect(.{ .memory_budget = smallest_budget });
    defer client.deinit();
    const started = std.Io.Timestamp.now(testing.io, .awake);
    const process = try client.spawn(&.{"endless-output"}, .{}, null);
    defer process.deinit();
    // Long enough for the flood to fill the budget and the socket's
    // buffers: the stat's answer is behind them, and the socket is not read
    // again before the grace has run out.
    try std.Io.sleep(testing.io, .fromMilliseconds(300), .awake);
    try statRoot(client, timeout, null);
    const answered_after = millisecondsSince(started);
    if (answered_after < 900 or answered_after > 4000) {
        std.debug.print("stat answered {d} ms after the flood began\n", .{answered_after});
        return error.TestStatNotAfterTheGrace;
    }
    // What was queued comes first (unless it was released to make room),
    // then the failure: an endless stream that ends proves it failed.
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    var delivered: usize = 0;
    const failure = while (true) {
        const event = process.nextEvent(timeout, &diag) catch |err| break err;
        const got = event orelse return error.TestUnexpectedNothingYet;
        defer got.deinit();
        switch (got) {
            .started => {},
            .stdout => |data| delivered += data.slice().len,
            else => return error.TestUnexpectedEvent,
        }
    };
    try testing.expectEqual(error.StreamOverflow, failure);
    try testing.expect(std.mem.indexOf(u8, diag.message(), "memory budget") != null);
    try testing.expect(delivered <= 1 << 20);
    try statRoot(client, timeout, null);
}

test "memory budget: pause_socket holds the whole connection until the stream is pulled, then its data flows" {
    var relay = try FloodRelay.start();
    defer relay.stop();
    const client = try relay.connect(.{ .memory_budget = smallest_budget, .backpressure = .pause_socket });
    defer client.deinit();
    const process = try client.spawn(&.{"endless-output"}, .{}, null);
    var process_live = true;
    defer if (process_live) process.deinit();
    // Once the flood has filled the budget (a request sent before may be
    // answered at once), nothing is read: past the grace the default would
    // give, and short of the 5 s after which a 0.7 relay drops a client
    // that does not read.
    try std.Io.sleep(testing.io, .fromMilliseconds(300), .awake);
    try testing.expectError(error.Timeout, statRoot(client, .ms(1700), null));
    // Sixteen budgets: nothing was dropped or failed.
    var delivered: usize = 0;
    while (delivered < 16 * smallest_budget) {
        const event = (try process.nextEvent(timeout, null)) orelse return error.TestUnexpectedNothingYet;
        defer event.deinit();
        switch (event) {
            .started => {},
            .stdout => |data| delivered += data.slice().len,
            else => return error.TestUnexpectedEvent,
        }
    }
    // A killed process's later frames are dropped, not queued: the socket
    // is read again and the connection answers.
    try process.signal(9, timeout, null);
    process.deinit();
    process_live = false;
    try statRoot(client, timeout, null);
}

test "memory budget: a real command nobody reads overflows the smallest budget on every release, and the connection answers meanwhile" {
    // Below the 1 MiB exec flow control lets a 0.7 guest send ahead, so
    // generation 10 overflows too.
    const client = try msb.Client.connect(try socketPath(), .{ .memory_budget = smallest_budget }, null);
    defer client.deinit();
    const process = try client.spawn(&.{ "sh", "-c", "while :; do head -c 65536 /dev/zero; done" }, .{}, null);
    defer process.deinit();
    // Past the 1 s grace, without pulling.
    try std.Io.sleep(testing.io, .fromMilliseconds(1500), .awake);
    try statRoot(client, timeout, null);
    const failure = while (true) {
        const event = process.nextEvent(timeout, null) catch |err| break err;
        const got = event orelse return error.TestUnexpectedNothingYet;
        got.deinit();
    };
    try testing.expectEqual(error.StreamOverflow, failure);
}

test "connect options the library refuses are InvalidArgument" {
    var diag: msb.Diagnostics = .{};
    defer diag.deinit();
    try testing.expectError(error.InvalidArgument, msb.Client.connect(try socketPath(), .{ .memory_budget = smallest_budget - 1 }, &diag));
    try testing.expectEqual(@as(i32, msb.c.MSB_ERR_INVALID_ARGUMENT), diag.code());
    // The smallest budget and either backpressure are accepted.
    inline for (.{ msb.Backpressure.fail_stream, msb.Backpressure.pause_socket }) |mode| {
        const client = try msb.Client.connect(try socketPath(), .{ .memory_budget = smallest_budget, .backpressure = mode }, &diag);
        defer client.deinit();
        const result = try client.run(testing.allocator, &.{ "echo", "with options" }, .{}, &diag);
        defer result.deinit(testing.allocator);
        try testing.expectEqualStrings("with options\n", result.stdout);
    }
}
