//! Command-line parsing. Hand-written to keep the dependency list short.

use std::path::PathBuf;

use microsandbox_agent::protocol::FS_CHUNK_SIZE;

use crate::fault::Fault;
use crate::profile::{self, Profile};

pub const DEFAULT_EXEC_CHUNK: usize = 4096;

pub const HELP: &str = "\
msb-devrelay: development stand-in for a microsandbox agent relay + agentd

USAGE:
    msb-devrelay --socket PATH [--profile VERSION] [--root DIR] [--fault MODE]
                 [--exec-chunk BYTES] [--quiet]

WARNING: THERE IS NO ISOLATION. Every exec request runs as a real process on
this host, with the relay's own privileges, environment and filesystem. Use it
only for tests, demos and benchmarks of client code, never with untrusted
requests.

It serves the agent-relay protocol of one microsandbox release (--profile)
as a sandbox's agent.sock does, including what that release's relay and
agentd refuse, and carries the requests out itself.

PROFILES:
    0.3.14   legacy handshake [id_offset][ready v=1], 16 slots; path-based fs
             (Read/Write by path); spawn failure = core.exec.exited {-1};
             ids unchecked. Unknown types and undecodable payloads kill agentd.
    0.6.14   handshake [id_start][id_end_exclusive][ready v=7], 128 slots;
             handle-based fs (OpenFile/Read/Write/ReadDir/...; 1024 handles per
             client); core.exec.failed and core.exec.stdin.error; core.tcp.*
             (connects from the host); core.error for wrong flags or payloads
             in frames with v >= 5 (older frames kill agentd); ping/touch.
             The relay disconnects a client that uses an id outside its range.
    0.7.13   (default) as 0.6.14 with ready v=10 (indefinite-length map with
             local_transport, exec_limits, exec_control). The relay also
             disconnects on a flags byte outside {0,1,2,4,8}, a body that is
             not a map with one text t (or has trailing bytes), a control.*
             type, a reused request id, and a socket that takes no bytes for
             5 s. Exec requests stamped v >= 10 get flow control: output
             charged len+256 against 1 MiB until core.exec.output.ack, the exit
             code held until all output is acked, stdin only between started
             and EOF in chunks <= 16 KiB with <= 64 KiB unacked (acked with
             core.exec.stdin.ack), at most 128 such execs at once.
    When agentd would exit (unknown type, broken envelope, ...) the devrelay
    kills every process, closes every connection and exits with status 1.
    Raw bulk (generation 8) is not served: an fs request with a bulk offer is
    answered ok:false.

OPTIONS:
    --profile VERSION    Release to imitate: 0.3.14, 0.6.14 or 0.7.13 (default).
    --socket PATH        Unix socket to listen on (required). A stale socket
                         file at PATH is removed first; the socket is created
                         with mode 0600 and removed on exit.
    --root DIR           Directory that fs requests see as \"/\" (created if
                         missing, kept on exit). Default: a fresh temporary
                         directory, removed on exit. Paths that would leave it
                         (\"..\" components, symlinks resolving outside) are
                         refused with ok:false.
    --fault MODE         Misbehave on purpose, on every connection (see below).
    --exec-chunk BYTES   Largest read from an exec's stdout/stderr, hence the
                         largest core.exec.stdout/stderr data (default 4096,
                         like the real agent; at most 3145728).
    --quiet              Log nothing to stderr.
    -h, --help           Show this help.

When ready it prints exactly one line to stdout and flushes it:
    msb-devrelay listening on PATH
SIGTERM and SIGINT kill running execs and exit cleanly; core.shutdown from a
client sends SIGTERM to every running exec, waits up to 2 s for them
(SIGKILL after that) and exits 0.

EXEC:
    Commands run in the HOST's filesystem: `cwd` is a host path, and so is
    every path a command touches; --root does not apply to exec. `env`
    entries (K=V) are added to the relay's own environment. Each exec gets
    its own process group (its own session when tty is true); a client that
    disconnects has its running execs' groups SIGKILLed. `user` is honoured
    (setgid/setuid via getpwnam) only when the relay runs as root; otherwise
    the exec is refused (0.3.14: a core.exec.stderr message and exit code
    -1; later: core.exec.failed {kind: user_setup_failed}). An unknown rlimit
    name, one this host lacks (the Linux-only ones on macOS and FreeBSD), or
    an env entry without '=' is refused the same way (kind bad_args);
    a command that cannot be spawned gets core.exec.exited {code: -1} alone
    (0.3.14) or core.exec.failed with the errno (later). With tty: true, empty stdin data types ^D (a pty cannot be
    half-closed). Stdin for one exec is queued up to 16 MiB; beyond that the
    relay stops reading that client's socket until the process drains it.

FS:
    Requests see --root as \"/\". Read streams core.fs.data chunks of at most
    2 MiB, then core.fs.response; Write takes incoming chunks and answers
    after the empty end-of-data chunk. Errors are ok:false with the io error
    (0.3.14: and the guest path; later: after agentd's prefix such as
    \"open: \" or \"stat: \").

TCP (0.6.14, 0.7.13):
    core.tcp.connect opens a TCP connection from this host (30 s timeout).

FAULT MODES (each applies to every client connection, after a normal
handshake unless stated):
    oversize-frame       send a frame header announcing len = 4 MiB + 1 and
                         16 bytes of it, then keep the connection open
    truncated-frame      send the first half of a valid core.exec.stdout
                         frame, then close
    short-frame          send a frame with len = 3 (and 3 bytes), keep open
    bad-cbor             send a frame (id 0) whose body is ff ff ff, keep open
    bad-body-shape       send a frame (id 0) whose body is valid CBOR but an
                         array, not the {v,t,p} map; keep open
    unknown-type         before serving each exec/fs request, send a
                         core.bogus.type frame (empty payload) with its id
    out-of-range-id      before serving each request, send a core.exec.stdout
                         (exec) or core.fs.response (fs) frame with id
                         id_end_exclusive + 1 (wrapping), then one with id 0
    wrong-payload        answer an exec with core.exec.started {pid: 0} then a
                         core.exec.stdout with payload {} (no data); answer an
                         fs request with a core.fs.response {\"ok\": \"yes\"};
                         nothing is run
    no-handshake         accept and never send anything (connection stays
                         open)
    stall-after-id       send the id prologue only (4 bytes id_offset, or 8
                         bytes id_start/id_end_exclusive), then stall
    not-ready-first      send the id prologue, then a core.exec.stdout frame
                         instead of core.ready; keep open
    close-in-handshake   send the id prologue and half of the ready frame,
                         then close
    close-mid-exec       answer an exec with core.exec.started {pid: 0} and
                         one core.exec.stdout frame, then close
    flood                answer an exec with core.exec.started {pid: 0}, then
                         64 KiB core.exec.stdout frames as fast as the socket
                         takes them, until the client disconnects; each
                         frame's data is its sequence number (u64 big-endian,
                         from 0) followed by 'f' bytes
    stop-reading         after the handshake never read from the client again
                         (the connection stays open until the client leaves)
Where a fault keeps a connection open without serving it, input is read and
discarded (except for stop-reading) so that a disconnect frees the slot.
";

#[derive(Debug)]
pub struct Options {
    pub socket: PathBuf,
    pub profile: Profile,
    pub root: Option<PathBuf>,
    pub fault: Option<Fault>,
    pub exec_chunk: usize,
    pub quiet: bool,
}

pub enum Parsed {
    Run(Options),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut socket = None;
    let mut root = None;
    let mut fault = None;
    let mut exec_chunk = DEFAULT_EXEC_CHUNK;
    let mut quiet = false;
    let mut profile = profile::DEFAULT;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline_value
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--quiet" => quiet = true,
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--profile" => {
                let name = value("--profile")?;
                profile = Profile::from_name(&name).ok_or_else(|| {
                    format!(
                        "unknown profile {name:?}; known: {}",
                        Profile::NAMES.join(", ")
                    )
                })?;
            }
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--fault" => {
                let mode = value("--fault")?;
                fault = Some(Fault::from_name(&mode).ok_or_else(|| {
                    format!(
                        "unknown fault mode {mode:?}; known: {}",
                        Fault::NAMES.join(", ")
                    )
                })?);
            }
            "--exec-chunk" => {
                let raw = value("--exec-chunk")?;
                exec_chunk = raw
                    .parse()
                    .ok()
                    .filter(|n| (1..=FS_CHUNK_SIZE).contains(n))
                    .ok_or_else(|| {
                        format!("--exec-chunk wants 1..={FS_CHUNK_SIZE} bytes, got {raw:?}")
                    })?;
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let socket = socket.ok_or("--socket PATH is required")?;
    Ok(Parsed::Run(Options {
        socket,
        profile,
        root,
        fault,
        exec_chunk,
        quiet,
    }))
}
