//! Zig binding of libmicrosandbox_agent: drive a microsandbox guest (run
//! processes, read and write files, open TCP connections) through its agent
//! relay socket, for every runtime line from 0.3.14 to 0.7.13.
//!
//! Conventions:
//! - Failures are `Error` values mapped from the library's status codes.
//!   Every fallible call takes `diag: ?*Diagnostics`; pass one to keep the
//!   library's message (and the guest's errno) for the failure (no
//!   thread-local "last error").
//! - What a sandbox can do depends on its protocol generation
//!   (`Client.generation`); calls it lacks fail with `error.Unsupported`
//!   before anything is sent.
//! - Strings passed in are `[:0]const u8` (string literals coerce), handed to
//!   the library without copying.
//! - Results that hold memory say who frees it: functions taking an
//!   `Allocator` copy into memory of that allocator (free it with the same
//!   allocator, usually through a `deinit(allocator)`); `Bytes`, process
//!   events and TCP chunks wrap a library buffer freed by their `deinit()`.
//! - Every handle type (`Client`, `Process`, `File`, `TcpStream`) has a
//!   `deinit()` meant for `defer`. `Client` may be shared between threads;
//!   see each type.
//!
//! The raw C declarations stay reachable as `c` for the parts of the C API
//! this binding does not wrap (raw messages and subscriptions).
const std = @import("std");
const Allocator = std.mem.Allocator;

pub const c = @import("c");

/// Every failure the library reports, one per `MSB_ERR_*` code (except
/// `MSB_ERR_NOT_FOUND`, which is `FileNotFound` when a guest file operation
/// reports it and `NotFound` otherwise).
pub const Error = error{
    /// An argument is out of range or malformed (the message says which).
    InvalidArgument,
    /// A required pointer was null.
    NullPointer,
    /// A string argument is not valid UTF-8.
    InvalidUtf8,
    /// A message would exceed the protocol's 4 MiB frame limit.
    TooLarge,
    /// No relay at that socket path, or no sandbox of that name.
    NotFound,
    /// An operating-system error.
    Io,
    /// The call's deadline passed.
    Timeout,
    /// The relay did not complete the handshake.
    Handshake,
    /// The connection or handle is closed.
    Closed,
    /// The relay broke the protocol; the connection was closed.
    Protocol,
    /// The correlation id is outside the client's range or already in use.
    IdUnavailable,
    /// The guest reported a failure; the message is the guest's text.
    Guest,
    /// The library panicked; the call's effect cannot be relied on.
    Panic,
    /// The handle is not in a state that allows the call.
    WrongState,
    /// The sandbox's protocol generation lacks this operation; the message
    /// names it, the generation it needs and the one the sandbox speaks.
    Unsupported,
    /// The relay closed the socket before its handshake: all its slots are
    /// taken or the guest is stalled. Retrying later may succeed.
    RelayBusy,
    /// Every correlation id of this connection is used; reconnect.
    IdsExhausted,
    /// The guest could not start the command; `Diagnostics` has the guest's
    /// text, kind and stage, and its errno (the `.failed` process event has
    /// each apart).
    ExecFailed,
    /// The agent or relay rejected a message (`core.error`: kind and message).
    Agent,
    /// A guest file operation was refused (EACCES, EPERM).
    PermissionDenied,
    /// A guest file operation found its target already there (EEXIST).
    PathAlreadyExists,
    /// A guest file operation found no such file (ENOENT).
    FileNotFound,
    /// A stream's unread data passed its bound without flow control: that
    /// stream failed (its process was killed); the connection lives on.
    StreamOverflow,
    /// A status code newer than this binding.
    Unexpected,
};

/// MSB_ERR_STREAM_OVERFLOW comes with the reader rework, which may reach
/// the header after this binding; its number is fixed by the C ABI, so the
/// header's own value is used (and checked) as soon as it has one.
const stream_overflow_status: c.msb_status = if (@hasDecl(c, "MSB_ERR_STREAM_OVERFLOW")) check: {
    if (c.MSB_ERR_STREAM_OVERFLOW != -22) @compileError("MSB_ERR_STREAM_OVERFLOW differs from the number this binding knows");
    break :check c.MSB_ERR_STREAM_OVERFLOW;
} else -22;

/// The `Error` for a negative status code.
pub fn errorFromStatus(code: c.msb_status) Error {
    return switch (code) {
        c.MSB_ERR_INVALID_ARGUMENT => error.InvalidArgument,
        c.MSB_ERR_NULL_POINTER => error.NullPointer,
        c.MSB_ERR_INVALID_UTF8 => error.InvalidUtf8,
        c.MSB_ERR_TOO_LARGE => error.TooLarge,
        c.MSB_ERR_NOT_FOUND => error.NotFound,
        c.MSB_ERR_IO => error.Io,
        c.MSB_ERR_TIMEOUT => error.Timeout,
        c.MSB_ERR_HANDSHAKE => error.Handshake,
        c.MSB_ERR_CLOSED => error.Closed,
        c.MSB_ERR_PROTOCOL => error.Protocol,
        c.MSB_ERR_ID_UNAVAILABLE => error.IdUnavailable,
        c.MSB_ERR_GUEST => error.Guest,
        c.MSB_ERR_PANIC => error.Panic,
        c.MSB_ERR_WRONG_STATE => error.WrongState,
        c.MSB_ERR_UNSUPPORTED => error.Unsupported,
        c.MSB_ERR_RELAY_BUSY => error.RelayBusy,
        c.MSB_ERR_IDS_EXHAUSTED => error.IdsExhausted,
        c.MSB_ERR_EXEC_FAILED => error.ExecFailed,
        c.MSB_ERR_AGENT => error.Agent,
        c.MSB_ERR_PERMISSION => error.PermissionDenied,
        c.MSB_ERR_EXISTS => error.PathAlreadyExists,
        stream_overflow_status => error.StreamOverflow,
        else => error.Unexpected,
    };
}

/// The `Error` for a negative status of a guest file operation, where
/// `MSB_ERR_NOT_FOUND` means the guest's ENOENT rather than a missing relay.
pub fn fsErrorFromStatus(code: c.msb_status) Error {
    return if (code == c.MSB_ERR_NOT_FOUND) error.FileNotFound else errorFromStatus(code);
}

/// Receives the details of a failed call, like `std.json.Diagnostics`:
///
///     var diag: msb.Diagnostics = .{};
///     defer diag.deinit();
///     client.mkdir("/data", .ms(5000), &diag) catch |err| {
///         std.log.err("mkdir: {t}: {s}", .{ err, diag.message() });
///     };
///
/// Only failing calls write to it; each replaces (and frees) what an earlier
/// failure left. Owned by the caller's thread: give each thread its own.
pub const Diagnostics = struct {
    status: c.msb_status = c.MSB_OK,
    err: ?*c.msb_error = null,

    /// The library's message for the last failure, or the code's static
    /// description when the library gave none. Valid until the next failing
    /// call with this `Diagnostics` or `deinit`.
    pub fn message(self: *const Diagnostics) []const u8 {
        if (self.err) |err| return std.mem.span(c.msb_error_message(err));
        if (self.status == c.MSB_OK) return "";
        return std.mem.span(c.msb_status_str(self.status));
    }

    /// The last failure's status code (`MSB_OK` if none).
    pub fn code(self: *const Diagnostics) c.msb_status {
        return self.status;
    }

    /// The guest's errno behind the last failure (e.g. 2 for ENOENT), or
    /// null when the failure carried none.
    pub fn guestErrno(self: *const Diagnostics) ?i32 {
        const err = self.err orelse return null;
        const errno = c.msb_error_errno(err);
        return if (errno == 0) null else errno;
    }

    pub fn deinit(self: *Diagnostics) void {
        c.msb_error_free(self.err);
        self.* = .{};
    }

    fn record(self: *Diagnostics, status: c.msb_status, err: ?*c.msb_error) void {
        c.msb_error_free(self.err);
        self.* = .{ .status = status, .err = err };
    }
};

/// Turns a status into `Error` (for negative codes), handing the library's
/// error object to `diag` or freeing it. Non-negative codes return normally
/// so pulls can look at MSB_NOTHING_YET / MSB_ENDED themselves.
fn check(status: c.msb_status, err: ?*c.msb_error, diag: ?*Diagnostics) Error!void {
    return checkMapped(errorFromStatus, status, err, diag);
}

/// `check` for guest file operations: their `MSB_ERR_NOT_FOUND` is the
/// guest's ENOENT, `error.FileNotFound`.
fn checkFs(status: c.msb_status, err: ?*c.msb_error, diag: ?*Diagnostics) Error!void {
    return checkMapped(fsErrorFromStatus, status, err, diag);
}

fn checkMapped(comptime toError: fn (c.msb_status) Error, status: c.msb_status, err: ?*c.msb_error, diag: ?*Diagnostics) Error!void {
    if (status >= 0) {
        // Documented never to happen (err_out is written only on failure),
        // but a leak here would be silent.
        c.msb_error_free(err);
        return;
    }
    if (diag) |d| d.record(status, err) else c.msb_error_free(err);
    return toError(status);
}

/// How long a call may wait. `.immediate` (0) makes pulls return at once
/// with what is already there; `.infinite` waits without limit.
pub const Timeout = enum(i64) {
    immediate = 0,
    infinite = c.MSB_TIMEOUT_INFINITE,
    _,

    pub fn ms(milliseconds: u32) Timeout {
        return @fromBackingInt(@intCast(milliseconds));
    }

    fn toMs(self: Timeout) i64 {
        return @backingInt(self);
    }
};

/// The library's version, "MAJOR.MINOR.PATCH" (static).
pub fn version() []const u8 {
    return std.mem.span(c.msb_version());
}

/// An owned library buffer, freed by `deinit` (`msb_bytes_free`); `slice()`
/// borrows it without copying.
pub const Bytes = struct {
    handle: *c.msb_bytes,

    pub fn slice(self: Bytes) []const u8 {
        const len = c.msb_bytes_len(self.handle);
        if (len == 0) return &.{};
        return c.msb_bytes_data(self.handle)[0..len];
    }

    pub fn deinit(self: Bytes) void {
        c.msb_bytes_free(self.handle);
    }
};

pub const ConnectOptions = struct {
    /// Deadline for connecting plus the handshake (library default: 10 s).
    timeout_ms: ?u64 = null,
    /// Bytes that received, not yet pulled messages may hold (library
    /// default: 16 MiB; at least 64 KiB, else `error.InvalidArgument`).
    /// When they fill it, `backpressure` decides: by default the socket is
    /// left unread until a pull frees memory, for at most 1 s, then the
    /// stream holding the most unread data fails with
    /// `error.StreamOverflow` (its process is killed) and the connection
    /// carries on.
    memory_budget: ?usize = null,
    /// What happens when unread messages fill `memory_budget` (library
    /// default: `.fail_stream`).
    backpressure: ?Backpressure = null,
};

/// What a connection does when unread messages fill its memory budget.
pub const Backpressure = enum(i32) {
    /// Stop reading the socket until a pull frees memory, for at most 1 s;
    /// then the stream holding the most unread data fails with
    /// `error.StreamOverflow` (a process's is killed) and every other
    /// stream carries on. A slow reader loses nothing: the guest is held
    /// back meanwhile. The library's default.
    fail_stream = c.MSB_BACKPRESSURE_FAIL_STREAM,
    /// Stop reading the socket until a pull frees memory, however long.
    /// Nothing fails, but one stream nobody pulls holds up the whole
    /// connection, and the relay sees a client that does not read: a 0.7
    /// relay disconnects it after 5 s (killing its processes), a 0.6 relay
    /// stalls every client of the sandbox meanwhile. Only for callers that
    /// always drain what they start.
    pause_socket = c.MSB_BACKPRESSURE_PAUSE_SOCKET,
};

/// Sandbox start-up timings from the relay's `core.ready`, in nanoseconds.
pub const ReadyTimings = struct {
    boot_time_ns: u64,
    init_time_ns: u64,
    ready_time_ns: u64,
};

/// What the relay has sent this client.
pub const Counters = c.msb_counters;

/// A half-open range of correlation ids.
pub const IdRange = struct {
    start: u32,
    end_exclusive: u32,
};

/// A connection to one relay, with its own background thread.
///
/// Thread safety: every method may be called from any thread at once;
/// `close` wakes all of them with `error.Closed`. Call `deinit` once, after
/// the other threads are done with the client.
pub const Client = struct {
    handle: *c.msb_client,

    /// Connects to the relay socket at `socket_path` and completes the
    /// handshake. Errors: `NotFound` (no relay there), `Timeout`,
    /// `Handshake` (e.g. all slots taken), `Protocol`, `InvalidArgument`
    /// (path too long), `Io`.
    pub fn connect(socket_path: [:0]const u8, options: ConnectOptions, diag: ?*Diagnostics) Error!Client {
        return connectWith(c.msb_client_connect, socket_path, options, diag);
    }

    /// Connects to a sandbox by name, at the socket `sandboxSocketPath`
    /// finds for it under `$MSB_HOME` (default `~/.microsandbox`), in the
    /// layout of whichever runtime line started it. An unknown name gives
    /// `error.NotFound`.
    pub fn connectSandbox(name: [:0]const u8, options: ConnectOptions, diag: ?*Diagnostics) Error!Client {
        return connectWith(c.msb_client_connect_sandbox, name, options, diag);
    }

    /// Performs the handshake on an already connected stream socket. The
    /// library uses a duplicate of `fd`; the caller still owns `fd`.
    pub fn connectFd(fd: std.posix.fd_t, options: ConnectOptions, diag: ?*Diagnostics) Error!Client {
        const native_options = try makeConnectOptions(options, diag);
        defer c.msb_connect_options_free(native_options);
        var client: ?*c.msb_client = null;
        var err: ?*c.msb_error = null;
        try check(c.msb_client_connect_fd(fd, native_options, &client, &err), err, diag);
        return .{ .handle = client.? };
    }

    fn connectWith(
        comptime connectFn: anytype,
        target: [:0]const u8,
        options: ConnectOptions,
        diag: ?*Diagnostics,
    ) Error!Client {
        const native_options = try makeConnectOptions(options, diag);
        defer c.msb_connect_options_free(native_options);
        var client: ?*c.msb_client = null;
        var err: ?*c.msb_error = null;
        try check(connectFn(target.ptr, native_options, &client, &err), err, diag);
        return .{ .handle = client.? };
    }

    /// Null (the library's defaults) when no option is set.
    fn makeConnectOptions(options: ConnectOptions, diag: ?*Diagnostics) Error!?*c.msb_connect_options {
        if (options.timeout_ms == null and options.memory_budget == null and options.backpressure == null) return null;
        var native: ?*c.msb_connect_options = null;
        try check(c.msb_connect_options_new(&native), null, diag);
        errdefer c.msb_connect_options_free(native);
        // The C timeout is an int64_t; beyond its range the deadline is the
        // same (millions of years), so clamp rather than fail.
        if (options.timeout_ms) |ms| try check(c.msb_connect_options_set_timeout_ms(native, @intCast(@min(ms, std.math.maxInt(i64)))), null, diag);
        if (options.memory_budget) |bytes| try check(c.msb_connect_options_set_memory_budget(native, bytes), null, diag);
        if (options.backpressure) |mode| try check(c.msb_connect_options_set_backpressure(native, @backingInt(mode)), null, diag);
        return native;
    }

    /// Closes the connection and releases the client, waiting for its
    /// background thread. Processes started through it stay valid to
    /// `deinit` but fail with `error.Closed`.
    pub fn deinit(self: Client) void {
        c.msb_client_free(self.handle);
    }

    /// Closes the connection: every call blocked on this client, its
    /// processes and streams returns `error.Closed`, and later calls fail
    /// the same way. Idempotent; any thread. `deinit` is still required.
    pub fn close(self: Client) void {
        // Fails only for a null handle, which a Client never holds.
        _ = c.msb_client_close(self.handle);
    }

    pub fn readyTimings(self: Client) ReadyTimings {
        var timings: c.msb_ready_timings = undefined;
        // Fails only for null arguments.
        std.debug.assert(c.msb_client_ready_timings(self.handle, &timings) == c.MSB_OK);
        return .{
            .boot_time_ns = timings.boot_time_ns,
            .init_time_ns = timings.init_time_ns,
            .ready_time_ns = timings.ready_time_ns,
        };
    }

    /// The raw CBOR payload of the relay's `core.ready` (a library buffer).
    pub fn readyPayload(self: Client) Error!Bytes {
        var payload: ?*c.msb_bytes = null;
        try check(c.msb_client_ready_payload(self.handle, &payload), null, null);
        return .{ .handle = payload.? };
    }

    /// The relay's id offset for this client (its correlation ids follow it).
    pub fn idOffset(self: Client) u32 {
        return c.msb_client_id_offset(self.handle);
    }

    // ---- what the sandbox speaks ----

    /// The protocol generation this connection speaks: 1 on a legacy
    /// (0.3/0.4) relay, else the smaller of the sandbox's and the library's.
    /// Operations newer than it fail with `error.Unsupported`.
    pub fn generation(self: Client) u32 {
        return c.msb_client_generation(self.handle);
    }

    /// The sandbox's own generation (the `v` of its `core.ready`).
    pub fn peerGeneration(self: Client) u32 {
        return c.msb_client_peer_generation(self.handle);
    }

    /// Whether the relay used the legacy handshake of 0.3.x/0.4.x (16
    /// clients, file operations in their 0.3.14 shapes).
    pub fn isLegacy(self: Client) bool {
        return c.msb_client_is_legacy(self.handle);
    }

    /// The agent's version from `core.ready` (e.g. "0.6.14"), "" when the
    /// sandbox does not say. Borrowed until `deinit`.
    pub fn agentVersion(self: Client) []const u8 {
        return std.mem.span(c.msb_client_agent_version(self.handle));
    }

    /// This connection's correlation ids: `start <= id < end_exclusive`.
    pub fn idRange(self: Client) IdRange {
        var range: IdRange = undefined;
        // Fails only for null arguments.
        std.debug.assert(c.msb_client_id_range(self.handle, &range.start, &range.end_exclusive) == c.MSB_OK);
        return range;
    }

    /// Whether this connection can carry the message type `message_type`
    /// (a wire name such as "core.tcp.connect"); false for unknown names.
    pub fn supports(self: Client, message_type: [:0]const u8) bool {
        return c.msb_client_supports(self.handle, message_type.ptr);
    }

    pub fn counters(self: Client) Counters {
        var result: Counters = std.mem.zeroes(Counters);
        result.struct_size = @sizeOf(Counters);
        std.debug.assert(c.msb_client_counters(self.handle, &result) == c.MSB_OK);
        return result;
    }

    /// Asks the sandbox to shut down. No reply comes; the relay closes the
    /// connection as the sandbox goes away.
    pub fn shutdown(self: Client, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_client_shutdown(self.handle, timeout.toMs(), &err), err, diag);
    }

    // ---- liveness (generation 6: 0.6.4 and later) ----

    /// Checks that the sandbox's agent answers, without counting as activity
    /// for its idle timer. `error.Unsupported` on older sandboxes.
    pub fn ping(self: Client, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_client_ping(self.handle, timeout.toMs(), &err), err, diag);
    }

    /// Marks the sandbox as active (restarting its idle timer) and returns
    /// the agent's activity sequence number, which grows with every
    /// activity. `error.Unsupported` on older sandboxes.
    pub fn touch(self: Client, timeout: Timeout, diag: ?*Diagnostics) Error!u64 {
        var activity_seq: u64 = 0;
        var err: ?*c.msb_error = null;
        try check(c.msb_client_touch(self.handle, timeout.toMs(), &activity_seq, &err), err, diag);
        return activity_seq;
    }

    // ---- TCP (generation 4: 0.5.5 and later) ----

    /// Asks the guest to open a TCP connection to `host:port` (a name the
    /// guest resolves, or an address), waiting up to `timeout` for the
    /// outcome. A connection the guest could not make is `error.Guest`
    /// (`diag.guestErrno()` is e.g. 111 for a refused one);
    /// `error.Unsupported` on sandboxes older than 0.5.5.
    pub fn tcpConnect(self: Client, host: [:0]const u8, port: u16, timeout: Timeout, diag: ?*Diagnostics) Error!TcpStream {
        var stream: ?*c.msb_tcp_stream = null;
        var err: ?*c.msb_error = null;
        try check(c.msb_tcp_connect(self.handle, host.ptr, port, timeout.toMs(), &stream, &err), err, diag);
        return .{ .handle = stream.? };
    }

    // ---- processes ----

    /// Starts `argv[0]` (looked up in the guest's PATH) with `argv[1..]`.
    /// Pull its events with `Process.nextEvent`. `options.timeout` bounds
    /// sending the request. An empty `argv` is `error.InvalidArgument`.
    pub fn spawn(self: Client, argv: []const [:0]const u8, options: SpawnOptions, diag: ?*Diagnostics) Error!Process {
        const request = try buildRequest(argv, options, diag);
        defer c.msb_exec_request_free(request);
        var exec: ?*c.msb_exec = null;
        var err: ?*c.msb_error = null;
        try check(c.msb_exec_start(self.handle, request, options.timeout.toMs(), &exec, &err), err, diag);
        return .{ .handle = exec.? };
    }

    /// Runs `argv` to completion with stdin closed, capturing stdout and
    /// stderr (each up to `options.capture_limit` bytes) into memory of
    /// `allocator`. The whole run must end within `options.timeout`, or the
    /// process is killed and `error.Timeout` returned. A non-zero exit code
    /// is not an error. A command the guest cannot start is
    /// `error.ExecFailed` (agents 0.4.4+; `diag` has the guest's text, kind
    /// and stage) or, from older agents, exit code -1.
    pub fn run(
        self: Client,
        allocator: Allocator,
        argv: []const [:0]const u8,
        options: RunOptions,
        diag: ?*Diagnostics,
    ) (Error || Allocator.Error)!RunResult {
        const request = try buildRequest(argv, options.spawn, diag);
        defer c.msb_exec_request_free(request);
        var output: ?*c.msb_run_output = null;
        var err: ?*c.msb_error = null;
        try check(c.msb_exec_run(self.handle, request, options.capture_limit, options.timeout.toMs(), &output, &err), err, diag);
        defer c.msb_run_output_free(output);

        const stdout = try allocator.dupe(u8, borrowed(c.msb_run_output_stdout, output));
        errdefer allocator.free(stdout);
        const stderr = try allocator.dupe(u8, borrowed(c.msb_run_output_stderr, output));
        return .{
            .exit_code = c.msb_run_output_exit_code(output),
            .stdout = stdout,
            .stderr = stderr,
            .truncated = c.msb_run_output_truncated(output),
        };
    }

    // ---- files ----

    /// Reads a whole file into memory of `allocator`.
    pub fn readFile(self: Client, allocator: Allocator, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)![]u8 {
        const data = try self.readFileBytes(path, timeout, diag);
        defer data.deinit();
        return allocator.dupe(u8, data.slice());
    }

    /// Reads a whole file into a library buffer (no copy; `deinit` it).
    pub fn readFileBytes(self: Client, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!Bytes {
        var data: ?*c.msb_bytes = null;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_fs_read_file(self.handle, path.ptr, timeout.toMs(), &data, &err), err, diag);
        return .{ .handle = data.? };
    }

    /// Writes a whole file (created or truncated). `mode` null keeps the
    /// guest's default permissions.
    pub fn writeFile(self: Client, path: [:0]const u8, data: []const u8, options: WriteFileOptions, diag: ?*Diagnostics) Error!void {
        const mode: i32 = if (options.mode) |m| @intCast(m) else -1;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_fs_write_file(self.handle, path.ptr, data.ptr, data.len, mode, options.timeout.toMs(), &err), err, diag);
    }

    /// Metadata of `path` (symlinks not followed); the entry's path is
    /// copied into memory of `allocator` (`Entry.deinit`).
    pub fn stat(self: Client, allocator: Allocator, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)!Entry {
        var entry: ?*c.msb_fs_entry = null;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_fs_stat(self.handle, path.ptr, timeout.toMs(), &entry, &err), err, diag);
        return Entry.take(allocator, entry);
    }

    /// The immediate children of `path`, unsorted, copied into memory of
    /// `allocator` (`Listing.deinit`).
    pub fn list(self: Client, allocator: Allocator, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)!Listing {
        var native: ?*c.msb_fs_entries = null;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_fs_list(self.handle, path.ptr, timeout.toMs(), &native, &err), err, diag);
        defer c.msb_fs_entries_free(native);

        const entries = try allocator.alloc(Entry, c.msb_fs_entries_len(native));
        var copied: usize = 0;
        errdefer {
            for (entries[0..copied]) |entry| entry.deinit(allocator);
            allocator.free(entries);
        }
        for (entries, 0..) |*entry, index| {
            entry.* = try Entry.copy(allocator, c.msb_fs_entries_get(native, index).?);
            copied += 1;
        }
        return .{ .entries = entries };
    }

    /// Creates a directory and any missing parents.
    pub fn mkdir(self: Client, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        return self.pathCall(c.msb_fs_mkdir, path, timeout, diag);
    }

    /// Removes a file.
    pub fn remove(self: Client, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        return self.pathCall(c.msb_fs_remove, path, timeout, diag);
    }

    /// Removes a directory and everything in it.
    pub fn removeDir(self: Client, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        return self.pathCall(c.msb_fs_remove_dir, path, timeout, diag);
    }

    // ---- files, generation 2 (0.5.1 and later; error.Unsupported before) ----

    /// Removes a directory only if it is empty (one with entries is
    /// `error.Guest`, errno 39 ENOTEMPTY).
    pub fn removeEmptyDir(self: Client, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_fs_remove_dir_ex(self.handle, path.ptr, false, timeout.toMs(), &err), err, diag);
    }

    /// Metadata of what `path` points at, following symlinks (`stat`
    /// describes a link itself). A dangling link is `error.FileNotFound`.
    pub fn statFollow(self: Client, allocator: Allocator, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)!Entry {
        var entry: ?*c.msb_fs_entry = null;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_fs_stat_follow(self.handle, path.ptr, timeout.toMs(), &entry, &err), err, diag);
        return Entry.take(allocator, entry);
    }

    /// The canonical absolute guest path of `path`, every symlink, `.` and
    /// `..` resolved; the path must exist. Copied into memory of `allocator`.
    pub fn realPath(self: Client, allocator: Allocator, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)![:0]u8 {
        return self.pathResult(c.msb_fs_realpath, allocator, path, timeout, diag);
    }

    /// The target stored in the symlink `path`, unresolved. Copied into
    /// memory of `allocator`. Not a symlink: `error.Guest` (errno 22 EINVAL).
    pub fn readLink(self: Client, allocator: Allocator, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)![:0]u8 {
        return self.pathResult(c.msb_fs_readlink, allocator, path, timeout, diag);
    }

    /// Creates the symlink `link_path` pointing at `target` (stored as
    /// given; it need not exist). `error.PathAlreadyExists` if `link_path`
    /// exists.
    pub fn symLink(self: Client, target: [:0]const u8, link_path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        return self.twoPathCall(c.msb_fs_symlink, target, link_path, timeout, diag);
    }

    /// Changes the attributes `attrs` sets on `path` (of what a final
    /// symlink points at when `options.follow_symlink`, else of the path
    /// itself); the others stay as they are.
    pub fn setStat(self: Client, path: [:0]const u8, attrs: SetAttrs, options: SetStatOptions, diag: ?*Diagnostics) Error!void {
        const native = try attrs.build(diag);
        defer c.msb_fs_set_attrs_free(native);
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_fs_set_stat(self.handle, path.ptr, options.follow_symlink, native, options.timeout.toMs(), &err), err, diag);
    }

    /// Opens `path` in the guest and keeps it open through a guest handle,
    /// for reads and writes at any offset. At least one of `read`, `write`,
    /// `append` must be set. A missing file without `create` is
    /// `error.FileNotFound`; `create_new` on an existing one
    /// `error.PathAlreadyExists`. Each open `File` holds one of the guest's
    /// `file_handle_limit` handles of this connection until `close` or
    /// `deinit`.
    pub fn openFile(self: Client, path: [:0]const u8, options: OpenOptions, diag: ?*Diagnostics) Error!File {
        const mode: i32 = if (options.mode) |m| @intCast(m) else -1;
        var file: ?*c.msb_file = null;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_file_open(self.handle, path.ptr, options.flags(), mode, options.timeout.toMs(), &file, &err), err, diag);
        return .{ .handle = file.? };
    }

    /// Files opened with `openFile` on this client and not yet closed.
    pub fn openFiles(self: Client) u32 {
        return c.msb_client_open_files(self.handle);
    }

    fn pathResult(self: Client, comptime func: anytype, allocator: Allocator, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)![:0]u8 {
        var native: ?*c.msb_bytes = null;
        var err: ?*c.msb_error = null;
        try checkFs(func(self.handle, path.ptr, timeout.toMs(), &native, &err), err, diag);
        const result: Bytes = .{ .handle = native.? };
        defer result.deinit();
        return allocator.dupeSentinel(u8, result.slice(), 0);
    }

    /// Copies the file `src` to `dst`.
    pub fn copy(self: Client, src: [:0]const u8, dst: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        return self.twoPathCall(c.msb_fs_copy, src, dst, timeout, diag);
    }

    /// Renames (moves) `src` to `dst`.
    pub fn rename(self: Client, src: [:0]const u8, dst: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        return self.twoPathCall(c.msb_fs_rename, src, dst, timeout, diag);
    }

    fn pathCall(self: Client, comptime func: anytype, path: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try checkFs(func(self.handle, path.ptr, timeout.toMs(), &err), err, diag);
    }

    fn twoPathCall(self: Client, comptime func: anytype, src: [:0]const u8, dst: [:0]const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try checkFs(func(self.handle, src.ptr, dst.ptr, timeout.toMs(), &err), err, diag);
    }
};

pub const EnvVar = struct {
    /// Non-empty, without '='.
    name: [:0]const u8,
    value: [:0]const u8,
};

pub const Rlimit = struct {
    /// Lower-case: cpu fsize data stack core rss nproc nofile memlock as
    /// locks sigpending msgqueue nice rtprio rttime.
    resource: [:0]const u8,
    soft: u64,
    hard: u64,
};

pub const TerminalSize = struct {
    rows: u16 = 24,
    cols: u16 = 80,
};

pub const SpawnOptions = struct {
    /// Added to the guest's default environment.
    env: []const EnvVar = &.{},
    /// Working directory in the guest (null: the guest's default).
    cwd: ?[:0]const u8 = null,
    /// Guest user to run as (null: the agent's default).
    user: ?[:0]const u8 = null,
    /// Run on a pseudo-terminal of this size; stderr then arrives merged
    /// into stdout.
    tty: ?TerminalSize = null,
    rlimits: []const Rlimit = &.{},
    /// For `spawn`: bounds sending the request (the process may run longer).
    timeout: Timeout = .ms(10_000),
};

pub const RunOptions = struct {
    spawn: SpawnOptions = .{},
    /// Bytes kept of each of stdout and stderr; the rest is discarded and
    /// `RunResult.truncated` set.
    capture_limit: usize = 16 * 1024 * 1024,
    /// Bounds the whole run; the process is killed when it passes.
    timeout: Timeout = .ms(60_000),
};

/// The outcome of `Client.run`; `stdout` and `stderr` belong to the
/// allocator passed to `run`.
pub const RunResult = struct {
    /// -1 if the process was killed by a signal, or could not be started by
    /// an agent older than 0.4.4.
    exit_code: i32,
    stdout: []u8,
    stderr: []u8,
    /// Output beyond the capture limit was discarded.
    truncated: bool,

    pub fn deinit(self: RunResult, allocator: Allocator) void {
        allocator.free(self.stdout);
        allocator.free(self.stderr);
    }
};

fn buildRequest(argv: []const [:0]const u8, options: SpawnOptions, diag: ?*Diagnostics) Error!*c.msb_exec_request {
    var err: ?*c.msb_error = null;
    var request: ?*c.msb_exec_request = null;
    // An empty command lets the library report the empty argv in its words.
    const command: [:0]const u8 = if (argv.len == 0) "" else argv[0];
    try check(c.msb_exec_request_new(command.ptr, &request, &err), err, diag);
    errdefer c.msb_exec_request_free(request);
    const args: []const [:0]const u8 = if (argv.len > 1) argv[1..] else &.{};
    for (args) |arg| try check(c.msb_exec_request_add_arg(request, arg.ptr, &err), err, diag);
    for (options.env) |variable| {
        try check(c.msb_exec_request_add_env(request, variable.name.ptr, variable.value.ptr, &err), err, diag);
    }
    if (options.cwd) |cwd| try check(c.msb_exec_request_set_cwd(request, cwd.ptr, &err), err, diag);
    if (options.user) |user| try check(c.msb_exec_request_set_user(request, user.ptr, &err), err, diag);
    if (options.tty) |size| try check(c.msb_exec_request_set_tty(request, true, size.rows, size.cols, &err), err, diag);
    for (options.rlimits) |limit| {
        try check(c.msb_exec_request_add_rlimit(request, limit.resource.ptr, limit.soft, limit.hard, &err), err, diag);
    }
    return request.?;
}

/// Calls one of the library's "(handle, &len) -> borrowed pointer" getters
/// and returns the bytes as a slice (borrowed just like the pointer).
fn borrowed(comptime getter: anytype, handle: anytype) []const u8 {
    var len: usize = 0;
    const data = getter(handle, &len);
    if (len == 0) return &.{};
    return data[0..len];
}

/// A process running in the guest.
///
/// Thread safety: one thread may wait in `nextEvent` while others write
/// stdin, signal or resize. `deinit` stops listening (the process keeps
/// running until it exits or the client disconnects) and wakes a thread
/// blocked in `nextEvent` with `error.Closed`.
pub const Process = struct {
    handle: *c.msb_exec,

    pub const Event = union(enum) {
        /// The process started; its guest pid.
        started: u32,
        /// Output on stdout (or the terminal, with a tty).
        stdout: Bytes,
        /// Output on stderr.
        stderr: Bytes,
        /// The process ended (the last event, unless `failed` comes
        /// instead): its exit code, -1 if killed by a signal, or if it could
        /// not be started by an agent older than 0.4.4.
        exited: i32,
        /// The guest could not start the command (agents 0.4.4+); the last
        /// event, and no `started` came before it.
        failed: ExecFailure,
        /// Writing stdin into the process failed (agents 0.4.6+); the
        /// process runs on and more events follow.
        stdin_error: StdinError,

        /// Frees what `stdout`/`stderr`/`failed`/`stdin_error` events hold;
        /// a no-op for the others, so `defer event.deinit()` fits every event.
        pub fn deinit(self: Event) void {
            switch (self) {
                .stdout, .stderr => |data| data.deinit(),
                .failed => |failure| failure.deinit(),
                .stdin_error => |stdin_error| stdin_error.deinit(),
                .started, .exited => {},
            }
        }
    };

    /// Why the guest could not start a command. The strings are borrowed
    /// from the event until `deinit`.
    pub const ExecFailure = struct {
        event: *c.msb_exec_event,

        /// The guest's name for the failure: "not_found",
        /// "permission_denied", "not_executable", "bad_cwd", "bad_args",
        /// "resource_limit", "user_setup_failed", "out_of_memory",
        /// "pty_setup_failed", "other", or a newer name as sent.
        pub fn kind(self: ExecFailure) []const u8 {
            return std.mem.span(c.msb_exec_event_failure_kind(self.event));
        }

        /// The guest's errno, if it sent one.
        pub fn errno(self: ExecFailure) ?i32 {
            return eventErrno(self.event);
        }

        /// The guest's description.
        pub fn message(self: ExecFailure) []const u8 {
            return std.mem.span(c.msb_exec_event_message(self.event));
        }

        /// Where starting failed (e.g. "spawn"), if the guest said.
        pub fn stage(self: ExecFailure) ?[]const u8 {
            const text = c.msb_exec_event_stage(self.event) orelse return null;
            return std.mem.span(text);
        }

        pub fn deinit(self: ExecFailure) void {
            c.msb_exec_event_free(self.event);
        }
    };

    /// A failed write into the process's stdin. The message is borrowed
    /// from the event until `deinit`.
    pub const StdinError = struct {
        event: *c.msb_exec_event,

        /// The guest's errno (e.g. 32 for EPIPE), if it sent one.
        pub fn errno(self: StdinError) ?i32 {
            return eventErrno(self.event);
        }

        pub fn message(self: StdinError) []const u8 {
            return std.mem.span(c.msb_exec_event_message(self.event));
        }

        pub fn deinit(self: StdinError) void {
            c.msb_exec_event_free(self.event);
        }
    };

    fn eventErrno(event: *c.msb_exec_event) ?i32 {
        const errno = c.msb_exec_event_errno(event);
        return if (errno == 0) null else errno;
    }

    /// The next event, waiting up to `timeout`: null if none arrived in time
    /// (nothing is consumed), `error.EndOfStream` once `exited` or `failed`
    /// was pulled. Output that arrived before the connection died is
    /// delivered before the error.
    pub fn nextEvent(self: Process, timeout: Timeout, diag: ?*Diagnostics) (Error || error{EndOfStream})!?Event {
        var pulled: ?*c.msb_exec_event = null;
        var err: ?*c.msb_error = null;
        const status = c.msb_exec_next_event(self.handle, timeout.toMs(), &pulled, &err);
        try check(status, err, diag);
        switch (status) {
            c.MSB_NOTHING_YET => return null,
            c.MSB_ENDED => return error.EndOfStream,
            else => {},
        }
        const native = pulled.?;
        // Failure events keep the native event: their texts live in it.
        switch (c.msb_exec_event_kind(native)) {
            c.MSB_EXEC_FAILED => return .{ .failed = .{ .event = native } },
            c.MSB_EXEC_STDIN_ERROR => return .{ .stdin_error = .{ .event = native } },
            else => {},
        }
        defer c.msb_exec_event_free(native);
        return switch (c.msb_exec_event_kind(native)) {
            c.MSB_EXEC_STARTED => .{ .started = c.msb_exec_event_pid(native) },
            c.MSB_EXEC_STDOUT => .{ .stdout = try takeData(native, diag) },
            c.MSB_EXEC_STDERR => .{ .stderr = try takeData(native, diag) },
            c.MSB_EXEC_EXITED => .{ .exited = c.msb_exec_event_exit_code(native) },
            else => error.Unexpected,
        };
    }

    fn takeData(event: *c.msb_exec_event, diag: ?*Diagnostics) Error!Bytes {
        var data: ?*c.msb_bytes = null;
        try check(c.msb_exec_event_take_data(event, &data), null, diag);
        return .{ .handle = data.? };
    }

    /// Writes to the process's stdin (copied into the socket before this
    /// returns; large input is split into frames).
    pub fn writeStdin(self: Process, data: []const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_exec_write_stdin(self.handle, data.ptr, data.len, timeout.toMs(), &err), err, diag);
    }

    /// Ends the process's input.
    pub fn closeStdin(self: Process, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_exec_close_stdin(self.handle, timeout.toMs(), &err), err, diag);
    }

    /// Sends the guest (Linux) signal number `signal`, e.g. 15 for SIGTERM.
    pub fn signal(self: Process, sig: i32, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_exec_signal(self.handle, sig, timeout.toMs(), &err), err, diag);
    }

    /// Resizes the process's terminal (meaningful with a tty).
    pub fn resize(self: Process, size: TerminalSize, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_exec_resize(self.handle, size.rows, size.cols, timeout.toMs(), &err), err, diag);
    }

    /// A descriptor readable exactly while `nextEvent(.immediate, ...)`
    /// would not return null, to wait in poll/epoll. Do not read, write or
    /// close it; valid until `deinit`.
    pub fn readinessFd(self: Process, diag: ?*Diagnostics) Error!std.posix.fd_t {
        var fd: c_int = -1;
        var err: ?*c.msb_error = null;
        try check(c.msb_exec_readiness_fd(self.handle, &fd, &err), err, diag);
        return fd;
    }

    /// The correlation id of the process's session.
    pub fn id(self: Process) u32 {
        return c.msb_exec_id(self.handle);
    }

    pub fn deinit(self: Process) void {
        c.msb_exec_free(self.handle);
    }
};

/// A TCP connection the guest made for the caller (`Client.tcpConnect`).
///
/// Thread safety: one thread may wait in `pull` while another writes.
/// `deinit` aborts the connection unless it already ended, and wakes a
/// thread blocked in `pull` with `error.Closed`; for an orderly close,
/// `shutdownWrite` and pull to `error.EndOfStream` first.
pub const TcpStream = struct {
    handle: *c.msb_tcp_stream,

    /// Sends `data` to the guest's peer (in the socket when this returns).
    /// `error.WrongState` after `shutdownWrite` or once the connection ended.
    pub fn write(self: TcpStream, data: []const u8, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_tcp_write(self.handle, data.ptr, data.len, timeout.toMs(), &err), err, diag);
    }

    /// Half-closes the connection: the peer reads end-of-file, and `pull`
    /// goes on until the peer closes too. Idempotent.
    pub fn shutdownWrite(self: TcpStream, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try check(c.msb_tcp_shutdown_write(self.handle, timeout.toMs(), &err), err, diag);
    }

    /// The next chunk the peer sent (at most 64 KiB, a library buffer to
    /// `deinit`), waiting up to `timeout`: null if none arrived in time,
    /// `error.EndOfStream` once the peer closed its side (and on every later
    /// call), `error.Guest` if the connection failed.
    pub fn pull(self: TcpStream, timeout: Timeout, diag: ?*Diagnostics) (Error || error{EndOfStream})!?Bytes {
        var chunk: ?*c.msb_bytes = null;
        var err: ?*c.msb_error = null;
        const status = c.msb_tcp_read(self.handle, timeout.toMs(), &chunk, &err);
        try check(status, err, diag);
        return switch (status) {
            c.MSB_NOTHING_YET => null,
            c.MSB_ENDED => error.EndOfStream,
            else => .{ .handle = chunk.? },
        };
    }

    /// Pulls until the peer closes its side, copying everything into memory
    /// of `allocator`. `timeout` bounds each wait for a chunk, not the
    /// whole read; null from a pull (nothing within `timeout`) is
    /// `error.Timeout`.
    pub fn readToEnd(self: TcpStream, allocator: Allocator, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)![]u8 {
        var received: std.ArrayList(u8) = .empty;
        errdefer received.deinit(allocator);
        while (true) {
            const chunk = (self.pull(timeout, diag) catch |err| switch (err) {
                error.EndOfStream => return received.toOwnedSlice(allocator),
                else => |other| return other,
            }) orelse return error.Timeout;
            defer chunk.deinit();
            try received.appendSlice(allocator, chunk.slice());
        }
    }

    /// A descriptor readable exactly while `pull(.immediate, ...)` would not
    /// return null, for poll/epoll. Do not read, write or close it; valid
    /// until `deinit`.
    pub fn readinessFd(self: TcpStream, diag: ?*Diagnostics) Error!std.posix.fd_t {
        var fd: c_int = -1;
        var err: ?*c.msb_error = null;
        try check(c.msb_tcp_readiness_fd(self.handle, &fd, &err), err, diag);
        return fd;
    }

    /// The correlation id the connection travels on.
    pub fn id(self: TcpStream) u32 {
        return c.msb_tcp_stream_id(self.handle);
    }

    pub fn deinit(self: TcpStream) void {
        c.msb_tcp_stream_free(self.handle);
    }
};

/// The relay socket path of the sandbox `name`, as `Client.connectSandbox`
/// resolves it: under `$MSB_HOME` (default `~/.microsandbox`), in the
/// layout of whichever runtime line started the sandbox (the first existing
/// one, newest first; else the newest that fits a socket address). Nothing
/// is connected to. Copied into memory of `allocator`. An invalid name
/// (empty, over 255 bytes, with '/', "." or "..") is `error.InvalidArgument`.
pub fn sandboxSocketPath(allocator: Allocator, name: [:0]const u8, diag: ?*Diagnostics) (Error || Allocator.Error)![:0]u8 {
    var native: ?*c.msb_bytes = null;
    var err: ?*c.msb_error = null;
    try check(c.msb_sandbox_socket_path(name.ptr, &native, &err), err, diag);
    const path: Bytes = .{ .handle = native.? };
    defer path.deinit();
    return allocator.dupeSentinel(u8, path.slice(), 0);
}

pub const WriteFileOptions = struct {
    /// Permission bits, e.g. 0o644 (null: the guest's default).
    mode: ?u32 = null,
    /// Bounds the whole write.
    timeout: Timeout = .ms(60_000),
};

pub const EntryKind = enum { file, dir, symlink, other };

/// What `setStat` changes; fields left null stay as they are.
pub const SetAttrs = struct {
    /// Permission bits, within 0o7777.
    mode: ?u32 = null,
    /// The owner's user and group ids (`chown`), each on its own.
    uid: ?u32 = null,
    gid: ?u32 = null,
    /// The file is truncated, or extended with zeros, to this size.
    size: ?u64 = null,
    /// Access and modification times in Unix seconds, each on its own.
    atime: ?i64 = null,
    mtime: ?i64 = null,

    fn build(self: SetAttrs, diag: ?*Diagnostics) Error!*c.msb_fs_set_attrs {
        var native: ?*c.msb_fs_set_attrs = null;
        var err: ?*c.msb_error = null;
        try check(c.msb_fs_set_attrs_new(&native, &err), err, diag);
        errdefer c.msb_fs_set_attrs_free(native);
        if (self.mode) |mode| try check(c.msb_fs_set_attrs_mode(native, mode, &err), err, diag);
        if (self.uid) |uid| try check(c.msb_fs_set_attrs_uid(native, uid, &err), err, diag);
        if (self.gid) |gid| try check(c.msb_fs_set_attrs_gid(native, gid, &err), err, diag);
        if (self.size) |size| try check(c.msb_fs_set_attrs_size(native, size, &err), err, diag);
        if (self.atime) |atime| try check(c.msb_fs_set_attrs_atime(native, atime, &err), err, diag);
        if (self.mtime) |mtime| try check(c.msb_fs_set_attrs_mtime(native, mtime, &err), err, diag);
        return native.?;
    }
};

pub const SetStatOptions = struct {
    /// Change what a final symlink points at instead of the link.
    follow_symlink: bool = false,
    timeout: Timeout = .ms(10_000),
};

/// How `Client.openFile` opens a file.
pub const OpenOptions = struct {
    read: bool = false,
    write: bool = false,
    /// Every write goes to the end of the file, whatever its offset says.
    append: bool = false,
    /// Create the file if missing (with `write` or `append`).
    create: bool = false,
    /// Truncate to 0 bytes (with `write`).
    truncate: bool = false,
    /// Create the file; `error.PathAlreadyExists` if it exists.
    create_new: bool = false,
    /// Permission bits of a created file (null: the guest's default).
    mode: ?u32 = null,
    timeout: Timeout = .ms(10_000),

    fn flags(self: OpenOptions) u32 {
        var bits: u32 = 0;
        if (self.read) bits |= c.MSB_FILE_READ;
        if (self.write) bits |= c.MSB_FILE_WRITE;
        if (self.append) bits |= c.MSB_FILE_APPEND;
        if (self.create) bits |= c.MSB_FILE_CREATE;
        if (self.truncate) bits |= c.MSB_FILE_TRUNCATE;
        if (self.create_new) bits |= c.MSB_FILE_CREATE_NEW;
        return bits;
    }
};

/// Open guest handles one connection may hold (`Client.openFile`).
pub const file_handle_limit: u32 = c.MSB_FILE_HANDLE_LIMIT;

/// A guest file kept open through a handle (`Client.openFile`); the handle
/// belongs to the client connection and dies with it.
///
/// Thread safety: reads, writes and stats may run from several threads at
/// once (each is its own request). `close` waits for calls in progress,
/// then later calls fail with `error.WrongState`.
pub const File = struct {
    handle: *c.msb_file,

    /// Reads up to `buffer.len` bytes at `offset` into `buffer`; returns how
    /// many, fewer at the end of the file and 0 at or past it. Needs `read`.
    pub fn readAt(self: File, buffer: []u8, offset: u64, timeout: Timeout, diag: ?*Diagnostics) Error!usize {
        const data = try self.readAtBytes(offset, buffer.len, timeout, diag);
        defer data.deinit();
        const got = data.slice();
        @memcpy(buffer[0..got.len], got);
        return got.len;
    }

    /// Reads up to `len` bytes (at most 64 MiB) at `offset` into a library
    /// buffer, without copying; empty at or past the end of the file.
    pub fn readAtBytes(self: File, offset: u64, len: usize, timeout: Timeout, diag: ?*Diagnostics) Error!Bytes {
        var data: ?*c.msb_bytes = null;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_file_read_at(self.handle, offset, len, timeout.toMs(), &data, &err), err, diag);
        return .{ .handle = data.? };
    }

    /// Writes all of `data` at `offset` (at the end with `append`). Needs
    /// `write` or `append`.
    pub fn writeAt(self: File, data: []const u8, offset: u64, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_file_write_at(self.handle, offset, data.ptr, data.len, timeout.toMs(), &err), err, diag);
    }

    /// Metadata of the open file, its path copied into memory of `allocator`.
    pub fn stat(self: File, allocator: Allocator, timeout: Timeout, diag: ?*Diagnostics) (Error || Allocator.Error)!Entry {
        var entry: ?*c.msb_fs_entry = null;
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_file_fstat(self.handle, timeout.toMs(), &entry, &err), err, diag);
        return Entry.take(allocator, entry);
    }

    /// Changes the attributes `attrs` sets on the open file.
    pub fn setStat(self: File, attrs: SetAttrs, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        const native = try attrs.build(diag);
        defer c.msb_fs_set_attrs_free(native);
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_file_set_stat(self.handle, native, timeout.toMs(), &err), err, diag);
    }

    /// Closes the guest handle, waiting for the guest to confirm. The
    /// handle is given back even when this fails; a second close is
    /// `error.WrongState`. `deinit` is still required.
    pub fn close(self: File, timeout: Timeout, diag: ?*Diagnostics) Error!void {
        var err: ?*c.msb_error = null;
        try checkFs(c.msb_file_close(self.handle, timeout.toMs(), &err), err, diag);
    }

    /// Releases the file; still open, its handle is closed without waiting
    /// for the guest.
    pub fn deinit(self: File) void {
        c.msb_file_free(self.handle);
    }
};

/// Metadata of one file, directory or link; `path` belongs to the
/// allocator that produced the entry.
pub const Entry = struct {
    path: []u8,
    kind: EntryKind,
    size: u64,
    /// Including the file-type bits, e.g. 0o100644.
    mode: u32,
    /// Modification time in Unix seconds, if the guest reported one.
    mtime: ?i64,
    /// The owner's user and group ids. Legacy (0.3/0.4) relays do not
    /// report them: 0 there.
    uid: u32,
    gid: u32,
    /// Access time in Unix seconds, if the guest reported one (legacy
    /// relays never do).
    atime: ?i64,

    /// Copies an owned entry (from a stat call) and frees it.
    fn take(allocator: Allocator, owned: ?*c.msb_fs_entry) Allocator.Error!Entry {
        defer c.msb_fs_entry_free(owned);
        return copy(allocator, c.msb_fs_entry_as_view(owned).?);
    }

    /// `native` is a view: borrowed from a listing or from an owned entry.
    fn copy(allocator: Allocator, native: *const c.msb_fs_entry_view) Allocator.Error!Entry {
        var mtime: i64 = 0;
        const has_mtime = c.msb_fs_entry_mtime(native, &mtime);
        var atime: i64 = 0;
        const has_atime = c.msb_fs_entry_atime(native, &atime);
        return .{
            .uid = c.msb_fs_entry_uid(native),
            .gid = c.msb_fs_entry_gid(native),
            .atime = if (has_atime) atime else null,
            .path = try allocator.dupe(u8, std.mem.span(c.msb_fs_entry_path(native))),
            .kind = switch (c.msb_fs_entry_kind(native)) {
                c.MSB_FS_KIND_FILE => .file,
                c.MSB_FS_KIND_DIR => .dir,
                c.MSB_FS_KIND_SYMLINK => .symlink,
                else => .other,
            },
            .size = c.msb_fs_entry_size(native),
            .mode = c.msb_fs_entry_mode(native),
            .mtime = if (has_mtime) mtime else null,
        };
    }

    /// The last path component.
    pub fn name(self: Entry) []const u8 {
        return std.Io.Dir.path.basename(self.path);
    }

    pub fn deinit(self: Entry, allocator: Allocator) void {
        allocator.free(self.path);
    }
};

/// The result of `Client.list`, owned by the allocator passed to it.
pub const Listing = struct {
    entries: []Entry,

    /// The entry whose last path component is `name`, if any.
    pub fn find(self: Listing, name: []const u8) ?Entry {
        for (self.entries) |entry| {
            if (std.mem.eql(u8, entry.name(), name)) return entry;
        }
        return null;
    }

    pub fn deinit(self: Listing, allocator: Allocator) void {
        for (self.entries) |entry| entry.deinit(allocator);
        allocator.free(self.entries);
    }
};

test "every error status maps to its own error, unknown codes to Unexpected" {
    const expected = [_]struct { c.msb_status, Error }{
        .{ c.MSB_ERR_INVALID_ARGUMENT, error.InvalidArgument },
        .{ c.MSB_ERR_NULL_POINTER, error.NullPointer },
        .{ c.MSB_ERR_INVALID_UTF8, error.InvalidUtf8 },
        .{ c.MSB_ERR_TOO_LARGE, error.TooLarge },
        .{ c.MSB_ERR_NOT_FOUND, error.NotFound },
        .{ c.MSB_ERR_IO, error.Io },
        .{ c.MSB_ERR_TIMEOUT, error.Timeout },
        .{ c.MSB_ERR_HANDSHAKE, error.Handshake },
        .{ c.MSB_ERR_CLOSED, error.Closed },
        .{ c.MSB_ERR_PROTOCOL, error.Protocol },
        .{ c.MSB_ERR_ID_UNAVAILABLE, error.IdUnavailable },
        .{ c.MSB_ERR_GUEST, error.Guest },
        .{ c.MSB_ERR_PANIC, error.Panic },
        .{ c.MSB_ERR_WRONG_STATE, error.WrongState },
        .{ c.MSB_ERR_UNSUPPORTED, error.Unsupported },
        .{ c.MSB_ERR_RELAY_BUSY, error.RelayBusy },
        .{ c.MSB_ERR_IDS_EXHAUSTED, error.IdsExhausted },
        .{ c.MSB_ERR_EXEC_FAILED, error.ExecFailed },
        .{ c.MSB_ERR_AGENT, error.Agent },
        .{ c.MSB_ERR_PERMISSION, error.PermissionDenied },
        .{ c.MSB_ERR_EXISTS, error.PathAlreadyExists },
        .{ -22, error.StreamOverflow },
        .{ -1000, error.Unexpected },
    };
    for (expected) |pair| try std.testing.expectEqual(pair[1], errorFromStatus(pair[0]));
}

test "a guest file operation's NOT_FOUND is FileNotFound; other codes map as everywhere" {
    try std.testing.expectEqual(error.FileNotFound, fsErrorFromStatus(c.MSB_ERR_NOT_FOUND));
    try std.testing.expectEqual(error.PermissionDenied, fsErrorFromStatus(c.MSB_ERR_PERMISSION));
    try std.testing.expectEqual(error.Guest, fsErrorFromStatus(c.MSB_ERR_GUEST));
    var diag: Diagnostics = .{};
    defer diag.deinit();
    try std.testing.expectError(error.FileNotFound, checkFs(c.MSB_ERR_NOT_FOUND, null, &diag));
    try std.testing.expectEqual(@as(c.msb_status, c.MSB_ERR_NOT_FOUND), diag.code());
    try std.testing.expectError(error.NotFound, check(c.MSB_ERR_NOT_FOUND, null, &diag));
}

test "every new status the header defines has the library's own description" {
    // The library describes every code it can return; its generic text here
    // would mean the header and the library disagree.
    const unknown = std.mem.span(c.msb_status_str(-1000));
    var described: usize = 0;
    inline for (.{
        "MSB_ERR_UNSUPPORTED", "MSB_ERR_RELAY_BUSY", "MSB_ERR_IDS_EXHAUSTED", "MSB_ERR_EXEC_FAILED",
        "MSB_ERR_AGENT",       "MSB_ERR_PERMISSION", "MSB_ERR_EXISTS",        "MSB_ERR_STREAM_OVERFLOW",
    }) |name| {
        if (@hasDecl(c, name)) {
            try std.testing.expect(!std.mem.eql(u8, unknown, std.mem.span(c.msb_status_str(@field(c, name)))));
            described += 1;
        }
    }
    // Every code but STREAM_OVERFLOW came with the exports this binding
    // calls, so a header without them would not have compiled it.
    try std.testing.expect(described >= 7);
}

test "Diagnostics without a library error falls back to the status description" {
    var diag: Diagnostics = .{};
    defer diag.deinit();
    try std.testing.expectEqualStrings("", diag.message());
    try std.testing.expectError(error.Timeout, check(c.MSB_ERR_TIMEOUT, null, &diag));
    try std.testing.expectEqual(@as(c.msb_status, c.MSB_ERR_TIMEOUT), diag.code());
    try std.testing.expectEqualStrings(std.mem.span(c.msb_status_str(c.MSB_ERR_TIMEOUT)), diag.message());
}

test "Diagnostics keeps the library's message of a failing call" {
    var diag: Diagnostics = .{};
    defer diag.deinit();
    var request: ?*c.msb_exec_request = null;
    var err: ?*c.msb_error = null;
    const status = c.msb_exec_request_new("", &request, &err);
    try std.testing.expectError(error.InvalidArgument, check(status, err, &diag));
    try std.testing.expect(diag.err != null);
    try std.testing.expect(diag.message().len > 0);
}

test "version matches the header's version macros" {
    var buf: [32]u8 = undefined;
    const expected = try std.fmt.bufPrint(&buf, "{d}.{d}.{d}", .{ c.MSB_VERSION_MAJOR, c.MSB_VERSION_MINOR, c.MSB_VERSION_PATCH });
    try std.testing.expectEqualStrings(expected, version());
}

test "Timeout literals carry the library's millisecond values" {
    try std.testing.expectEqual(@as(i64, -1), Timeout.infinite.toMs());
    try std.testing.expectEqual(@as(i64, 0), Timeout.immediate.toMs());
    try std.testing.expectEqual(@as(i64, 2500), Timeout.ms(2500).toMs());
}
