//! Exec sessions against real host processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use microsandbox_agent::protocol::payload::{
    Data, ExecFailureKind, ExecResize, ExecSignal, ExecStarted, Payload, Rlimit,
};

/// Why an exec was refused: its stderr (0.3.14) or its failure message.
fn refusal_text(out: &ExecOutcome) -> String {
    match &out.failed {
        Some(failed) => failed.message.clone(),
        None => out.stderr_text(),
    }
}
use microsandbox_agent::protocol::MessageType;

fn echo_reports_started_stdout_and_exit_code(profile: &str) {
    let relay = Relay::start_profile("echo", profile, &[]);
    let mut c = relay.connect();
    let out = c.exec(&exec_req("echo", &["hello", "world"]));
    assert_eq!(out.sequence.first(), Some(&MessageType::ExecStarted));
    assert_eq!(out.sequence.last(), Some(&MessageType::ExecExited));
    assert!(out.pid.unwrap() > 1);
    assert_eq!(out.stdout_text(), "hello world\n");
    assert_eq!(out.stderr, b"");
    assert_eq!(out.code, 0);
}

fn stderr_and_nonzero_exit(profile: &str) {
    let relay = Relay::start_profile("stderr", profile, &[]);
    let mut c = relay.connect();
    let out = c.exec(&sh("echo oops >&2; echo fine; exit 7"));
    assert_eq!(out.stderr_text(), "oops\n");
    assert_eq!(out.stdout_text(), "fine\n");
    assert_eq!(out.code, 7);
}

fn env_cwd_and_args_are_applied(profile: &str) {
    let relay = Relay::start_profile("envcwd", profile, &[]);
    let mut c = relay.connect();
    let mut req = exec_req(
        "sh",
        &["-c", "echo \"$GREETING|$(pwd)|$0|$1\"", "zero", "one two"],
    );
    req.env = vec!["GREETING=hi=there".into()];
    let cwd = relay.dir.path().canonicalize().unwrap();
    req.cwd = Some(cwd.to_string_lossy().into_owned());
    let out = c.exec(&req);
    assert_eq!(
        out.stdout_text(),
        format!("hi=there|{}|zero|one two\n", cwd.display())
    );
    // The relay's own environment is inherited too.
    let out = c.exec(&sh("test -n \"$PATH\" && echo has-path"));
    assert_eq!(out.stdout_text(), "has-path\n");
    // An entry that is not K=V refuses the exec instead of guessing.
    let mut req = exec_req("true", &[]);
    req.env = vec!["NOEQUALS".into()];
    let out = c.exec(&req);
    assert_eq!(out.pid, None);
    assert_eq!(out.code, -1);
    assert!(refusal_text(&out).contains("NOEQUALS"));
}

fn spawn_failures_exit_minus_one_without_started(profile: &str) {
    let relay = Relay::start_profile("nospawn", profile, &["--quiet"]);
    let mut c = relay.connect();
    let mut req = exec_req("true", &[]);
    req.cwd = Some("/definitely/not/a/dir".into());
    for req in [exec_req("/definitely/not/a/command", &[]), req] {
        let out = c.exec(&req);
        assert_eq!(out.code, -1);
        if profile == "0.3.14" {
            // 0.3.14 predates core.exec.failed.
            assert_eq!(out.sequence, vec![MessageType::ExecExited]);
            continue;
        }
        assert_eq!(out.sequence, vec![MessageType::ExecFailed]);
        let failed = out.failed.unwrap();
        assert_eq!(failed.kind, ExecFailureKind::NotFound);
        assert_eq!(failed.errno, Some(libc::ENOENT));
        assert_eq!(failed.errno_name.as_deref(), Some("ENOENT"));
        assert_eq!(failed.stage.as_deref(), Some("Command::spawn"));
        assert!(failed.message.starts_with("spawn \""), "{}", failed.message);
    }
}

fn death_by_signal_is_minus_one(profile: &str) {
    let relay = Relay::start_profile("sigdeath", profile, &[]);
    let mut c = relay.connect();
    let out = c.exec(&sh("kill -9 $$"));
    assert!(out.pid.is_some());
    assert_eq!(out.code, -1);
}

fn signal_request_is_delivered(profile: &str) {
    let relay = Relay::start_profile("signal", profile, &[]);
    let mut c = relay.connect();
    c.at_most_gen7();
    let id = c.start_exec(&sh(
        "trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done",
    ));
    assert_eq!(c.recv().message_type, MessageType::ExecStarted);
    let first = c.recv();
    assert_eq!(Data::decode(&first.payload).unwrap().data, &b"ready\n"[..]);
    c.send_payload(
        MessageType::ExecSignal,
        id,
        &ExecSignal {
            signal: libc::SIGUSR1,
        },
    );
    let out = c.finish_exec(id);
    assert_eq!(out.stdout_text(), "got-usr1\n");
    assert_eq!(out.code, 3);
}

fn stdin_streams_into_cat_and_empty_data_closes_it(profile: &str) {
    let relay = Relay::start_profile("stdin", profile, &[]);
    let mut c = relay.connect();
    c.at_most_gen7();
    let id = c.start_exec(&exec_req("cat", &[]));
    assert_eq!(c.recv().message_type, MessageType::ExecStarted);
    c.send_data(MessageType::ExecStdin, id, b"first line\n");
    // cat echoes each piece as it gets it: stdin is not held back until EOF.
    let echoed = c.recv();
    assert_eq!(echoed.message_type, MessageType::ExecStdout);
    assert_eq!(
        Data::decode(&echoed.payload).unwrap().data,
        &b"first line\n"[..]
    );
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for piece in big.chunks(70_000) {
        c.send_data(MessageType::ExecStdin, id, piece);
    }
    c.send_data(MessageType::ExecStdin, id, b"");
    let out = c.finish_exec(id);
    assert_eq!(out.stdout, big, "bytes in order, nothing lost");
    assert_eq!(out.code, 0, "cat saw EOF and exited");
}

#[test]
fn output_is_streamed_before_exit() {
    let relay = Relay::start("streaming");
    let mut c = relay.connect();
    let started_at = Instant::now();
    let id = c.start_exec(&sh("echo a; sleep 1; echo b"));
    assert_eq!(c.recv().message_type, MessageType::ExecStarted);
    let first = c.recv();
    let first_after = started_at.elapsed();
    assert_eq!(first.message_type, MessageType::ExecStdout);
    assert_eq!(Data::decode(&first.payload).unwrap().data, &b"a\n"[..]);
    assert!(first_after < Duration::from_millis(700), "{first_after:?}");
    let rest = c.finish_exec(id);
    assert_eq!(rest.stdout_text(), "b\n");
    assert!(started_at.elapsed() >= Duration::from_secs(1));
}

#[test]
fn exec_chunk_bounds_output_frames() {
    let relay = Relay::start_with("chunk", &["--exec-chunk", "1000"]);
    let mut c = relay.connect();
    c.start_exec(&exec_req("head", &["-c", "100000", "/dev/zero"]));
    let mut total = 0;
    let mut biggest = 0;
    loop {
        let m = c.recv();
        match m.message_type {
            MessageType::ExecStdout => {
                let n = Data::decode(&m.payload).unwrap().data.len();
                total += n;
                biggest = biggest.max(n);
            }
            MessageType::ExecExited => break,
            _ => {}
        }
    }
    assert_eq!(total, 100_000);
    assert!(biggest <= 1000 && biggest > 0, "{biggest}");
}

#[test]
fn default_chunk_is_4096_and_large_output_arrives_whole() {
    let relay = Relay::start("bigout");
    let mut c = relay.connect();
    let id = c.start_exec(&sh(
        "head -c 5000000 /dev/urandom | od -An -v | head -c 3000000",
    ));
    let mut total = 0;
    let mut biggest = 0;
    let code = loop {
        let m = c.recv();
        assert_eq!(m.id, id);
        match m.message_type {
            MessageType::ExecStdout => {
                let n = Data::decode(&m.payload).unwrap().data.len();
                total += n;
                biggest = biggest.max(n);
            }
            MessageType::ExecExited => {
                break microsandbox_agent::protocol::payload::ExecExited::decode(&m.payload)
                    .unwrap()
                    .code
            }
            _ => {}
        }
    };
    assert_eq!(total, 3_000_000);
    assert_eq!(biggest, 4096);
    assert_eq!(code, 0);
}

#[test]
fn tty_has_a_terminal_of_the_requested_size_and_resizes() {
    let relay = Relay::start("tty");
    let mut c = relay.connect();
    let mut req = sh("tty; stty size; echo err >&2; read _; stty size");
    req.tty = true;
    req.rows = 33;
    req.cols = 101;
    let id = c.start_exec(&req);
    let mut seen = String::new();
    assert_eq!(c.recv().message_type, MessageType::ExecStarted);
    while !seen.contains("err") {
        let m = c.recv();
        assert_eq!(
            m.message_type,
            MessageType::ExecStdout,
            "tty output is merged"
        );
        seen.push_str(&String::from_utf8_lossy(
            &Data::decode(&m.payload).unwrap().data,
        ));
    }
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    assert!(seen.contains("33 101"), "{seen:?}");
    c.send_payload(
        MessageType::ExecResize,
        id,
        &ExecResize {
            rows: 40,
            cols: 132,
        },
    );
    c.send_data(MessageType::ExecStdin, id, b"go\n");
    let out = c.finish_exec(id);
    assert!(
        out.stdout_text().contains("40 132"),
        "{:?}",
        out.stdout_text()
    );
    assert_eq!(out.stderr, b"");
    assert_eq!(out.code, 0);
}

#[test]
fn tty_is_the_controlling_terminal_and_eof_works() {
    let relay = Relay::start("ttyctl");
    let mut c = relay.connect();
    // `cat` on a tty ends at ^D, which is what empty stdin sends.
    let mut req = exec_req(
        "sh",
        &[
            "-c",
            "test -t 0 && ps -o tty= -p $$ >/dev/null && cat; echo done",
        ],
    );
    req.tty = true;
    let id = c.start_exec(&req);
    c.send_data(MessageType::ExecStdin, id, b"abc\n");
    c.send_data(MessageType::ExecStdin, id, b"");
    let out = c.finish_exec(id);
    assert!(out.stdout_text().contains("abc"), "{:?}", out.stdout_text());
    assert!(
        out.stdout_text().ends_with("done\r\n"),
        "{:?}",
        out.stdout_text()
    );
    assert_eq!(out.code, 0);
    // The shell is a session leader owning the pty: it has a controlling tty.
    let mut req = sh("ps -o tty= -p $$; ps -o sid= -p $$; echo $$");
    req.tty = true;
    let out = c.exec(&req);
    let text = out.stdout_text();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert!(fields[0].starts_with("pts/"), "{text:?}");
    assert_eq!(fields[1], fields[2], "session leader: {text:?}");
}

#[test]
fn rlimits_are_applied_and_unknown_ones_refused() {
    let relay = Relay::start("rlimit");
    let mut c = relay.connect();
    let mut req = sh("ulimit -n; ulimit -Hn");
    req.rlimits = vec![Rlimit {
        resource: "nofile".into(),
        soft: 77,
        hard: 99,
    }];
    let out = c.exec(&req);
    assert_eq!(out.stdout_text(), "77\n99\n");
    assert_eq!(out.code, 0);

    let mut req = exec_req("true", &[]);
    req.rlimits = vec![Rlimit {
        resource: "bogus".into(),
        soft: 1,
        hard: 1,
    }];
    let out = c.exec(&req);
    assert_eq!(
        out.sequence,
        vec![MessageType::ExecStderr, MessageType::ExecExited]
    );
    assert_eq!(out.code, -1);
    assert!(out.stderr_text().contains("bogus"));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn user_is_honoured_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let relay = Relay::start("user");
    let mut c = relay.connect();
    let mut req = sh("id -un; id -u");
    req.user = Some("nobody".into());
    let out = c.exec(&req);
    assert_eq!(out.code, 0, "{}", out.stderr_text());
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "nobody");
    assert_ne!(lines[1], "0");
    let mut req = exec_req("true", &[]);
    req.user = Some("no-such-user-here".into());
    let out = c.exec(&req);
    assert_eq!(out.pid, None);
    assert_eq!(out.code, -1);
    assert!(out.stderr_text().contains("no-such-user-here"));
}

#[test]
fn user_is_refused_when_not_root() {
    if !is_root() {
        // Already unprivileged: run the relay as we are.
        let relay = Relay::start("nouser");
        return check_user_refused(&relay);
    }
    // As root, start the relay as nobody to see the unprivileged behaviour.
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("nouser");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("s.sock");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_msb-devrelay"));
    command
        .arg("--profile")
        .arg("0.3.14")
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(&root);
    command.uid(65534).gid(65534);
    let relay = Relay::spawn(command, dir, socket, root);
    check_user_refused(&relay);
}

fn check_user_refused(relay: &Relay) {
    let mut c = relay.connect();
    let mut req = exec_req("id", &["-un"]);
    req.user = Some("root".into());
    let out = c.exec(&req);
    assert_eq!(
        out.sequence,
        vec![MessageType::ExecStderr, MessageType::ExecExited]
    );
    assert_eq!(out.code, -1);
    assert!(out.stderr_text().contains("root"), "{}", out.stderr_text());
}

fn disconnect_kills_running_execs(profile: &str) {
    let relay = Relay::start_profile("disconnect", profile, &[]);
    let mut c = relay.connect();
    c.at_most_gen7();
    c.start_exec(&exec_req("sleep", &["30"]));
    let started = c.recv();
    let pid = ExecStarted::decode(&started.payload).unwrap().pid;
    // A helper the exec forked dies with it (its process group is killed).
    c.start_exec(&sh("sleep 31 & echo $!; wait"));
    assert_eq!(c.recv().message_type, MessageType::ExecStarted);
    let child = c.recv();
    let helper: u32 = String::from_utf8_lossy(&Data::decode(&child.payload).unwrap().data)
        .trim()
        .parse()
        .unwrap();
    assert!(process_alive(pid) && process_alive(helper));
    drop(c);
    assert!(wait_until(TIMEOUT, || !process_alive(pid)));
    assert!(wait_until(TIMEOUT, || !process_alive(helper)));
    // Other clients are unaffected.
    let mut other = relay.connect();
    assert_eq!(other.exec(&exec_req("true", &[])).code, 0);
}

fn concurrent_execs_keep_their_own_ids(profile: &str) {
    let relay = Relay::start_profile("concurrent", profile, &[]);
    let mut c = relay.connect();
    c.at_most_gen7();
    let ids: Vec<u32> = (0..8)
        .map(|i| {
            c.start_exec(&sh(&format!(
                "for n in 1 2 3; do echo {i}-$n; done; exit {i}"
            )))
        })
        .collect();
    let mut outputs = vec![String::new(); 8];
    let mut codes = [None; 8];
    while codes.iter().any(Option::is_none) {
        let m = c.recv();
        let i = ids.iter().position(|&id| id == m.id).unwrap();
        match m.message_type {
            MessageType::ExecStdout => outputs[i].push_str(&String::from_utf8_lossy(
                &Data::decode(&m.payload).unwrap().data,
            )),
            MessageType::ExecExited => {
                assert!(codes[i].is_none());
                codes[i] = Some(
                    microsandbox_agent::protocol::payload::ExecExited::decode(&m.payload)
                        .unwrap()
                        .code,
                )
            }
            _ => {}
        }
    }
    for i in 0..8 {
        assert_eq!(outputs[i], format!("{i}-1\n{i}-2\n{i}-3\n"));
        assert_eq!(codes[i], Some(i as i32));
    }
}

#[test]
fn slow_reader_backpressures_the_child() {
    let relay = Relay::start_with("backpressure", &["--exec-chunk", "65536"]);
    let mut c = relay.connect();
    // Writes forever; if the relay buffered without bound its memory would
    // grow, instead `yes` must block on its pipe.
    let id = c.start_exec(&exec_req("yes", &[]));
    let started = c.recv();
    let pid = ExecStarted::decode(&started.payload).unwrap().pid;
    std::thread::sleep(Duration::from_millis(800));
    let relay_rss = rss_kib(relay.child.id());
    assert!(relay_rss < 200 * 1024, "relay RSS {relay_rss} KiB");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = state
        .rsplit(')')
        .next()
        .unwrap()
        .trim_start()
        .chars()
        .next();
    assert_eq!(state, Some('S'), "yes is blocked writing, not running");
    c.send_payload(MessageType::ExecSignal, id, &ExecSignal { signal: 9 });
    let out_code = loop {
        let m = c.recv();
        if m.message_type == MessageType::ExecExited {
            break microsandbox_agent::protocol::payload::ExecExited::decode(&m.payload)
                .unwrap()
                .code;
        }
    };
    assert_eq!(out_code, -1);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

fn stdin_and_signal_sent_right_after_the_request_are_not_lost(profile: &str) {
    let relay = Relay::start_profile("early", profile, &[]);
    let mut c = relay.connect();
    c.at_most_gen7();
    let id = c.start_exec(&exec_req("cat", &[]));
    c.send_data(MessageType::ExecStdin, id, b"early bird");
    c.send_data(MessageType::ExecStdin, id, b"");
    let out = c.finish_exec(id);
    assert_eq!(out.stdout_text(), "early bird");
    assert_eq!(out.code, 0);

    let id = c.start_exec(&exec_req("sleep", &["30"]));
    c.send_payload(
        MessageType::ExecSignal,
        id,
        &ExecSignal {
            signal: libc::SIGKILL,
        },
    );
    let started = Instant::now();
    let out = c.finish_exec(id);
    assert_eq!(out.code, -1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_id_already_running_is_refused_without_disturbing_it() {
    let relay = Relay::start_with("dupid", &["--quiet"]);
    let mut c = relay.connect();
    let id = c.start_exec(&exec_req("cat", &[]));
    assert_eq!(c.recv().message_type, MessageType::ExecStarted);
    c.send_payload(MessageType::ExecRequest, id, &exec_req("true", &[]));
    let refusal = c.recv();
    assert_eq!(refusal.message_type, MessageType::ExecStderr);
    let exited = c.recv();
    assert_eq!(exited.message_type, MessageType::ExecExited);
    // The first exec still has its stdin.
    c.send_data(MessageType::ExecStdin, id, b"still mine");
    c.send_data(MessageType::ExecStdin, id, b"");
    let out = c.finish_exec(id);
    assert_eq!(out.stdout_text(), "still mine");
    assert_eq!(out.code, 0);
}

for_profiles!(echo_reports_started_stdout_and_exit_code: echo_reports_started_stdout_and_exit_code_0_3_14 = "0.3.14", echo_reports_started_stdout_and_exit_code_0_6_14 = "0.6.14", echo_reports_started_stdout_and_exit_code_0_7_13 = "0.7.13");

for_profiles!(stderr_and_nonzero_exit: stderr_and_nonzero_exit_0_3_14 = "0.3.14", stderr_and_nonzero_exit_0_6_14 = "0.6.14", stderr_and_nonzero_exit_0_7_13 = "0.7.13");

for_profiles!(env_cwd_and_args_are_applied: env_cwd_and_args_are_applied_0_3_14 = "0.3.14", env_cwd_and_args_are_applied_0_6_14 = "0.6.14", env_cwd_and_args_are_applied_0_7_13 = "0.7.13");

for_profiles!(death_by_signal_is_minus_one: death_by_signal_is_minus_one_0_3_14 = "0.3.14", death_by_signal_is_minus_one_0_6_14 = "0.6.14", death_by_signal_is_minus_one_0_7_13 = "0.7.13");

for_profiles!(spawn_failures_exit_minus_one_without_started: spawn_failures_exit_minus_one_without_started_0_3_14 = "0.3.14", spawn_failures_exit_minus_one_without_started_0_6_14 = "0.6.14", spawn_failures_exit_minus_one_without_started_0_7_13 = "0.7.13");

for_profiles!(signal_request_is_delivered: signal_request_is_delivered_0_3_14 = "0.3.14", signal_request_is_delivered_0_6_14 = "0.6.14", signal_request_is_delivered_0_7_13 = "0.7.13");

for_profiles!(stdin_streams_into_cat_and_empty_data_closes_it: stdin_streams_into_cat_and_empty_data_closes_it_0_3_14 = "0.3.14", stdin_streams_into_cat_and_empty_data_closes_it_0_6_14 = "0.6.14", stdin_streams_into_cat_and_empty_data_closes_it_0_7_13 = "0.7.13");

for_profiles!(disconnect_kills_running_execs: disconnect_kills_running_execs_0_3_14 = "0.3.14", disconnect_kills_running_execs_0_6_14 = "0.6.14", disconnect_kills_running_execs_0_7_13 = "0.7.13");

for_profiles!(concurrent_execs_keep_their_own_ids: concurrent_execs_keep_their_own_ids_0_3_14 = "0.3.14", concurrent_execs_keep_their_own_ids_0_6_14 = "0.6.14", concurrent_execs_keep_their_own_ids_0_7_13 = "0.7.13");

for_profiles!(stdin_and_signal_sent_right_after_the_request_are_not_lost: stdin_and_signal_sent_right_after_the_request_are_not_lost_0_3_14 = "0.3.14", stdin_and_signal_sent_right_after_the_request_are_not_lost_0_6_14 = "0.6.14", stdin_and_signal_sent_right_after_the_request_are_not_lost_0_7_13 = "0.7.13");

fn stdin_write_failure_is_reported(profile: &str) {
    let relay = Relay::start_profile("stdin-epipe", profile, &["--quiet"]);
    let mut c = relay.connect();
    c.at_most_gen7();
    // The child closes its stdin at once, then lingers.
    let id = c.start_exec(&sh("exec 0<&-; sleep 0.5; echo done"));
    assert_eq!(c.recv().message_type, MessageType::ExecStarted);
    std::thread::sleep(Duration::from_millis(200));
    c.send_data(MessageType::ExecStdin, id, b"nobody reads this");
    let out = c.finish_exec(id);
    assert_eq!(out.stdout_text(), "done\n");
    assert_eq!(out.code, 0);
    if profile == "0.3.14" {
        // 0.3.14 predates core.exec.stdin.error.
        assert!(out.stdin_errors.is_empty());
        return;
    }
    let error = &out.stdin_errors[..];
    assert_eq!(error.len(), 1, "{:?}", out.sequence);
    assert_eq!(error[0].errno, Some(libc::EPIPE));
    assert_eq!(error[0].errno_name.as_deref(), Some("EPIPE"));
}

for_profiles!(stdin_write_failure_is_reported:
    stdin_error_0_3_14 = "0.3.14", stdin_error_0_6_14 = "0.6.14", stdin_error_0_7_13 = "0.7.13");
