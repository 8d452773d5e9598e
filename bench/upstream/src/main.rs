//! The benchmark's upstream peer: `microsandbox-agent-client` 0.7.13, the
//! agent client of the microsandbox release the devrelay's default profile
//! imitates, doing exactly the work `examples/c/bench.c` gives the library
//! and its raw baseline, through that crate's public API:
//!
//! - `roundtrip`: the same `core.fs.request` Stat of "/" (with
//!   `follow_symlink: false`), one task after another, or `--threads` tasks
//!   sharing one client on a multi-threaded runtime;
//! - `stream`: `sh -c CMD` with `B=<bytes>`, reading stdout to the exit code
//!   and, when the sandbox does flow control (generation 10 and an
//!   `exec_limits` policy in `core.ready`), acknowledging consumed output
//!   through the crate's `OutputAcknowledgements`, as the crate's own SDK does;
//! - `connect`: connect, handshake and close, `--connects` times.
//!
//! It prints the same rows as the C bench (a table, or JSON lines with
//! `--json`) with `client = upstream`. `bench.c --upstream PATH` runs it once
//! per run, between the library's and the baseline's runs, and reads its JSON.
//!
//! It connects through the crate's byte-stream entry (`connect_stream` on a
//! Unix socket) rather than `connect(path)`: the latter first offers the
//! shared-memory upgrade of 0.7 relays, which the devrelay does not serve,
//! and would reconnect after that refusal on every connection. Neither path
//! changes how requests, streams or acknowledgements travel.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use microsandbox_agent_client::{AgentClientError, OptimizedAgentClient, OutputAcknowledgements};
use microsandbox_protocol::exec::{ExecExited, ExecFailed, ExecOutputAck, ExecRequest, ExecStdout};
use microsandbox_protocol::fs::{FsOp, FsRequest, FsResponse};
use microsandbox_protocol::message::{Message, MessageType, FLAG_TERMINAL};
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

const HELP: &str = "\
usage: msb-bench-upstream --socket PATH --bench roundtrip|stream|connect [OPTIONS]
  --threads C        tasks sharing one client for roundtrip (default 1)
  --requests N       round trips per run (default 100000)
  --stream-cmd CMD   shell command whose stdout is streamed; $B is --stream-bytes
                     (default: head -c $B /dev/zero)
  --stream-bytes B   stream volume (default 1073741824)
  --connects N       connections per run (default 1000)
  --runs N           runs; medians are reported (default 1)
  --json             one JSON line per measurement on stdout
";

/// The deadline of one connection's handshake, as the crate's own default.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests made before a round-trip measurement starts.
const WARM_UP_REQUESTS: usize = 500;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bench {
    Roundtrip,
    Stream,
    Connect,
}

impl Bench {
    fn name(self) -> &'static str {
        match self {
            Bench::Roundtrip => "roundtrip",
            Bench::Stream => "stream",
            Bench::Connect => "connect",
        }
    }
}

struct Options {
    socket: String,
    bench: Bench,
    threads: usize,
    requests: usize,
    stream_cmd: String,
    stream_bytes: u64,
    connects: usize,
    runs: usize,
    json: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut socket = None;
    let mut bench = None;
    let mut options = Options {
        socket: String::new(),
        bench: Bench::Roundtrip,
        threads: 1,
        requests: 100_000,
        stream_cmd: "head -c $B /dev/zero".into(),
        stream_bytes: 1 << 30,
        connects: 1000,
        runs: 1,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--json" {
            options.json = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            print!("{HELP}");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let positive = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag} wants a positive integer, got '{v}'"))
        };
        match flag.as_str() {
            "--socket" => socket = Some(value),
            "--bench" => {
                bench = Some(match value.as_str() {
                    "roundtrip" => Bench::Roundtrip,
                    "stream" => Bench::Stream,
                    "connect" => Bench::Connect,
                    other => return Err(format!("unknown bench '{other}'")),
                })
            }
            "--threads" => options.threads = positive(&value)? as usize,
            "--requests" => options.requests = positive(&value)? as usize,
            "--stream-cmd" => options.stream_cmd = value,
            "--stream-bytes" => options.stream_bytes = positive(&value)?,
            "--connects" => options.connects = positive(&value)? as usize,
            "--runs" => options.runs = positive(&value)? as usize,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    options.socket = socket.ok_or("--socket is required")?;
    options.bench = bench.ok_or("--bench is required")?;
    Ok(options)
}

/// One run's figures; the fields a bench does not measure stay `None`.
#[derive(Default, Clone, Copy)]
struct Sample {
    req_per_s: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    mb_per_s: Option<f64>,
    cpu_s: f64,
}

/// CPU seconds of the whole process, every thread, user and system.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

async fn connect(socket: &str) -> Result<OptimizedAgentClient, AgentClientError> {
    let stream = UnixStream::connect(socket).await?;
    OptimizedAgentClient::connect_stream_with_timeout(stream, HANDSHAKE_TIMEOUT).await
}

/// The Stat every round trip sends: the root, not following symlinks, as
/// the library and the baseline ask for it.
fn stat_root() -> FsRequest {
    FsRequest {
        op: FsOp::Stat {
            path: "/".into(),
            follow_symlink: false,
        },
        bulk: None,
    }
}

async fn stat_once(client: &OptimizedAgentClient, request: &FsRequest) -> Result<(), String> {
    let reply = client
        .request(MessageType::FsRequest, request)
        .await
        .map_err(|e| format!("Stat request failed: {e}"))?;
    if reply.t != MessageType::FsResponse || reply.flags & FLAG_TERMINAL == 0 {
        return Err(format!("Stat answered with {}", reply.t.as_str()));
    }
    let response: FsResponse = reply.payload().map_err(|e| format!("Stat reply: {e}"))?;
    if !response.ok {
        return Err(format!(
            "Stat \"/\" failed in the guest: {:?}",
            response.error
        ));
    }
    Ok(())
}

fn percentile_us(sorted_ns: &[u64], fraction: f64) -> f64 {
    let index = ((sorted_ns.len() as f64 * fraction) as usize).min(sorted_ns.len() - 1);
    sorted_ns[index] as f64 / 1e3
}

async fn roundtrip(client: Arc<OptimizedAgentClient>, options: &Options) -> Result<Sample, String> {
    let tasks = options.threads;
    let request = Arc::new(stat_root());
    let cpu0 = process_cpu_s();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for index in 0..tasks {
        let count = options.requests / tasks + usize::from(index < options.requests % tasks);
        let client = client.clone();
        let request = request.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for _ in 0..count {
                let start = Instant::now();
                stat_once(&client, &request).await?;
                latencies.push(start.elapsed().as_nanos() as u64);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(options.requests);
    for handle in handles {
        latencies.extend(
            handle
                .await
                .map_err(|e| format!("round-trip task: {e}"))??,
        );
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = process_cpu_s() - cpu0;
    latencies.sort_unstable();
    Ok(Sample {
        req_per_s: Some(options.requests as f64 / elapsed),
        p50_us: Some(percentile_us(&latencies, 0.5)),
        p99_us: Some(percentile_us(&latencies, 0.99)),
        mb_per_s: None,
        cpu_s,
    })
}

async fn stream(client: Arc<OptimizedAgentClient>, options: &Options) -> Result<Sample, String> {
    let request = ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), options.stream_cmd.clone()],
        env: vec![format!("B={}", options.stream_bytes)],
        cwd: None,
        user: None,
        tty: false,
        rows: 24,
        cols: 80,
        rlimits: Vec::new(),
    };
    // The crate's SDK acknowledges output exactly when the sandbox enforces
    // a window: an exec_limits policy and a generation that has the ack.
    let ready = client.ready().map_err(|e| format!("ready payload: {e}"))?;
    let controlled = ready.exec_limits.is_some() && client.supports(MessageType::ExecOutputAck);

    let cpu0 = process_cpu_s();
    let t0 = Instant::now();
    let (id, mut messages) = client
        .stream(MessageType::ExecRequest, &request)
        .await
        .map_err(|e| format!("exec request failed: {e}"))?;
    let (consumed, sender) = if controlled {
        let acknowledgements = OutputAcknowledgements::default();
        let consumed = acknowledgements.consumed.clone();
        let acking = client.clone();
        let sender = tokio::spawn(acknowledgements.run(move |ack: ExecOutputAck| {
            let client = acking.clone();
            async move { client.send(id, MessageType::ExecOutputAck, &ack).await }
        }));
        (Some(consumed), Some(sender))
    } else {
        (None, None)
    };
    let mut bytes = 0u64;
    let mut code = None;
    while let Some(message) = messages.recv().await {
        match message.t {
            MessageType::ExecStdout | MessageType::ExecStderr => {
                let len = payload::<ExecStdout>(&message)?.data.len();
                if message.t == MessageType::ExecStdout {
                    bytes += len as u64;
                }
                if let Some(consumed) = &consumed {
                    consumed.send_modify(|ack| {
                        ack.consume(len);
                    });
                }
            }
            MessageType::ExecExited => {
                code = Some(payload::<ExecExited>(&message)?.code);
                break;
            }
            MessageType::ExecFailed => {
                let failed = payload::<ExecFailed>(&message)?;
                return Err(format!(
                    "the stream command could not start: {}",
                    failed.message
                ));
            }
            _ => {}
        }
    }
    drop(consumed);
    if let Some(sender) = sender {
        sender
            .await
            .map_err(|e| format!("acknowledgement task: {e}"))?
            .map_err(|e| format!("acknowledgement failed: {e}"))?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = process_cpu_s() - cpu0;
    match code {
        Some(0) => {}
        Some(other) => return Err(format!("the stream command exited with {other}")),
        None => return Err("the exec stream ended without an exit code".into()),
    }
    if bytes != options.stream_bytes {
        eprintln!(
            "msb-bench-upstream: note: received {bytes} stdout bytes, --stream-bytes is {}",
            options.stream_bytes
        );
    }
    Ok(Sample {
        mb_per_s: Some(bytes as f64 / 1e6 / elapsed),
        cpu_s,
        ..Sample::default()
    })
}

fn payload<T: DeserializeOwned>(message: &Message) -> Result<T, String> {
    message
        .payload()
        .map_err(|e| format!("{} payload: {e}", message.t.as_str()))
}

async fn connect_bench(options: &Options) -> Result<Sample, String> {
    let cpu0 = process_cpu_s();
    let t0 = Instant::now();
    let mut done = 0;
    while done < options.connects {
        match connect(&options.socket).await {
            Ok(client) => {
                client.close().await;
                done += 1;
            }
            // A legacy relay's 16 slots can all be taken for a moment: it
            // has not seen the previous close yet. Any other failure is real.
            Err(e) if is_relay_busy(&e) => tokio::task::yield_now().await,
            Err(e) => return Err(format!("connect failed: {e}")),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Ok(Sample {
        req_per_s: Some(options.connects as f64 / elapsed),
        cpu_s: process_cpu_s() - cpu0,
        ..Sample::default()
    })
}

/// EOF before the first handshake byte: the relay accepted and dropped us.
fn is_relay_busy(error: &AgentClientError) -> bool {
    error.to_string().contains("early eof")
}

async fn run(options: &Options) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::with_capacity(options.runs);
    if options.bench == Bench::Connect {
        for _ in 0..options.runs {
            samples.push(connect_bench(options).await?);
        }
        return Ok(samples);
    }
    let client = Arc::new(
        connect(&options.socket)
            .await
            .map_err(|e| format!("connect to {} failed: {e}", options.socket))?,
    );
    if options.bench == Bench::Roundtrip {
        if !client.supports(MessageType::FsRequest) {
            return Err(format!(
                "microsandbox-agent-client refuses core.fs.request at generation {}",
                client.negotiated_version()
            ));
        }
        let request = stat_root();
        for _ in 0..WARM_UP_REQUESTS.min(options.requests) {
            stat_once(&client, &request).await?;
        }
    }
    for _ in 0..options.runs {
        samples.push(match options.bench {
            Bench::Roundtrip => roundtrip(client.clone(), options).await?,
            Bench::Stream => stream(client.clone(), options).await?,
            Bench::Connect => unreachable!("handled above"),
        });
    }
    Ok(samples)
}

fn median(samples: &[Sample], field: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = samples.iter().filter_map(field).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn report(options: &Options, samples: &[Sample]) {
    let req = median(samples, |s| s.req_per_s);
    let p50 = median(samples, |s| s.p50_us);
    let p99 = median(samples, |s| s.p99_us);
    let mb = median(samples, |s| s.mb_per_s);
    let cpu = median(samples, |s| Some(s.cpu_s)).unwrap_or(0.0);
    let threads = if options.bench == Bench::Roundtrip {
        options.threads
    } else {
        1
    };
    if options.json {
        let mut line = format!(
            "{{\"bench\": \"{}\", \"client\": \"upstream\", \"threads\": {threads}",
            options.bench.name()
        );
        if let Some(v) = req {
            line += &format!(", \"req_per_s\": {v:.1}");
        }
        if let (Some(a), Some(b)) = (p50, p99) {
            line += &format!(", \"p50_us\": {a:.2}, \"p99_us\": {b:.2}");
        }
        if let Some(v) = mb {
            line += &format!(", \"mb_per_s\": {v:.1}");
        }
        line += &format!(", \"cpu_s\": {cpu:.3}}}");
        println!("{line}");
        return;
    }
    let cell =
        |v: Option<f64>, decimals: usize| v.map_or("-".to_string(), |v| format!("{v:.decimals$}"));
    println!(
        "{:<12} {:<13} {:>4} {:>11} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "bench", "client", "thr", "req/s", "p50 us", "p99 us", "MB/s", "CPU s", "ratio"
    );
    println!(
        "{:<12} {:<13} {:>4} {:>11} {:>9} {:>9} {:>9} {:>8.3} {:>7}",
        options.bench.name(),
        "upstream",
        threads,
        cell(req, 0),
        cell(p50, 1),
        cell(p99, 1),
        cell(mb, 0),
        cpu,
        "-"
    );
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprint!("msb-bench-upstream: {message}\n{HELP}");
            return ExitCode::from(2);
        }
    };
    // The multi-threaded runtime with one worker per CPU, as applications
    // using the crate's SDK get from #[tokio::main].
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("msb-bench-upstream: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(samples) => {
            report(&options, &samples);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("msb-bench-upstream: {}: {message}", options.bench.name());
            ExitCode::FAILURE
        }
    }
}
