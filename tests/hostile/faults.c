/*
 * A hostile relay: every fault mode of msb-devrelay, plus a scripted peer on
 * a socketpair for the cases where the test must control exactly when the
 * bad bytes arrive (waiters already blocked). Each scenario runs twice:
 * waiting with blocking pulls, and waiting on the readiness fd with poll(2)
 * followed by pulls with timeout 0.
 *
 * One run is against one relay release, MSB_DEVRELAY_PROFILE (0.3.14,
 * 0.6.14 or 0.7.13; default 0.7.13): the devrelay imitates it, the scripted
 * peer speaks its handshake and generation, and each test is named with it.
 * scripts/test-hostile.sh runs the program once per release. Where what the
 * library must do depends on the release (the filesystem's request count,
 * id ranges, exec flow control on 0.7.13), the test says why at the check.
 *
 * What every scenario asserts: the expected status and an error message that
 * names the problem, every call back within its timeout plus a slack
 * (MSB_TEST_SLACK_MS), and, where the library must drop and count, the
 * counters and a request that still succeeds.
 *
 *   cc -std=c11 -Wall -Wextra -Wpedantic -Werror -Iinclude tests/hostile/faults.c \
 *      -Ltarget/release -lmicrosandbox_agent -lpthread -o faults
 *   LD_LIBRARY_PATH=target/release ./faults      (from the repository root)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "harness.h"

#define MIB (1024 * 1024)
#define DEFAULT_BUDGET (16 * MIB)
/* The devrelay's flood sends core.exec.stdout frames of exactly this many
 * data bytes: the frame's sequence number (u64 big-endian, from 0), then
 * 'f' bytes. */
#define FLOOD_CHUNK (64 * 1024)
#define FLOOD_BYTE 'f'

/* The most the client may hold unread with the default budget: the reader
 * stops reading once the budget is spent (for good with
 * MSB_BACKPRESSURE_PAUSE_SOCKET, for the overflow grace by default), but the
 * read that crossed it may have brought up to its 256 KiB buffer of frames
 * plus one large frame read directly (the library's READ_BUFFER; README,
 * "Memory, and what a hostile guest can do"). */
#define QUEUED_LIMIT ((uint64_t)DEFAULT_BUDGET + 256 * 1024 + FLOOD_CHUNK + 1024)

/* Pull timeout for scenarios where something is expected to arrive. */
#define PULL_TIMEOUT 3000

/* ------------------------------------------------------------ helpers */

static msb_exec_request *new_request(const char *cmd, const char *arg) {
    msb_exec_request *req = NULL;
    CHECK_STATUS(msb_exec_request_new(cmd, &req, NULL), MSB_OK);
    if (arg != NULL && req != NULL) CHECK_STATUS(msb_exec_request_add_arg(req, arg, NULL), MSB_OK);
    return req;
}

static msb_counters counters_of(const msb_client *c) {
    msb_counters k;
    memset(&k, 0, sizeof k);
    k.struct_size = sizeof k;
    CHECK_STATUS(msb_client_counters(c, &k), MSB_OK);
    return k;
}

/* Runs `echo hi` through msb_exec_start and the pulls of `mode` and checks
 * the whole conversation: started, "hi\n", exit 0, ended. */
static void check_echo_conversation(const msb_client *c, enum wait_mode mode) {
    msb_exec_request *req = new_request("echo", "hi");
    msb_exec *exec = NULL;
    msb_error *err = NULL;
    msb_status s = msb_exec_start(c, req, PULL_TIMEOUT, &exec, &err);
    msb_exec_request_free(req);
    CHECK_STATUS(s, MSB_OK);
    if (s != MSB_OK) {
        msb_error_free(err);
        return;
    }
    int started = 0, exited = 0, ended = 0;
    char out[64];
    size_t out_len = 0;
    for (int i = 0; i < 32 && !ended; i++) {
        msb_exec_event *ev = NULL;
        int64_t t0 = h_now_ms();
        s = pull_event(exec, mode, PULL_TIMEOUT, &ev, &err);
        CHECK_WITHIN(t0, PULL_TIMEOUT);
        if (s == MSB_ENDED) {
            ended = 1;
        } else if (s == MSB_NOTHING_YET) {
            /* Only after a readiness fd that lied (recorded by pull_event):
             * keep pulling so the rest of the conversation is still checked. */
            continue;
        } else if (s == MSB_OK) {
            switch (msb_exec_event_kind(ev)) {
            case MSB_EXEC_STARTED: started++; break;
            case MSB_EXEC_STDOUT: {
                size_t n = 0;
                const uint8_t *d = msb_exec_event_data(ev, &n);
                if (out_len + n <= sizeof out) memcpy(out + out_len, d, n);
                out_len += n;
                break;
            }
            case MSB_EXEC_EXITED:
                exited++;
                CHECK(msb_exec_event_exit_code(ev) == 0);
                break;
            default: CHECK_MSG(0, "unexpected event kind %d", msb_exec_event_kind(ev));
            }
            msb_exec_event_free(ev);
        } else {
            CHECK_MSG(0, "pull returned %s: %s", msb_status_str(s), msb_error_message(err));
            msb_error_free(err);
            break;
        }
    }
    CHECK(started == 1);
    CHECK(exited == 1);
    CHECK(ended);
    CHECK(out_len == 3 && memcmp(out, "hi\n", 3) == 0);
    msb_exec_free(exec);
}

/* How many core.fs.request conversations check_fs_round_trip starts: a
 * write, a read and a stat on 0.3.14's path-based filesystem; on the
 * handle-based one of current relays (generation 2+) the write and the read
 * each also open and close a handle. */
static uint64_t fs_round_trip_requests(void) { return h_relay_legacy() ? 3 : 7; }

/* A small file written, read back, and a stat of it. */
static void check_fs_round_trip(const msb_client *c, enum wait_mode mode) {
    static const char body[] = "still works";
    msb_error *err = NULL;
    msb_status s = msb_fs_write_file(c, "/probe.txt", (const uint8_t *)body, sizeof body - 1, -1,
                                     PULL_TIMEOUT, &err);
    CHECK_STATUS(s, MSB_OK);
    if (s != MSB_OK) msb_error_free(err);
    /* Read through the streaming reader so the pulls follow `mode`. */
    msb_file_reader *reader = NULL;
    s = msb_file_reader_open(c, "/probe.txt", PULL_TIMEOUT, &reader, &err);
    CHECK_STATUS(s, MSB_OK);
    if (s != MSB_OK) msb_error_free(err);
    size_t got = 0;
    for (int i = 0; i < 16 && reader != NULL; i++) {
        msb_bytes *chunk = NULL;
        s = pull_chunk(reader, mode, PULL_TIMEOUT, &chunk, &err);
        /* Only after a readiness fd that lied (recorded by pull_chunk):
         * keep pulling so the rest of the conversation is still checked. */
        if (s == MSB_NOTHING_YET) continue;
        if (s == MSB_OK) {
            CHECK(got + msb_bytes_len(chunk) <= sizeof body - 1);
            if (got + msb_bytes_len(chunk) <= sizeof body - 1)
                CHECK(memcmp(msb_bytes_data(chunk), body + got, msb_bytes_len(chunk)) == 0);
            got += msb_bytes_len(chunk);
            msb_bytes_free(chunk);
            continue;
        }
        if (s != MSB_ENDED) {
            CHECK_MSG(0, "reader pull: %s: %s", msb_status_str(s), msb_error_message(err));
            msb_error_free(err);
        }
        break;
    }
    CHECK(got == sizeof body - 1);
    msb_file_reader_free(reader);
    /* The stat comes last: freeing a reader closes its handle (generation
     * 2+) without waiting for the answer, and the relay serves one
     * connection's requests in order, so once the stat is answered
     * everything the relay sent for the close has arrived and is counted. */
    msb_fs_entry *entry = NULL;
    s = msb_fs_stat(c, "/probe.txt", PULL_TIMEOUT, &entry, &err);
    CHECK_STATUS(s, MSB_OK);
    if (s == MSB_OK) {
        CHECK(msb_fs_entry_size(msb_fs_entry_as_view(entry)) == sizeof body - 1);
        msb_fs_entry_free(entry);
    } else {
        msb_error_free(err);
    }
}

/* ------------------------------------------------------------ malformed frames from the relay */

/*
 * The relay sends one malformed frame right after a normal handshake. An exec
 * started around then either fails to start or has its event pull fail; both
 * must carry `code` and a message naming the problem, and every later call
 * fails the same way, quickly.
 */
static void relay_breaks_connection(const char *fault, enum wait_mode mode, msb_status code,
                                    const char *needle) {
    struct relay r;
    if (!h_relay_up(&r, fault)) return;
    msb_client *c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        msb_exec_request *req = new_request("true", NULL);
        msb_exec *exec = NULL;
        msb_error *err = NULL;
        int64_t t0 = h_now_ms();
        msb_status s = msb_exec_start(c, req, PULL_TIMEOUT, &exec, &err);
        CHECK_WITHIN(t0, PULL_TIMEOUT);
        if (s == MSB_OK) {
            /* The relay serves nothing after the fault: no event may arrive,
             * only the connection's death. */
            msb_exec_event *ev = NULL;
            t0 = h_now_ms();
            s = pull_event(exec, mode, PULL_TIMEOUT, &ev, &err);
            CHECK_WITHIN(t0, PULL_TIMEOUT);
            if (s == MSB_OK) {
                CHECK_MSG(0, "got an event of kind %d from a broken relay", msb_exec_event_kind(ev));
                msb_exec_event_free(ev);
            }
            /* Once failed, the pull keeps failing the same way. */
            msb_error *again = NULL;
            CHECK_STATUS(pull_event(exec, mode, 0, &ev, &again), code);
            CHECK_ERROR(again, code, needle);
        }
        CHECK_STATUS(s, code);
        CHECK_ERROR(err, code, needle);
        msb_exec_free(exec);

        /* Later calls fail at once with the same cause. */
        msb_fs_entry *entry = NULL;
        err = NULL;
        t0 = h_now_ms();
        CHECK_STATUS(msb_fs_stat(c, "/", PULL_TIMEOUT, &entry, &err), code);
        CHECK_WITHIN(t0, 0);
        CHECK_ERROR(err, code, needle);
        msb_exec_request_free(req);
        /* Counters stay readable on a failed client. */
        (void)counters_of(c);
        msb_client_free(c);
    }
    relay_stop(&r, SIGTERM);
}

#define RELAY_BREAKS(fn, fault, code, needle)                                 \
    static void fn##_blocking(void) { relay_breaks_connection(fault, WAIT_BLOCKING, code, needle); } \
    static void fn##_poll(void) { relay_breaks_connection(fault, WAIT_POLL, code, needle); }

RELAY_BREAKS(oversize_frame, "oversize-frame", MSB_ERR_PROTOCOL, "exceeds the 4194304-byte limit")
RELAY_BREAKS(short_frame, "short-frame", MSB_ERR_PROTOCOL, "shorter than the 5-byte header")
RELAY_BREAKS(bad_cbor, "bad-cbor", MSB_ERR_PROTOCOL, "malformed frame body")
RELAY_BREAKS(bad_body_shape, "bad-body-shape", MSB_ERR_PROTOCOL, "malformed frame body")
/* Half a frame then EOF: the relay hung up, which is a closed connection,
 * not a malformed frame (nothing malformed was ever complete). Whether our
 * next write meets EPIPE or our next read meets EOF first is a race, so
 * the message is "connection closed: the relay closed the connection" or
 * "connection closed: socket error: Broken pipe". */
RELAY_BREAKS(truncated_frame, "truncated-frame", MSB_ERR_CLOSED, "connection closed")

/* ------------------------------------------------------------ dropped and counted */

static void unknown_type(enum wait_mode mode) {
    struct relay r;
    if (!h_relay_up(&r, "unknown-type")) return;
    msb_client *c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        /* Each request is preceded by a core.bogus.type frame on its id: the
         * exec and fs calls skip it, and it is counted. */
        check_echo_conversation(c, mode);
        CHECK(counters_of(c).unknown_type == 1);
        check_fs_round_trip(c, mode);
        uint64_t unknown = counters_of(c).unknown_type;
        CHECK_MSG(unknown == 1 + fs_round_trip_requests(), "unknown_type %llu after %llu fs requests",
                  (unsigned long long)unknown, (unsigned long long)fs_round_trip_requests());

        /* The raw tier delivers it as received. The stat must have the
         * release's shape: a current agent answers a legacy-shaped one
         * with core.error before the relay's fault comes into play. */
        static const uint8_t stat_root_legacy[] = {0xa1, 0x62, 'o', 'p', 0xa1, 0x64, 'S', 't', 'a', 't',
                                                   0xa1, 0x64, 'p', 'a', 't', 'h', 0x61, '/'};
        static const uint8_t stat_root_handles[] = {
            0xa1, 0x62, 'o', 'p', 0xa1, 0x64, 'S', 't', 'a', 't', 0xa2, 0x64, 'p', 'a', 't', 'h', 0x61, '/',
            0x6e, 'f', 'o', 'l', 'l', 'o', 'w', '_', 's', 'y', 'm', 'l', 'i', 'n', 'k', 0xf4};
        const uint8_t *stat_root = h_relay_legacy() ? stat_root_legacy : stat_root_handles;
        size_t stat_root_len = h_relay_legacy() ? sizeof stat_root_legacy : sizeof stat_root_handles;
        msb_message *reply = NULL;
        msb_error *err = NULL;
        msb_status s = msb_client_request(c, "core.fs.request", stat_root, stat_root_len, PULL_TIMEOUT,
                                          &reply, &err);
        CHECK_STATUS(s, MSB_OK);
        if (s == MSB_OK) {
            CHECK(strcmp(msb_message_type(reply), "core.bogus.type") == 0);
            CHECK(msb_message_flags(reply) == 0);
            msb_message_free(reply);
        } else {
            msb_error_free(err);
        }
        CHECK(counters_of(c).unknown_type == unknown + 1);
        msb_client_free(c);
    }
    relay_stop(&r, SIGTERM);
}

static void out_of_range_id(enum wait_mode mode) {
    struct relay r;
    if (!h_relay_up(&r, "out-of-range-id")) return;
    msb_client *c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        /* Before each request the relay sends two frames outside our range
         * (one past its end, which is the next slot's, and id 0): dropped,
         * counted, never delivered. The range is the release's: 268435454
         * ids from the legacy id_offset, 33554430 from a current
         * [id_start, id_end_exclusive). */
        uint32_t start = 0, end = 0;
        CHECK_STATUS(msb_client_id_range(c, &start, &end), MSB_OK);
        CHECK(start == 1 && end == (h_relay_legacy() ? 268435455u : 33554431u));
        check_echo_conversation(c, mode);
        CHECK(counters_of(c).dropped_out_of_range == 2);
        check_fs_round_trip(c, mode);
        msb_counters k = counters_of(c);
        CHECK_MSG(k.dropped_out_of_range == 2 + 2 * fs_round_trip_requests(),
                  "dropped_out_of_range %llu after %llu fs requests",
                  (unsigned long long)k.dropped_out_of_range,
                  (unsigned long long)fs_round_trip_requests());
        CHECK(k.unknown_type == 0);
        msb_client_free(c);
    }
    relay_stop(&r, SIGTERM);
}

/* ------------------------------------------------------------ payload of the wrong shape */

/*
 * A payload of the wrong shape for its type is a protocol violation like a
 * malformed frame: the pull that meets it fails with MSB_ERR_PROTOCOL naming
 * the missing field, and the connection is failed for every later call.
 */
static void wrong_payload(enum wait_mode mode) {
    struct relay r;
    if (!h_relay_up(&r, "wrong-payload")) return;
    msb_client *c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        /* core.exec.started {pid: 0}, then core.exec.stdout {} (no data). */
        msb_exec_request *req = new_request("true", NULL);
        msb_exec *exec = NULL;
        msb_error *err = NULL;
        msb_status s = msb_exec_start(c, req, PULL_TIMEOUT, &exec, &err);
        msb_exec_request_free(req);
        CHECK_STATUS(s, MSB_OK);
        if (s == MSB_OK) {
            msb_exec_event *ev = NULL;
            int64_t t0 = h_now_ms();
            s = pull_event(exec, mode, PULL_TIMEOUT, &ev, &err);
            CHECK_WITHIN(t0, PULL_TIMEOUT);
            CHECK_STATUS(s, MSB_OK);
            if (s == MSB_OK) {
                CHECK(msb_exec_event_kind(ev) == MSB_EXEC_STARTED);
                CHECK(msb_exec_event_pid(ev) == 0);
                msb_exec_event_free(ev);
            } else {
                msb_error_free(err);
            }
            err = NULL;
            t0 = h_now_ms();
            CHECK_STATUS(pull_event(exec, mode, PULL_TIMEOUT, &ev, &err), MSB_ERR_PROTOCOL);
            CHECK_WITHIN(t0, PULL_TIMEOUT);
            CHECK_ERROR(err, MSB_ERR_PROTOCOL, "malformed core.exec.stdout payload: missing field `data`");
            msb_exec_free(exec);
        } else {
            msb_error_free(err);
        }
        msb_fs_entry *entry = NULL;
        err = NULL;
        int64_t t0 = h_now_ms();
        CHECK_STATUS(msb_fs_stat(c, "/", PULL_TIMEOUT, &entry, &err), MSB_ERR_PROTOCOL);
        CHECK_WITHIN(t0, 0);
        CHECK_ERROR(err, MSB_ERR_PROTOCOL, "missing field `data`");
        msb_client_free(c);
    }

    /* core.fs.response {"ok": "yes"} on a fresh connection. */
    c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        msb_fs_entry *entry = NULL;
        msb_error *err = NULL;
        int64_t t0 = h_now_ms();
        CHECK_STATUS(msb_fs_stat(c, "/", PULL_TIMEOUT, &entry, &err), MSB_ERR_PROTOCOL);
        CHECK_WITHIN(t0, PULL_TIMEOUT);
        CHECK_ERROR(err, MSB_ERR_PROTOCOL, "malformed core.fs.response payload");
        msb_client_free(c);
    }
    relay_stop(&r, SIGTERM);
}

/* ------------------------------------------------------------ handshake faults */

/* Connects a plain socket to the relay; -1 (and a recorded failure) if that
 * fails. */
static int connect_socket(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    CHECK(strlen(path) < sizeof addr.sun_path);
    memcpy(addr.sun_path, path, strlen(path) % sizeof addr.sun_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        CHECK_MSG(0, "connect to %s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

/*
 * What stall-after-id sends before it stalls, read on a socket of our own
 * (the first client, slot 0): exactly the prologue of the release imitated,
 * 4 bytes on 0.3.14 (id_offset 0) and 8 on current relays (id_start 1,
 * id_end_exclusive 33554431), so the client's timeout is met with the
 * release's own half-handshake.
 */
static void check_stall_prologue(const struct relay *r) {
    static const uint8_t legacy[] = {0, 0, 0, 0};
    static const uint8_t current[] = {0, 0, 0, 1, 0x01, 0xff, 0xff, 0xff};
    const uint8_t *want = h_relay_legacy() ? legacy : current;
    size_t want_len = h_relay_legacy() ? sizeof legacy : sizeof current;
    int fd = connect_socket(r->socket);
    if (fd < 0) return;
    uint8_t got[64];
    size_t have = 0;
    /* Until nothing more comes for 300 ms. */
    while (have < sizeof got && h_poll_readable(fd, 300)) {
        ssize_t n = read(fd, got + have, sizeof got - have);
        if (n <= 0) break;
        have += (size_t)n;
    }
    CHECK_MSG(have == want_len && memcmp(got, want, want_len) == 0,
              "stall-after-id sent %zu bytes, want the %zu-byte prologue", have, want_len);
    close(fd);
}

/* Connects through the socket path (blocking-style API) or, in the second
 * run, through msb_client_connect_fd on a socket the test connected itself,
 * so both entry points are held to the deadline. */
static void handshake_fault(const char *fault, enum wait_mode mode, msb_status code,
                            const char *needle) {
    const uint64_t timeout = 500;
    struct relay r;
    if (!h_relay_up(&r, fault)) return;
    if (strcmp(fault, "stall-after-id") == 0) check_stall_prologue(&r);
    msb_connect_options *opts = NULL;
    CHECK_STATUS(msb_connect_options_new(&opts), MSB_OK);
    CHECK_STATUS(msb_connect_options_set_timeout_ms(opts, timeout), MSB_OK);
    msb_client *c = NULL;
    msb_error *err = NULL;
    int64_t t0 = h_now_ms();
    msb_status s;
    if (mode == WAIT_BLOCKING) {
        s = msb_client_connect(r.socket, opts, &c, &err);
    } else {
        int fd = connect_socket(r.socket);
        s = msb_client_connect_fd(fd, opts, &c, &err);
        if (fd >= 0) close(fd);
    }
    int64_t took = h_now_ms() - t0;
    CHECK_WITHIN(t0, timeout);
    if (code == MSB_ERR_TIMEOUT)
        CHECK_MSG(took >= (int64_t)timeout - 50, "timed out early, after %lld ms", (long long)took);
    CHECK_STATUS(s, code);
    CHECK(c == NULL); /* outputs are written only on success */
    CHECK_ERROR(err, code, needle);
    msb_client_free(c);
    msb_connect_options_free(opts);
    relay_stop(&r, SIGTERM);
}

#define HANDSHAKE(fn, fault, code, needle)                                    \
    static void fn##_path(void) { handshake_fault(fault, WAIT_BLOCKING, code, needle); } \
    static void fn##_fd(void) { handshake_fault(fault, WAIT_POLL, code, needle); }

HANDSHAKE(no_handshake, "no-handshake", MSB_ERR_TIMEOUT, "handshake")
HANDSHAKE(stall_after_id, "stall-after-id", MSB_ERR_TIMEOUT, "handshake")
HANDSHAKE(not_ready_first, "not-ready-first", MSB_ERR_PROTOCOL, "expected core.ready")
HANDSHAKE(close_in_handshake, "close-in-handshake", MSB_ERR_HANDSHAKE, "closed the connection during the handshake")

/* ------------------------------------------------------------ close mid-exec */

static void close_mid_exec(enum wait_mode mode) {
    struct relay r;
    if (!h_relay_up(&r, "close-mid-exec")) return;
    msb_client *c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        msb_exec_request *req = new_request("true", NULL);
        msb_exec *exec = NULL;
        msb_error *err = NULL;
        msb_status s = msb_exec_start(c, req, PULL_TIMEOUT, &exec, &err);
        msb_exec_request_free(req);
        CHECK_STATUS(s, MSB_OK);
        if (s == MSB_OK) {
            /* What arrived before the relay hung up is delivered, in order,
             * then the error. */
            static const int want_kinds[] = {MSB_EXEC_STARTED, MSB_EXEC_STDOUT};
            for (size_t i = 0; i < 2; i++) {
                msb_exec_event *ev = NULL;
                int64_t t0 = h_now_ms();
                s = pull_event(exec, mode, PULL_TIMEOUT, &ev, &err);
                CHECK_WITHIN(t0, PULL_TIMEOUT);
                CHECK_STATUS(s, MSB_OK);
                if (s != MSB_OK) {
                    msb_error_free(err);
                    err = NULL;
                    continue;
                }
                CHECK(msb_exec_event_kind(ev) == want_kinds[i]);
                if (want_kinds[i] == MSB_EXEC_STDOUT) {
                    size_t n = 0;
                    const uint8_t *d = msb_exec_event_data(ev, &n);
                    CHECK(n == 15 && memcmp(d, "partial output\n", 15) == 0);
                }
                msb_exec_event_free(ev);
            }
            /* With exec flow control (0.7.13) pulling the output sends its
             * acknowledgement into the closing socket: the write may meet
             * EPIPE, or the unread ack turn the relay's close into a reset,
             * before the read meets EOF, so only "connection closed" is
             * certain there. Elsewhere nothing is written after the
             * request, and the cause is the relay's clean close. */
            const char *cause = h_relay_is("0.7.13") ? "connection closed"
                                                      : "the relay closed the connection";
            msb_exec_event *ev = NULL;
            int64_t t0 = h_now_ms();
            CHECK_STATUS(pull_event(exec, mode, PULL_TIMEOUT, &ev, &err), MSB_ERR_CLOSED);
            CHECK_WITHIN(t0, PULL_TIMEOUT);
            CHECK_ERROR(err, MSB_ERR_CLOSED, cause);
            msb_exec_free(exec);
        } else {
            msb_error_free(err);
        }
        msb_client_free(c);
    }
    relay_stop(&r, SIGTERM);
}

/* ------------------------------------------------------------ flood */

/*
 * The caller starts a flooding exec and does not pull its events for
 * MSB_FLOOD_SECONDS (default 10), while other calls go on (blocking mode: fs
 * stats with a short timeout; poll mode: the exec's readiness fd is held,
 * nothing else). The library keeps reading the socket all along: the
 * flood's frames are queued until the budget is full, then that one stream
 * fails with MSB_ERR_STREAM_OVERFLOW (its exec killed, later frames dropped
 * and counted), and the connection and its other calls carry on. RSS stays
 * within the documented bound, the queued bytes within the budget, and the
 * queued output is still delivered before the error.
 *
 * The same holds on 0.7.13, where the exec runs with flow control: the
 * devrelay's flood ignores the output window (1 MiB unacknowledged), which
 * is what a hostile guest does, so the window is no bound and the memory
 * budget is still the one that holds.
 */
static void flood_not_reading(enum wait_mode mode) {
    const int64_t seconds = h_env_int("MSB_FLOOD_SECONDS", 10);
    /* Past the 1 s overflow grace, during which nothing is read. */
    const int64_t stat_timeout = 2500;
    struct relay r;
    if (!h_relay_up(&r, "flood")) return;
    long rss_before = h_rss_kib();
    msb_client *c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        msb_exec_request *req = new_request("true", NULL);
        msb_exec *exec = NULL;
        CHECK_STATUS(msb_exec_start(c, req, PULL_TIMEOUT, &exec, NULL), MSB_OK);
        msb_exec_request_free(req);
        int ready_fd = -1;
        if (mode == WAIT_POLL && exec != NULL) CHECK_STATUS(msb_exec_readiness_fd(exec, &ready_fd, NULL), MSB_OK);
        long rss_max = 0;
        uint64_t queued_max = 0;
        int stats_ok = 0, stats_failed = 0;
        int64_t end = h_now_ms() + seconds * 1000;
        while (h_now_ms() < end) {
            if (mode == WAIT_BLOCKING) {
                msb_fs_entry *entry = NULL;
                msb_error *err = NULL;
                int64_t t0 = h_now_ms();
                msb_status s = msb_fs_stat(c, "/", stat_timeout, &entry, &err);
                CHECK_WITHIN(t0, stat_timeout);
                if (s == MSB_OK) stats_ok++;
                else {
                    stats_failed++;
                    CHECK_MSG(0, "fs stat during flood: %s", msb_error_message(err));
                }
                msb_fs_entry_free(entry);
                msb_error_free(err);
            }
            h_sleep_ms(100);
            long rss = h_rss_kib();
            if (rss > rss_max) rss_max = rss;
            uint64_t q = counters_of(c).bytes_queued;
            if (q > queued_max) queued_max = q;
        }
        msb_counters k = counters_of(c);
        printf("     flood (%s), not pulling for %llds: max RSS %ld KiB (before %ld KiB), "
               "max queued %llu bytes, dropped after overflow %llu, stats ok %d / failed %d\n",
               wait_mode_name(mode), (long long)seconds, rss_max, rss_before,
               (unsigned long long)queued_max, (unsigned long long)k.dropped_overflow, stats_ok,
               stats_failed);
        /* The read that filled the budget is queued whole (README). */
        CHECK_MSG(queued_max <= QUEUED_LIMIT, "queued %llu > budget and one read",
                  (unsigned long long)queued_max);
        /* The flood really filled the budget (the bound was exercised). */
        CHECK_MSG(queued_max >= DEFAULT_BUDGET - 2 * FLOOD_CHUNK - 1024, "queued only %llu",
                  (unsigned long long)queued_max);
        CHECK(k.dropped_overflow > 0);
        CHECK_MSG(rss_max - rss_before < 48 * 1024, "RSS grew by %ld KiB", rss_max - rss_before);
        if (!h_instrumented()) CHECK_MSG(rss_max < 64 * 1024, "max RSS %ld KiB >= 64 MiB", rss_max);
        if (mode == WAIT_POLL) CHECK(h_poll_readable(ready_fd, 0));
        /* The queued output comes first, then the stream's own error. */
        int stdout_events = 0;
        msb_status last = MSB_OK;
        msb_error *err = NULL;
        while (exec != NULL) {
            msb_exec_event *ev = NULL;
            last = pull_event(exec, mode, PULL_TIMEOUT, &ev, &err);
            if (last != MSB_OK) break;
            if (msb_exec_event_kind(ev) == MSB_EXEC_STDOUT) stdout_events++;
            msb_exec_event_free(ev);
        }
        CHECK_STATUS(last, MSB_ERR_STREAM_OVERFLOW);
        CHECK_ERROR(err, MSB_ERR_STREAM_OVERFLOW, "memory budget");
        CHECK_MSG(stdout_events >= (int)(DEFAULT_BUDGET / FLOOD_CHUNK) - 2, "only %d chunks",
                  stdout_events);
        msb_exec_free(exec);
        CHECK(counters_of(c).bytes_queued < FLOOD_CHUNK * 8);
        /* The connection lives (this relay answers every exec with a
         * flood, so the check is a filesystem call). */
        msb_fs_entry *entry = NULL;
        CHECK_STATUS(msb_fs_stat(c, "/", PULL_TIMEOUT, &entry, NULL), MSB_OK);
        msb_fs_entry_free(entry);
        msb_client_free(c);
    }
    relay_stop(&r, SIGTERM);
}

/*
 * The caller reads slowly (a pause after every few pulls) through more than
 * the budget's worth of flood, with MSB_BACKPRESSURE_PAUSE_SOCKET: every
 * frame arrives whole and in order, none is lost or merged, and the bytes
 * are the relay's (each frame carries its sequence number). On 0.7.13 the
 * library acknowledges what it delivers, which the window-ignoring flood
 * neither needs nor minds.
 */
static void flood_slow_reader(enum wait_mode mode) {
    const int frames = (int)h_env_int("MSB_FLOOD_FRAMES", 400); /* 25 MiB */
    struct relay r;
    if (!h_relay_up(&r, "flood")) return;
    msb_client *c = h_connect_with(&r, 5000, 0, MSB_BACKPRESSURE_PAUSE_SOCKET);
    if (c != NULL) {
        msb_exec_request *req = new_request("true", NULL);
        msb_exec *exec = NULL;
        msb_error *err = NULL;
        CHECK_STATUS(msb_exec_start(c, req, PULL_TIMEOUT, &exec, &err), MSB_OK);
        msb_exec_request_free(req);
        int got_frames = 0, bad_frames = 0, started = 0;
        uint64_t got_bytes = 0;
        while (exec != NULL && got_frames < frames) {
            msb_exec_event *ev = NULL;
            int64_t t0 = h_now_ms();
            msb_status s = pull_event(exec, mode, PULL_TIMEOUT, &ev, &err);
            CHECK_WITHIN(t0, PULL_TIMEOUT);
            if (s != MSB_OK) {
                CHECK_MSG(0, "pull %d: %s: %s", got_frames, msb_status_str(s), msb_error_message(err));
                msb_error_free(err);
                break;
            }
            int kind = msb_exec_event_kind(ev);
            if (kind == MSB_EXEC_STARTED) {
                CHECK(got_frames == 0 && started == 0);
                started++;
            } else if (kind == MSB_EXEC_STDOUT) {
                size_t n = 0;
                const uint8_t *d = msb_exec_event_data(ev, &n);
                int whole = n == FLOOD_CHUNK;
                uint64_t seq = 0;
                for (size_t i = 0; whole && i < 8; i++) seq = (seq << 8) | d[i];
                for (size_t i = 8; whole && i < n; i++) whole = d[i] == FLOOD_BYTE;
                if (!whole || seq != (uint64_t)got_frames) bad_frames++;
                got_bytes += n;
                got_frames++;
            } else {
                CHECK_MSG(0, "unexpected event kind %d", kind);
            }
            msb_exec_event_free(ev);
            if (got_frames % 8 == 0) h_sleep_ms(5);
        }
        CHECK(started == 1);
        CHECK(bad_frames == 0);
        CHECK(got_frames == frames);
        CHECK(got_bytes == (uint64_t)frames * FLOOD_CHUNK);
        msb_counters k = counters_of(c);
        CHECK(k.bytes_queued <= QUEUED_LIMIT);
        CHECK(k.frames_received >= (uint64_t)frames + 1);
        msb_exec_free(exec);
        msb_client_free(c);
    }
    relay_stop(&r, SIGTERM);
}

/* ------------------------------------------------------------ a caller that stops reading */

/*
 * A command writes without end (`cat /dev/zero`) and a second one writes a
 * fixed amount (MSB_UNREAD_BYTES, default 64 MiB, four budgets), and the
 * caller pulls neither for MSB_UNREAD_SECONDS (default 20: longer than the
 * 5 s after which a 0.7 relay drops a client whose socket makes no
 * progress). Against each relay release (the script runs this program once
 * per release in MSB_TEST_PROFILES): the connection stays
 * usable all along (an fs stat every half second succeeds), RSS and the
 * queued bytes stay within the documented bound, and afterwards each exec
 * either delivered everything it wrote and exited 0 (exec flow control
 * paused it until the caller read) or delivered what was queued and then
 * failed alone with MSB_ERR_STREAM_OVERFLOW.
 */
static void unread_commands(enum wait_mode mode) {
    const char *profile = relay_profile();
    const int64_t seconds = h_env_int("MSB_UNREAD_SECONDS", 20);
    const uint64_t fixed_bytes = (uint64_t)h_env_int("MSB_UNREAD_BYTES", 64 * MIB);
    const int64_t stat_timeout = 2000;
    struct relay r;
    if (!h_relay_up(&r, NULL)) return;
    long rss_before = h_rss_kib();
    msb_client *c = h_connect(&r, 5000, 0);
    if (c == NULL) {
        relay_stop(&r, SIGTERM);
        return;
    }
    char count[64];
    snprintf(count, sizeof count, "count=%llu", (unsigned long long)(fixed_bytes / MIB));
    msb_exec_request *endless = new_request("cat", "/dev/zero");
    msb_exec_request *fixed = new_request("dd", "if=/dev/zero");
    if (fixed != NULL) {
        CHECK_STATUS(msb_exec_request_add_arg(fixed, "bs=1M", NULL), MSB_OK);
        CHECK_STATUS(msb_exec_request_add_arg(fixed, count, NULL), MSB_OK);
        CHECK_STATUS(msb_exec_request_add_arg(fixed, "status=none", NULL), MSB_OK);
    }
    msb_exec *execs[2] = {NULL, NULL};
    CHECK_STATUS(msb_exec_start(c, endless, PULL_TIMEOUT, &execs[0], NULL), MSB_OK);
    CHECK_STATUS(msb_exec_start(c, fixed, PULL_TIMEOUT, &execs[1], NULL), MSB_OK);
    msb_exec_request_free(endless);
    msb_exec_request_free(fixed);
    if (mode == WAIT_POLL) {
        for (int i = 0; i < 2; i++) {
            int fd = -1;
            if (execs[i] != NULL) CHECK_STATUS(msb_exec_readiness_fd(execs[i], &fd, NULL), MSB_OK);
        }
    }
    long rss_max = 0;
    uint64_t queued_max = 0;
    int stats_ok = 0;
    int64_t end = h_now_ms() + seconds * 1000;
    while (h_now_ms() < end) {
        msb_fs_entry *entry = NULL;
        msb_error *err = NULL;
        msb_status s = msb_fs_stat(c, "/", stat_timeout, &entry, &err);
        if (s == MSB_OK) stats_ok++;
        else CHECK_MSG(0, "profile %s: fs stat while not reading: %s", profile, msb_error_message(err));
        msb_fs_entry_free(entry);
        msb_error_free(err);
        h_sleep_ms(500);
        long rss = h_rss_kib();
        if (rss > rss_max) rss_max = rss;
        uint64_t q = counters_of(c).bytes_queued;
        if (q > queued_max) queued_max = q;
    }
    CHECK(stats_ok > 0);
    CHECK_MSG(queued_max <= QUEUED_LIMIT, "queued %llu > budget and one read",
              (unsigned long long)queued_max);
    /* README: budget + 16.25 MiB; a little more for this test's own heap.
     * (Sanitizers keep freed memory in quarantine: no RSS bound there.) */
    if (!h_instrumented())
        CHECK_MSG(rss_max - rss_before < 32 * 1024, "RSS grew by %ld KiB", rss_max - rss_before);
    const char *names[2] = {"endless", "fixed"};
    uint64_t overflowed_bytes = 0;
    int overflows = 0;
    for (int i = 0; i < 2; i++) {
        uint64_t bytes = 0;
        int exited = 0, code = -1;
        msb_status last = MSB_OK;
        msb_error *err = NULL;
        while (execs[i] != NULL) {
            msb_exec_event *ev = NULL;
            last = pull_event(execs[i], mode, PULL_TIMEOUT, &ev, &err);
            if (last != MSB_OK) break;
            int kind = msb_exec_event_kind(ev);
            if (kind == MSB_EXEC_STDOUT) {
                size_t n = 0;
                msb_exec_event_data(ev, &n);
                bytes += n;
            } else if (kind == MSB_EXEC_EXITED) {
                exited = 1;
                code = msb_exec_event_exit_code(ev);
            }
            msb_exec_event_free(ev);
            /* The endless command never ends by itself: as much as the
             * fixed one wrote is enough to see it was paused, not failed. */
            if (i == 0 && bytes >= fixed_bytes) break;
        }
        printf("     unread %s (profile %s, %s): %llu bytes, %s\n", names[i], profile,
               wait_mode_name(mode), (unsigned long long)bytes,
               exited ? "exited" : msb_status_str(last));
        /* 0.7.13 runs exec flow control: the window paused both commands
         * while nobody read, nothing overflowed, and the fixed one then
         * finished with every byte delivered. */
        if (strcmp(profile, "0.7.13") == 0) {
            CHECK_MSG(i == 0 ? last == MSB_OK : exited, "%s on 0.7.13: %s", names[i],
                      exited ? "exited" : msb_status_str(last));
        }
        if (exited) {
            CHECK_MSG(i == 1, "the endless command exited");
            CHECK(code == 0);
            CHECK_MSG(bytes == fixed_bytes, "%s: %llu of %llu bytes", names[i],
                      (unsigned long long)bytes, (unsigned long long)fixed_bytes);
            msb_error_free(err);
        } else if (last == MSB_OK) {
            CHECK_MSG(i == 0 && bytes >= fixed_bytes, "stopped early");
        } else {
            CHECK_STATUS(last, MSB_ERR_STREAM_OVERFLOW);
            CHECK_ERROR(err, MSB_ERR_STREAM_OVERFLOW, "memory budget");
            overflowed_bytes += bytes;
            overflows++;
        }
        msb_exec_free(execs[i]);
    }
    /* The two streams shared the budget: what they had queued when they
     * failed was delivered, nearly the whole budget between them. */
    if (overflows > 0)
        CHECK_MSG(overflowed_bytes >= (uint64_t)DEFAULT_BUDGET / 2, "only %llu bytes delivered",
                  (unsigned long long)overflowed_bytes);
    /* Still the same, usable connection. */
    check_echo_conversation(c, mode);
    msb_client_free(c);
    relay_stop(&r, SIGTERM);
}

/* ------------------------------------------------------------ the relay stops reading */

/*
 * The relay completes the handshake and never reads again, so our writes
 * fill the socket buffer and block. Every send must give up at its deadline.
 * A send that times out after writing part of a frame leaves the stream
 * unframeable, so each kind of send gets a fresh client.
 */
static void stop_reading(enum wait_mode mode) {
    const int64_t timeout = 300;
    const size_t big = 32 * MIB;
    uint8_t *data = calloc(big, 1);
    struct relay r;
    if (data == NULL || relay_start(&r, "stop-reading") != 0) {
        CHECK_MSG(0, "setup failed");
        free(data);
        return;
    }

    /* 1. stdin of an exec: the request itself fits in the socket buffer.
     * With exec flow control (0.7.13) stdin waits for core.exec.started,
     * which a relay that reads nothing never sends: the write gives up at
     * its deadline without having sent a byte, and the connection is
     * intact. Elsewhere stdin goes straight to the socket, fills it, and
     * the half-written frame fails the connection. */
    const int flow_control = h_relay_is("0.7.13");
    msb_client *c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        msb_exec_request *req = new_request("cat", NULL);
        msb_exec *exec = NULL;
        msb_error *err = NULL;
        CHECK_STATUS(msb_exec_start(c, req, timeout, &exec, &err), MSB_OK);
        msb_exec_request_free(req);
        if (exec != NULL) {
            int64_t t0 = h_now_ms();
            CHECK_STATUS(msb_exec_write_stdin(exec, data, big, timeout, &err), MSB_ERR_TIMEOUT);
            CHECK_WITHIN(t0, timeout);
            CHECK_ERROR(err, MSB_ERR_TIMEOUT,
                        flow_control ? "waiting for the process to start" : "sending a frame");
            /* The exec's own pull is not stuck either: the connection was
             * failed by the half-written frame, and the waiter learns it;
             * or (flow control) nothing arrives, and the pull says so at
             * its deadline. */
            msb_exec_event *ev = NULL;
            err = NULL;
            t0 = h_now_ms();
            msb_status s = pull_event(exec, mode, timeout, &ev, &err);
            CHECK_WITHIN(t0, timeout);
            if (flow_control) {
                CHECK_STATUS(s, MSB_NOTHING_YET);
                msb_exec_event_free(ev);
                msb_error_free(err);
            } else {
                CHECK_STATUS(s, MSB_ERR_CLOSED);
                CHECK_ERROR(err, MSB_ERR_CLOSED, "in the middle of a frame");
            }
            msb_exec_free(exec);
        } else {
            msb_error_free(err);
        }
        msb_client_free(c);
    }

    /* 2. raw sends of nearly 4 MiB until the socket is full. */
    c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        uint32_t id = msb_client_alloc_id(c);
        const size_t payload = MSB_MAX_FRAME_SIZE - 64;
        msb_status s = MSB_OK;
        msb_error *err = NULL;
        for (int i = 0; i < 64 && s == MSB_OK; i++) {
            int64_t t0 = h_now_ms();
            s = msb_client_send(c, "core.exec.stdin", id, data, payload, timeout, &err);
            CHECK_WITHIN(t0, timeout);
        }
        CHECK_STATUS(s, MSB_ERR_TIMEOUT);
        CHECK_ERROR(err, MSB_ERR_TIMEOUT, "timed out");
        msb_client_free(c);
    }

    /* 3. a whole-file write of 32 MiB. */
    c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        msb_error *err = NULL;
        int64_t t0 = h_now_ms();
        CHECK_STATUS(msb_fs_write_file(c, "/big.bin", data, big, -1, timeout, &err), MSB_ERR_TIMEOUT);
        CHECK_WITHIN(t0, timeout);
        CHECK_ERROR(err, MSB_ERR_TIMEOUT, "timed out");
        msb_client_free(c);
    }

    /* 4. a request whose small frame is sent but never answered. */
    c = h_connect(&r, 5000, 0);
    if (c != NULL) {
        msb_error *err = NULL;
        msb_message *reply = NULL;
        int64_t t0 = h_now_ms();
        CHECK_STATUS(msb_client_request(c, "core.fs.request", NULL, 0, timeout, &reply, &err),
                     MSB_ERR_TIMEOUT);
        CHECK_WITHIN(t0, timeout);
        CHECK_ERROR(err, MSB_ERR_TIMEOUT, "timed out");
        msb_client_free(c);
    }
    free(data);
    relay_stop(&r, SIGTERM);
}

/* ------------------------------------------------------------ scripted peer */

/* Minimal CBOR for frames: heads of text and byte strings. */
static size_t put_head(uint8_t *out, uint8_t major, size_t len) {
    if (len < 24) {
        out[0] = (uint8_t)(major | len);
        return 1;
    }
    if (len < 256) {
        out[0] = (uint8_t)(major | 24);
        out[1] = (uint8_t)len;
        return 2;
    }
    out[0] = (uint8_t)(major | 26);
    for (int i = 0; i < 4; i++) out[1 + i] = (uint8_t)(len >> (24 - 8 * i));
    return 5;
}

static void put_u32(uint8_t *out, uint32_t v) {
    for (int i = 0; i < 4; i++) out[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* The scripted peer imitates the relay release of this run: the legacy
 * handshake and generation 1 for 0.3.14; the current handshake
 * ([id_start][id_end_exclusive], PROTOCOL-GENERATIONS.md §1.2) with
 * generation 7 for 0.6.14 and 10 for 0.7.13. Its frames carry that `v`. */
static uint8_t scripted_generation(void) {
    if (h_relay_legacy()) return 1;
    return h_relay_is("0.6.14") ? 7 : 10;
}

/* Encodes [len][id][flags]{"v": generation, "t": type, "p": payload} into
 * out (which must be large enough); returns its size. */
static size_t put_frame(uint8_t *out, const char *type, uint32_t id, uint8_t flags,
                        const uint8_t *payload, size_t payload_len) {
    size_t n = 9;
    out[n++] = 0xa3;
    out[n++] = 0x61;
    out[n++] = 'v';
    n += put_head(out + n, 0x00, scripted_generation());
    out[n++] = 0x61;
    out[n++] = 't';
    n += put_head(out + n, 0x60, strlen(type));
    memcpy(out + n, type, strlen(type));
    n += strlen(type);
    out[n++] = 0x61;
    out[n++] = 'p';
    n += put_head(out + n, 0x40, payload_len);
    if (payload_len > 0) memcpy(out + n, payload, payload_len); /* memcpy(NULL, 0) is UB */
    n += payload_len;
    put_u32(out, (uint32_t)(n - 4));
    put_u32(out + 4, id);
    out[8] = flags;
    return n;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Appends a CBOR text string. */
static size_t put_text(uint8_t *out, const char *text) {
    size_t n = put_head(out, 0x60, strlen(text));
    memcpy(out + n, text, strlen(text));
    return n + strlen(text);
}

/* Appends `key: value` with an unsigned value. */
static size_t put_uint_entry(uint8_t *out, const char *key, uint32_t value) {
    size_t n = put_text(out, key);
    return n + put_head(out + n, 0x00, value);
}

/* The core.ready payload of the release imitated: the three timings
 * (1, 2, 3); from 0.6.14 on the agent's version; on 0.7.13 also the exec
 * limits (its defaults, §9.7), which switch the library's exec flow control
 * on, in the indefinite-length map 0.7.8+ relays write (§9.3). */
static size_t put_ready_payload(uint8_t *out) {
    size_t n = 0;
    uint8_t generation = scripted_generation();
    if (generation == 1) out[n++] = 0xa3;
    else if (generation == 7) out[n++] = 0xa4;
    else out[n++] = 0xbf;
    n += put_uint_entry(out + n, "boot_time_ns", 1);
    n += put_uint_entry(out + n, "init_time_ns", 2);
    n += put_uint_entry(out + n, "ready_time_ns", 3);
    if (generation == 1) return n;
    n += put_text(out + n, "agent_version");
    n += put_text(out + n, relay_profile());
    if (generation == 7) return n;
    n += put_text(out + n, "exec_limits");
    out[n++] = 0xa5;
    n += put_uint_entry(out + n, "max_executions", 128);
    n += put_uint_entry(out + n, "input_limit", 64 * 1024);
    n += put_uint_entry(out + n, "output_limit", MIB);
    n += put_uint_entry(out + n, "stdin_chunk_size", 16 * 1024);
    n += put_uint_entry(out + n, "output_chunk_size", 16 * 1024);
    out[n++] = 0xff;
    return n;
}

/* The first slot's ids: [1, 268435455) on the legacy form, where the
 * handshake only carries the offset 0; [1, 33554431) on the current one. */
#define SCRIPTED_LEGACY_END 268435455u
#define SCRIPTED_CURRENT_END 33554431u

/* Connects a client to our end of a socketpair after writing a valid
 * handshake (slot 0) in the form of the release imitated into it, and checks
 * what the client made of it. Returns the client; *peer is our end. */
static msb_client *scripted_connect(int *peer) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return NULL;
    int legacy = h_relay_legacy();
    uint8_t ready[256];
    size_t ready_len = put_ready_payload(ready);
    uint8_t hs[384];
    size_t n = 0;
    if (legacy) {
        put_u32(hs, 0); /* id_offset */
        n = 4;
    } else {
        put_u32(hs, 1); /* id_start */
        put_u32(hs + 4, SCRIPTED_CURRENT_END);
        n = 8;
    }
    n += put_frame(hs + n, "core.ready", 0, 0, ready, ready_len);
    msb_client *c = NULL;
    msb_error *err = NULL;
    if (write_all(sv[1], hs, n) != 0 || msb_client_connect_fd(sv[0], NULL, &c, &err) != MSB_OK) {
        CHECK_MSG(0, "scripted connect: %s", msb_error_message(err));
        msb_error_free(err);
        close(sv[0]);
        close(sv[1]);
        return NULL;
    }
    close(sv[0]); /* the library holds its own duplicate */
    msb_ready_timings t;
    CHECK_STATUS(msb_client_ready_timings(c, &t), MSB_OK);
    CHECK(t.boot_time_ns == 1 && t.init_time_ns == 2 && t.ready_time_ns == 3);
    CHECK(msb_client_is_legacy(c) == legacy);
    CHECK(msb_client_peer_generation(c) == scripted_generation());
    CHECK(strcmp(msb_client_agent_version(c), legacy ? "" : relay_profile()) == 0);
    uint32_t start = 0, end = 0;
    CHECK_STATUS(msb_client_id_range(c, &start, &end), MSB_OK);
    CHECK(start == 1 && end == (legacy ? SCRIPTED_LEGACY_END : SCRIPTED_CURRENT_END));
    *peer = sv[1];
    return c;
}

static uint32_t get_u32(const uint8_t *in) {
    return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
}

/*
 * Reads the client's core.exec.request off the scripted peer's end and
 * checks its `v`: the client took the handshake for what the peer meant,
 * 1 on the legacy form, the ready frame's generation on the current one
 * (10 only with the exec limits that turn flow control on, which 0.7.13's
 * ready carries).
 */
static void check_request_generation(int peer, uint32_t id) {
    static const char type[] = "core.exec.request";
    uint8_t frame[1024];
    size_t have = 0, want = 4;
    while (have < want && h_poll_readable(peer, PULL_TIMEOUT)) {
        ssize_t n = read(peer, frame + have, want - have);
        if (n <= 0) break;
        have += (size_t)n;
        if (have == 4) want = 4 + get_u32(frame) < sizeof frame ? 4 + get_u32(frame) : sizeof frame;
    }
    /* [len][id][flags] {"v": v, "t": "core.exec.request", ...}: the
     * library writes the envelope's keys in that order. */
    CHECK_MSG(have == want && have >= 13 + 2 + sizeof type, "read %zu of %zu bytes", have, want);
    if (have != want || have < 13 + 2 + sizeof type) return;
    CHECK(get_u32(frame + 4) == id);
    CHECK(frame[9] == 0xa3 && frame[10] == 0x61 && frame[11] == 'v');
    CHECK_MSG(frame[12] == scripted_generation(), "request v = %u, want %u", frame[12],
              scripted_generation());
    CHECK(frame[13] == 0x61 && frame[14] == 't' && frame[15] == (0x60 | (sizeof type - 1)));
    CHECK(memcmp(frame + 16, type, sizeof type - 1) == 0);
}

struct waiter {
    msb_subscription *sub;
    enum wait_mode mode;
    int messages;
    msb_status status;
    msb_error *err;
    int64_t returned_at;
};

static void *waiter_main(void *arg) {
    struct waiter *w = arg;
    for (;;) {
        msb_message *m = NULL;
        w->status = pull_message(w->sub, w->mode, 10000, &m, &w->err);
        if (w->status != MSB_OK) break;
        w->messages++;
        msb_message_free(m);
    }
    w->returned_at = h_now_ms();
    return NULL;
}

enum bad_bytes { BAD_OVERSIZE, BAD_SHORT, BAD_CBOR, BAD_MISSING_TYPE, BAD_ARRAY_BODY, BAD_EOF_MID_FRAME };

/*
 * Waiters are already blocked (three threads, one per subscription) when a
 * valid message for the first one and then the bad bytes arrive. Every waiter
 * wakes promptly with the error; the first gets its message before it.
 */
static void scripted_bad_bytes(enum wait_mode mode, enum bad_bytes bad, msb_status code,
                               const char *needle) {
    int peer = -1;
    msb_client *c = scripted_connect(&peer);
    if (c == NULL) return;
    enum { N = 3 };
    struct waiter w[N];
    pthread_t threads[N];
    for (int i = 0; i < N; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].mode = mode;
        CHECK_STATUS(msb_client_subscribe(c, msb_client_alloc_id(c), &w[i].sub, NULL), MSB_OK);
        pthread_create(&threads[i], NULL, waiter_main, &w[i]);
    }
    h_sleep_ms(150); /* let every waiter block */

    uint8_t buf[256];
    memset(buf, 0, sizeof buf);
    static const uint8_t hello[] = {0xa1, 0x64, 'd', 'a', 't', 'a', 0x45, 'h', 'e', 'l', 'l', 'o'};
    size_t n = put_frame(buf, "core.exec.stdout", msb_subscription_id(w[0].sub), 0, hello, sizeof hello);
    switch (bad) {
    case BAD_OVERSIZE: put_u32(buf + n, MSB_MAX_FRAME_SIZE + 1); n += 4 + 12; break;
    case BAD_SHORT: put_u32(buf + n, 3); n += 4 + 3; break;
    case BAD_CBOR:
        put_u32(buf + n, 8);
        memset(buf + n + 4, 0, 5);
        memset(buf + n + 9, 0xff, 3);
        n += 12;
        break;
    case BAD_MISSING_TYPE: {
        /* A map without "t": {"v": 1, "p": h''} */
        static const uint8_t body[] = {0xa2, 0x61, 'v', 0x01, 0x61, 'p', 0x40};
        put_u32(buf + n, 5 + sizeof body);
        memset(buf + n + 4, 0, 5);
        memcpy(buf + n + 9, body, sizeof body);
        n += 9 + sizeof body;
        break;
    }
    case BAD_ARRAY_BODY: {
        /* An array where the {v, t, p} map belongs. */
        static const uint8_t body[] = {0x83, 0x01, 0x61, 't', 0x40};
        put_u32(buf + n, 5 + sizeof body);
        memset(buf + n + 4, 0, 5);
        memcpy(buf + n + 9, body, sizeof body);
        n += 9 + sizeof body;
        break;
    }
    case BAD_EOF_MID_FRAME: n += put_frame(buf + n, "core.exec.stdout", 1, 0, hello, sizeof hello) / 2; break;
    }
    int64_t sent_at = h_now_ms();
    CHECK(write_all(peer, buf, n) == 0);
    if (bad == BAD_EOF_MID_FRAME) {
        close(peer);
        peer = -1;
    }
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        CHECK_MSG(w[i].returned_at - sent_at <= h_slack_ms(), "waiter %d woke after %lld ms", i,
                  (long long)(w[i].returned_at - sent_at));
        CHECK(w[i].messages == (i == 0 ? 1 : 0));
        CHECK_STATUS(w[i].status, code);
        CHECK_ERROR(w[i].err, code, needle);
        msb_subscription_free(w[i].sub);
    }
    msb_client_free(c);
    if (peer >= 0) close(peer);
}

/*
 * An unknown message type on an exec's id, sent when nothing else is queued:
 * the exec pull skips it (so a pull finds nothing yet), and in poll mode the
 * readiness fd must not claim there is something to pull (it is "readable
 * exactly while a pull would not return MSB_NOTHING_YET"). A real message
 * after it is delivered, and the unknown one is counted.
 */
static void scripted_unknown_type(enum wait_mode mode) {
    int peer = -1;
    msb_client *c = scripted_connect(&peer);
    if (c == NULL) return;
    msb_exec_request *req = new_request("true", NULL);
    msb_exec *exec = NULL;
    CHECK_STATUS(msb_exec_start(c, req, PULL_TIMEOUT, &exec, NULL), MSB_OK);
    msb_exec_request_free(req);
    if (exec != NULL) check_request_generation(peer, msb_exec_id(exec));
    if (exec != NULL) {
        uint8_t buf[128];
        memset(buf, 0, sizeof buf);
        size_t n = put_frame(buf, "core.bogus.type", msb_exec_id(exec), 0, NULL, 0);
        CHECK(write_all(peer, buf, n) == 0);
        msb_exec_event *ev = NULL;
        msb_error *err = NULL;
        int64_t t0 = h_now_ms();
        CHECK_STATUS(pull_event(exec, mode, 300, &ev, &err), MSB_NOTHING_YET);
        CHECK_WITHIN(t0, 300);
        msb_exec_event_free(ev);
        msb_error_free(err);
        CHECK(counters_of(c).unknown_type == 1);

        static const uint8_t hello[] = {0xa1, 0x64, 'd', 'a', 't', 'a', 0x45, 'h', 'e', 'l', 'l', 'o'};
        n = put_frame(buf, "core.exec.stdout", msb_exec_id(exec), 0, hello, sizeof hello);
        CHECK(write_all(peer, buf, n) == 0);
        ev = NULL;
        CHECK_STATUS(pull_event(exec, mode, PULL_TIMEOUT, &ev, NULL), MSB_OK);
        size_t len = 0;
        const uint8_t *d = msb_exec_event_data(ev, &len);
        CHECK(msb_exec_event_kind(ev) == MSB_EXEC_STDOUT && len == 5 && memcmp(d, "hello", 5) == 0);
        msb_exec_event_free(ev);
        msb_exec_free(exec);
    }
    msb_client_free(c);
    close(peer);
}

#define SCRIPTED(fn, bad, code, needle)                                       \
    static void fn##_blocking(void) { scripted_bad_bytes(WAIT_BLOCKING, bad, code, needle); } \
    static void fn##_poll(void) { scripted_bad_bytes(WAIT_POLL, bad, code, needle); }

SCRIPTED(scripted_oversize, BAD_OVERSIZE, MSB_ERR_PROTOCOL, "exceeds")
SCRIPTED(scripted_short, BAD_SHORT, MSB_ERR_PROTOCOL, "shorter")
SCRIPTED(scripted_bad_cbor, BAD_CBOR, MSB_ERR_PROTOCOL, "malformed frame body")
SCRIPTED(scripted_missing_type, BAD_MISSING_TYPE, MSB_ERR_PROTOCOL, "missing field `t`")
SCRIPTED(scripted_array_body, BAD_ARRAY_BODY, MSB_ERR_PROTOCOL, "malformed frame body")
SCRIPTED(scripted_eof_mid_frame, BAD_EOF_MID_FRAME, MSB_ERR_PROTOCOL, "bytes cut off after")

/* ------------------------------------------------------------ main */

#define BOTH(fn)                                                              \
    static void fn##_blocking(void) { fn(WAIT_BLOCKING); }                    \
    static void fn##_poll(void) { fn(WAIT_POLL); }

BOTH(unknown_type)
BOTH(out_of_range_id)
BOTH(wrong_payload)
BOTH(close_mid_exec)
BOTH(flood_not_reading)
BOTH(flood_slow_reader)
BOTH(stop_reading)
BOTH(unread_commands)
BOTH(scripted_unknown_type)

#define RUN_BOTH(name, fn)                                                    \
    do {                                                                      \
        h_run(name "/blocking", fn##_blocking);                               \
        h_run(name "/poll", fn##_poll);                                       \
    } while (0)

int main(void) {
    /* A relay that hangs up must not kill us with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    RUN_BOTH("oversize-frame", oversize_frame);
    RUN_BOTH("truncated-frame", truncated_frame);
    RUN_BOTH("short-frame", short_frame);
    RUN_BOTH("bad-cbor", bad_cbor);
    RUN_BOTH("bad-body-shape", bad_body_shape);
    RUN_BOTH("unknown-type", unknown_type);
    RUN_BOTH("out-of-range-id", out_of_range_id);
    RUN_BOTH("wrong-payload", wrong_payload);
    h_run("no-handshake/path", no_handshake_path);
    h_run("no-handshake/fd", no_handshake_fd);
    h_run("stall-after-id/path", stall_after_id_path);
    h_run("stall-after-id/fd", stall_after_id_fd);
    h_run("not-ready-first/path", not_ready_first_path);
    h_run("not-ready-first/fd", not_ready_first_fd);
    h_run("close-in-handshake/path", close_in_handshake_path);
    h_run("close-in-handshake/fd", close_in_handshake_fd);
    RUN_BOTH("close-mid-exec", close_mid_exec);
    RUN_BOTH("flood/not-reading", flood_not_reading);
    RUN_BOTH("flood/slow-reader", flood_slow_reader);
    RUN_BOTH("stop-reading", stop_reading);
    RUN_BOTH("unread-commands", unread_commands);
    RUN_BOTH("scripted/oversize", scripted_oversize);
    RUN_BOTH("scripted/short", scripted_short);
    RUN_BOTH("scripted/bad-cbor", scripted_bad_cbor);
    RUN_BOTH("scripted/missing-type", scripted_missing_type);
    RUN_BOTH("scripted/array-body", scripted_array_body);
    RUN_BOTH("scripted/eof-mid-frame", scripted_eof_mid_frame);
    RUN_BOTH("scripted/unknown-type", scripted_unknown_type);
    return h_finish();
}
