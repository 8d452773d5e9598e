//! Command-line parsing. Hand-written to keep the dependency list short.

use std::path::PathBuf;

use microsandbox_agent::protocol::FS_CHUNK_SIZE;

use crate::fault::Fault;

pub const DEFAULT_EXEC_CHUNK: usize = 4096;

pub const HELP: &str = "\
msb-devrelay: development stand-in for a microsandbox agent relay + agentd

USAGE:
    msb-devrelay --socket PATH [--root DIR] [--fault MODE] [--exec-chunk BYTES] [--quiet]

WARNING: THERE IS NO ISOLATION. Every exec request runs as a real process on
this host, with the relay's own privileges, environment and filesystem. Use it
only for tests, demos and benchmarks of client code, never with untrusted
requests.

It serves the microsandbox 0.3.14 agent-relay protocol (the handshake, up to 16
clients with their own id ranges, exec and fs sessions) exactly as a sandbox's
agent.sock does, and carries the requests out itself.

OPTIONS:
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
    the exec is refused with a core.exec.stderr message and exit code -1.
    An unknown rlimit name or an env entry without '=' is refused the same
    way; a command that cannot be spawned gets core.exec.exited {code: -1}
    alone. With tty: true, empty stdin data types ^D (a pty cannot be
    half-closed). Stdin for one exec is queued up to 16 MiB; beyond that the
    relay stops reading that client's socket until the process drains it.

FS:
    Requests see --root as \"/\". Read streams core.fs.data chunks of at most
    2 MiB, then core.fs.response; Write buffers incoming chunks (flushing to
    disk every 8 MiB) and answers after the empty end-of-data chunk. Errors
    are ok:false with the io error and the guest path.

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
                         id_offset + 268435455 + 1 (wrapping), then one with
                         id 0
    wrong-payload        answer an exec with core.exec.started {pid: 0} then a
                         core.exec.stdout with payload {} (no data); answer an
                         fs request with a core.fs.response {\"ok\": \"yes\"};
                         nothing is run
    no-handshake         accept and never send anything (connection stays
                         open)
    stall-after-id       send the 4-byte id_offset only, then stall
    not-ready-first      send id_offset, then a core.exec.stdout frame
                         instead of core.ready; keep open
    close-in-handshake   send id_offset and half of the ready frame, then
                         close
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
        root,
        fault,
        exec_chunk,
        quiet,
    }))
}
