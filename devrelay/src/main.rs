//! `msb-devrelay`: a development stand-in for a microsandbox VM's agent
//! relay and agentd.
//!
//! It serves the agent-relay protocol of a chosen microsandbox release
//! (0.3.14, 0.6.14 or 0.7.13; `profile.rs`) on a Unix socket, including what
//! that release's relay and agentd refuse, and carries out exec, filesystem
//! and TCP requests itself, **on the
//! host, with no isolation whatsoever**: an exec request runs a real host
//! process with the relay's privileges. Only fs requests are confined, to a
//! root directory, and only by path checks. It exists so that the client
//! library's tests, demo and benchmarks have a real protocol peer without a
//! VM; never expose it to requests you would not run in your own shell.

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

mod cli;
mod conn;
mod exec;
mod fault;
mod flow;
mod fs;
mod fs2;
mod outbox;
mod platform;
mod profile;
mod rules;
mod tcp;
mod wire;

use conn::Ending;
use microsandbox_agent::protocol::payload::ExecLimits;
use profile::Profile;

static QUIET: AtomicBool = AtomicBool::new(false);

/// Logs a line to stderr unless `--quiet`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        if !$crate::QUIET.load(::std::sync::atomic::Ordering::Relaxed) {
            eprintln!("msb-devrelay: {}", format_args!($($arg)*));
        }
    };
}

/// How long `core.shutdown` lets SIGTERMed execs take before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let process_start = Instant::now();
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Parsed::Run(o)) => o,
        Ok(cli::Parsed::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("msb-devrelay: {message}\n(see msb-devrelay --help)");
            return ExitCode::from(2);
        }
    };
    QUIET.store(options.quiet, Ordering::Relaxed);
    match run(options, process_start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("msb-devrelay: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The root directory and whether we own it (and so remove it on exit).
struct Root {
    path: PathBuf,
    temporary: bool,
}

impl Drop for Root {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes the socket file when the relay ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(options: cli::Options, process_start: Instant) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // The ready payload reports real milestones of this process, each in
    // nanoseconds since it started: runtime up ("boot"), root directory
    // prepared ("init"), socket listening ("ready").
    let boot_time_ns = process_start.elapsed().as_nanos() as u64;

    let root = match &options.root {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create root {}: {e}", dir.display()))?;
            Root {
                path: dir.clone(),
                temporary: false,
            }
        }
        None => Root {
            path: make_temp_dir().map_err(|e| format!("cannot create a temporary root: {e}"))?,
            temporary: true,
        },
    };
    let guest_fs = fs::GuestFs::new(&root.path)
        .map_err(|e| format!("cannot open root {}: {e}", root.path.display()))?;
    let init_time_ns = process_start.elapsed().as_nanos() as u64;

    let std_listener = bind_socket(&options.socket)?;
    let socket_file = SocketFile(options.socket.clone());
    let ready_time_ns = process_start.elapsed().as_nanos() as u64;

    let (ending_tx, ending_rx) = mpsc::unbounded_channel();
    let profile = options.profile;
    // The out-of-band exec control route 0.7.13 advertises; nothing serves
    // it here, and clients treat it as optional.
    let control_endpoint = options.socket.with_extension("control.sock");
    let relay = Arc::new(conn::Relay {
        fs: guest_fs,
        fault: options.fault,
        exec_chunk: options.exec_chunk,
        processes: Arc::default(),
        profile,
        ready_payload: profile.ready_payload(
            [boot_time_ns, init_time_ns, ready_time_ns],
            &control_endpoint.to_string_lossy(),
        ),
        ending: ending_tx,
        handles: Arc::default(),
        admission: flow::Admission::new(ExecLimits::default().max_executions),
        activity_seq: Default::default(),
    });

    let result = runtime.block_on(async {
        let listener = UnixListener::from_std(std_listener)
            .map_err(|e| format!("cannot register the socket: {e}"))?;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "msb-devrelay listening on {}",
            options.socket.display()
        )
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
        log!("imitating microsandbox {}", profile.name());
        if let Some(fault) = options.fault {
            log!("fault mode {} is active", fault.name());
        }
        serve(listener, relay, ending_rx).await
    });
    drop(socket_file);
    drop(root);
    // Do not wait for tasks stuck on clients that never read: we are done.
    runtime.shutdown_background();
    result
}

fn make_temp_dir() -> std::io::Result<PathBuf> {
    let template = std::env::temp_dir().join("msb-devrelay-root.XXXXXX");
    let mut bytes = std::ffi::CString::new(template.into_os_string().into_encoded_bytes())
        .map_err(|_| std::io::Error::other("temporary directory path contains NUL"))?
        .into_bytes_with_nul();
    // SAFETY: `bytes` is a writable NUL-terminated template ending in XXXXXX,
    // which mkdtemp rewrites in place.
    if unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) }.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

use std::os::unix::ffi::OsStringExt;

fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?,
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ))
        }
        Err(_) => {}
    }
    // The socket is created with mode 0600 by narrowing the umask around
    // bind: chmod afterwards would leave a window where others can connect.
    // No other thread creates files at this point.
    // SAFETY: umask only swaps the process's file mode mask.
    let previous = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the mask we found.
    unsafe { libc::umask(previous) };
    let listener = bound.map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure the socket: {e}"))?;
    Ok(listener)
}

/// The client slots (16 or 128); a connection gets the lowest free one.
struct Slots {
    taken: Mutex<u128>,
    count: u32,
}

/// Frees its slot when the connection ends.
struct SlotGuard {
    slots: Arc<Slots>,
    slot: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.slots.taken.lock().unwrap() &= !(1 << self.slot);
    }
}

impl Slots {
    fn new(profile: Profile) -> Arc<Slots> {
        Arc::new(Slots {
            taken: Mutex::new(0),
            count: profile.max_clients(),
        })
    }

    fn acquire(self: &Arc<Self>) -> Option<SlotGuard> {
        let mut taken = self.taken.lock().unwrap();
        let slot = (0..self.count).find(|k| *taken & (1 << k) == 0)?;
        *taken |= 1 << slot;
        Some(SlotGuard {
            slots: self.clone(),
            slot,
        })
    }
}

async fn serve(
    listener: UnixListener,
    relay: Arc<conn::Relay>,
    mut ending: mpsc::UnboundedReceiver<Ending>,
) -> Result<(), String> {
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot catch SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot catch SIGINT: {e}"))?;
    let slots = Slots::new(relay.profile);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.acquire() {
                    Some(guard) => {
                        let relay = relay.clone();
                        tokio::spawn(async move {
                            conn::serve(relay, stream, guard.slot).await;
                            drop(guard);
                        });
                    }
                    None => {
                        log!("all {} client slots are taken; closing a new connection", slots.count);
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Typically out of file descriptors: let some close.
                    log!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = sigterm.recv() => {
                log!("SIGTERM: killing running execs and exiting");
                relay.processes.signal_all(libc::SIGKILL);
                return Ok(());
            }
            _ = sigint.recv() => {
                log!("SIGINT: killing running execs and exiting");
                relay.processes.signal_all(libc::SIGKILL);
                return Ok(());
            }
            end = ending.recv() => {
                if let Some(Ending::AgentDied(why)) = end {
                    relay.processes.signal_all(libc::SIGKILL);
                    return Err(format!("the sandbox died: {why}"));
                }
                relay.processes.signal_all(libc::SIGTERM);
                let deadline = Instant::now() + SHUTDOWN_GRACE;
                while relay.processes.running() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                relay.processes.signal_all(libc::SIGKILL);
                return Ok(());
            }
        }
    }
}
