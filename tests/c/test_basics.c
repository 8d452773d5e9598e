/* Status codes, errors, buffers, versions, options and every way to connect. */
#include "test.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Invalid UTF-8: a lone continuation byte and an overlong encoding. */
#define BAD_UTF8 "bad\x80\xc0\xaf"

static const msb_status all_codes[] = {
    MSB_OK, MSB_NOTHING_YET, MSB_ENDED, MSB_ERR_INVALID_ARGUMENT, MSB_ERR_NULL_POINTER, MSB_ERR_INVALID_UTF8,
    MSB_ERR_TOO_LARGE, MSB_ERR_NOT_FOUND, MSB_ERR_IO, MSB_ERR_TIMEOUT, MSB_ERR_HANDSHAKE, MSB_ERR_CLOSED,
    MSB_ERR_PROTOCOL, MSB_ERR_ID_UNAVAILABLE, MSB_ERR_GUEST, MSB_ERR_PANIC, MSB_ERR_WRONG_STATE,
    MSB_ERR_UNSUPPORTED, MSB_ERR_RELAY_BUSY, MSB_ERR_IDS_EXHAUSTED, MSB_ERR_EXEC_FAILED, MSB_ERR_AGENT,
};
#define CODE_COUNT (sizeof all_codes / sizeof all_codes[0])

static void test_status_code_values_are_stable(void) {
    /* These numbers are ABI: compiled callers (and Go/Zig bindings) hold them. */
    CHECK_INT(MSB_OK, 0);
    CHECK_INT(MSB_NOTHING_YET, 1);
    CHECK_INT(MSB_ENDED, 2);
    for (int i = 3; i < (int)CODE_COUNT; i++) CHECK_INT(all_codes[i], -(i - 2));
    CHECK_INT(sizeof(msb_status), 4);
    CHECK_INT(MSB_FLAG_TERMINAL, 1);
    CHECK_INT(MSB_FLAG_SESSION_START, 2);
    CHECK_INT(MSB_FLAG_SHUTDOWN, 4);
    CHECK_INT(MSB_MAX_FRAME_SIZE, 4194304);
    CHECK_INT(MSB_TIMEOUT_INFINITE, -1);
}

static void test_status_str_describes_every_code(void) {
    const char *unknown = msb_status_str(12345);
    REQUIRE(unknown != NULL);
    CHECK(unknown[0] != '\0');
    CHECK_STR(msb_status_str(-9999), unknown);
    CHECK_STR(msb_status_str(INT32_MIN), unknown);
    for (size_t i = 0; i < CODE_COUNT; i++) {
        const char *s = msb_status_str(all_codes[i]);
        REQUIRE(s != NULL);
        CHECK(s[0] != '\0');
        if (strcmp(s, unknown) == 0) test_fail(__FILE__, __LINE__, "code %d has the generic text", all_codes[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s, msb_status_str(all_codes[j])) == 0)
                test_fail(__FILE__, __LINE__, "codes %d and %d share \"%s\"", all_codes[i], all_codes[j], s);
    }
    /* Static: the same pointer every time, usable from any thread. */
    CHECK(msb_status_str(MSB_ERR_IO) == msb_status_str(MSB_ERR_IO));
}

static void test_error_object_code_and_message(void) {
    msb_exec_request *req = (msb_exec_request *)&req; /* sentinel: must stay untouched */
    msb_error *err = NULL;
    CHECK_INT(msb_exec_request_new("", &req, &err), MSB_ERR_INVALID_ARGUMENT);
    CHECK(req == (msb_exec_request *)&req);
    REQUIRE(err != NULL);
    CHECK_INT(msb_error_code(err), MSB_ERR_INVALID_ARGUMENT);
    CHECK(strlen(msb_error_message(err)) > 0);
    msb_error_free(err);

    /* err_out is optional. */
    CHECK_INT(msb_exec_request_new(NULL, &req, NULL), MSB_ERR_NULL_POINTER);
    CHECK(req == (msb_exec_request *)&req);

    msb_error_free(NULL);
}

static void test_bytes_accessors_on_null(void) {
    CHECK(msb_bytes_data(NULL) == NULL);
    CHECK_INT(msb_bytes_len(NULL), 0);
    msb_bytes_free(NULL);
}

/* ---- every accessor given NULL: NULL, 0 or false out (README "How the API
 * behaves"). One thunk per accessor, by shape, so that one loop checks them
 * all; `scripts/test-c.sh` fails when the header gains an accessor that is
 * not in this table. */

struct null_outcome {
    const void *pointer; /* pointer-returning accessors */
    long long number;    /* number- and bool-returning accessors */
    size_t len;          /* what a *len_out parameter received (99 if untouched) */
    int64_t time;        /* what a time out-parameter holds (42: untouched) */
};

#define NULL_POINTER_ACCESSOR(fn)                                                                  \
    static struct null_outcome null_##fn(void) {                                                   \
        return (struct null_outcome){.pointer = fn(NULL), .len = 0, .time = 42};                   \
    }
#define NULL_SLICE_ACCESSOR(fn)                                                                    \
    static struct null_outcome null_##fn(void) {                                                   \
        size_t len = 99;                                                                           \
        const void *p = fn(NULL, &len);                                                            \
        return (struct null_outcome){.pointer = p, .len = len, .time = 42};                        \
    }
#define NULL_NUMBER_ACCESSOR(fn)                                                                   \
    static struct null_outcome null_##fn(void) {                                                   \
        return (struct null_outcome){.number = (long long)fn(NULL), .time = 42};                   \
    }
#define NULL_TIME_ACCESSOR(fn)                                                                     \
    static struct null_outcome null_##fn(void) {                                                   \
        int64_t t = 42;                                                                            \
        bool got = fn(NULL, &t);                                                                   \
        return (struct null_outcome){.number = got, .time = t};                                    \
    }

NULL_POINTER_ACCESSOR(msb_error_message)
NULL_NUMBER_ACCESSOR(msb_error_code)
NULL_NUMBER_ACCESSOR(msb_error_errno)
NULL_POINTER_ACCESSOR(msb_bytes_data)
NULL_NUMBER_ACCESSOR(msb_bytes_len)
NULL_NUMBER_ACCESSOR(msb_client_id_offset)
NULL_NUMBER_ACCESSOR(msb_client_generation)
NULL_NUMBER_ACCESSOR(msb_client_peer_generation)
NULL_NUMBER_ACCESSOR(msb_client_is_legacy)
NULL_POINTER_ACCESSOR(msb_client_agent_version)
NULL_NUMBER_ACCESSOR(msb_client_alloc_id)
NULL_NUMBER_ACCESSOR(msb_client_open_files)
NULL_NUMBER_ACCESSOR(msb_subscription_id)
NULL_NUMBER_ACCESSOR(msb_message_id)
NULL_NUMBER_ACCESSOR(msb_message_flags)
NULL_POINTER_ACCESSOR(msb_message_type)
NULL_SLICE_ACCESSOR(msb_message_payload)
NULL_NUMBER_ACCESSOR(msb_exec_id)
NULL_NUMBER_ACCESSOR(msb_exec_event_kind)
NULL_POINTER_ACCESSOR(msb_exec_event_failure_kind)
NULL_NUMBER_ACCESSOR(msb_exec_event_errno)
NULL_POINTER_ACCESSOR(msb_exec_event_message)
NULL_POINTER_ACCESSOR(msb_exec_event_stage)
NULL_NUMBER_ACCESSOR(msb_exec_event_pid)
NULL_NUMBER_ACCESSOR(msb_exec_event_exit_code)
NULL_SLICE_ACCESSOR(msb_exec_event_data)
NULL_NUMBER_ACCESSOR(msb_run_output_exit_code)
NULL_SLICE_ACCESSOR(msb_run_output_stdout)
NULL_SLICE_ACCESSOR(msb_run_output_stderr)
NULL_NUMBER_ACCESSOR(msb_run_output_truncated)
NULL_POINTER_ACCESSOR(msb_fs_entry_as_view)
NULL_POINTER_ACCESSOR(msb_fs_entry_path)
NULL_NUMBER_ACCESSOR(msb_fs_entry_kind)
NULL_NUMBER_ACCESSOR(msb_fs_entry_size)
NULL_NUMBER_ACCESSOR(msb_fs_entry_mode)
NULL_TIME_ACCESSOR(msb_fs_entry_mtime)
NULL_NUMBER_ACCESSOR(msb_fs_entry_uid)
NULL_NUMBER_ACCESSOR(msb_fs_entry_gid)
NULL_TIME_ACCESSOR(msb_fs_entry_atime)
NULL_NUMBER_ACCESSOR(msb_fs_entries_len)
NULL_NUMBER_ACCESSOR(msb_tcp_stream_id)

/* Accessors with a second argument: NULL object, valid other argument. */
static struct null_outcome null_msb_client_supports(void) {
    return (struct null_outcome){.number = msb_client_supports(NULL, "core.exec.request"), .time = 42};
}
static struct null_outcome null_msb_fs_entries_get(void) {
    return (struct null_outcome){.pointer = msb_fs_entries_get(NULL, 0), .time = 42};
}

#define NULL_CASE(fn) {#fn, null_##fn}
static const struct {
    const char *name;
    struct null_outcome (*call)(void);
} null_accessors[] = {
    NULL_CASE(msb_error_message),         NULL_CASE(msb_error_code),
    NULL_CASE(msb_error_errno),           NULL_CASE(msb_bytes_data),
    NULL_CASE(msb_bytes_len),             NULL_CASE(msb_client_id_offset),
    NULL_CASE(msb_client_generation),     NULL_CASE(msb_client_peer_generation),
    NULL_CASE(msb_client_is_legacy),      NULL_CASE(msb_client_agent_version),
    NULL_CASE(msb_client_alloc_id),       NULL_CASE(msb_client_open_files),
    NULL_CASE(msb_client_supports),       NULL_CASE(msb_subscription_id),
    NULL_CASE(msb_message_id),            NULL_CASE(msb_message_flags),
    NULL_CASE(msb_message_type),          NULL_CASE(msb_message_payload),
    NULL_CASE(msb_exec_id),               NULL_CASE(msb_exec_event_kind),
    NULL_CASE(msb_exec_event_failure_kind), NULL_CASE(msb_exec_event_errno),
    NULL_CASE(msb_exec_event_message),    NULL_CASE(msb_exec_event_stage),
    NULL_CASE(msb_exec_event_pid),        NULL_CASE(msb_exec_event_exit_code),
    NULL_CASE(msb_exec_event_data),       NULL_CASE(msb_run_output_exit_code),
    NULL_CASE(msb_run_output_stdout),     NULL_CASE(msb_run_output_stderr),
    NULL_CASE(msb_run_output_truncated),  NULL_CASE(msb_fs_entry_as_view),
    NULL_CASE(msb_fs_entry_path),         NULL_CASE(msb_fs_entry_kind),
    NULL_CASE(msb_fs_entry_size),         NULL_CASE(msb_fs_entry_mode),
    NULL_CASE(msb_fs_entry_mtime),        NULL_CASE(msb_fs_entry_uid),
    NULL_CASE(msb_fs_entry_gid),          NULL_CASE(msb_fs_entry_atime),
    NULL_CASE(msb_fs_entries_len),        NULL_CASE(msb_fs_entries_get),
    NULL_CASE(msb_tcp_stream_id),
};

static void test_every_accessor_on_null(void) {
    for (size_t i = 0; i < sizeof null_accessors / sizeof null_accessors[0]; i++) {
        struct null_outcome o = null_accessors[i].call();
        if (o.pointer != NULL || o.number != 0 || o.len != 0 || o.time != 42)
            test_fail(__FILE__, __LINE__, "%s(NULL) gave pointer %p, value %lld, length %zu, time %lld",
                      null_accessors[i].name, o.pointer, o.number, o.len, (long long)o.time);
    }
    /* The rule is about the object: a live object gives "" and non-NULL
     * empty buffers, never NULL, where a pointer is promised. */
    msb_error *err = NULL;
    msb_exec_request *req = NULL;
    CHECK_INT(msb_exec_request_new("", &req, &err), MSB_ERR_INVALID_ARGUMENT);
    REQUIRE(err);
    CHECK(msb_error_message(err) != NULL);
    msb_error_free(err);
}

static void test_version_macros_match_runtime(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", MSB_VERSION_MAJOR, MSB_VERSION_MINOR, MSB_VERSION_PATCH);
    CHECK_STR(msb_version(), expected);
    CHECK_INT(MSB_VERSION_NUMBER, MSB_VERSION_MAJOR * 10000 + MSB_VERSION_MINOR * 100 + MSB_VERSION_PATCH);
    CHECK(MSB_VERSION_AT_LEAST(0, 0, 0));
    CHECK(MSB_VERSION_AT_LEAST(MSB_VERSION_MAJOR, MSB_VERSION_MINOR, MSB_VERSION_PATCH));
    CHECK(!MSB_VERSION_AT_LEAST(MSB_VERSION_MAJOR, MSB_VERSION_MINOR, MSB_VERSION_PATCH + 1));
    CHECK(!MSB_VERSION_AT_LEAST(MSB_VERSION_MAJOR, MSB_VERSION_MINOR + 1, 0));
    CHECK(!MSB_VERSION_AT_LEAST(MSB_VERSION_MAJOR + 1, 0, 0));
}

static void test_connect_options(void) {
    CHECK_INT(msb_connect_options_new(NULL), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_connect_options_set_timeout_ms(NULL, 100), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_connect_options_set_memory_budget(NULL, 1 << 20), MSB_ERR_NULL_POINTER);
    msb_connect_options_free(NULL);

    msb_connect_options *opts = NULL;
    REQUIRE(msb_connect_options_new(&opts) == MSB_OK && opts);
    /* A connection always has a deadline: 0 and every negative value,
     * MSB_TIMEOUT_INFINITE included, are refused. */
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, 0), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, MSB_TIMEOUT_INFINITE), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, -2), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, INT64_MIN), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, INT64_MAX), MSB_OK);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, 1), MSB_OK);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, 5000), MSB_OK);
    CHECK_INT(msb_connect_options_set_memory_budget(opts, 65535), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_connect_options_set_memory_budget(opts, 0), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_connect_options_set_memory_budget(opts, 65536), MSB_OK);
    CHECK_INT(msb_connect_options_set_backpressure(NULL, MSB_BACKPRESSURE_PAUSE_SOCKET),
              MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_connect_options_set_backpressure(opts, 7), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_connect_options_set_backpressure(opts, MSB_BACKPRESSURE_FAIL_STREAM), MSB_OK);
    CHECK_INT(msb_connect_options_set_backpressure(opts, MSB_BACKPRESSURE_PAUSE_SOCKET), MSB_OK);

    /* With the socket paused while the budget is full, the smallest budget
     * carries a 1 MiB output however slowly the caller pulls. (Failing the
     * stream instead, the default, needs a budget above what a slow
     * caller leaves unread: README, "Memory".) */
    msb_client *c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(env_socket(), opts, &c, ERR))) {
        msb_exec_request *req = make_request("head", "-c", "1048576", "/dev/zero", NULL);
        msb_run_output *out = NULL;
        if (EXPECT(MSB_OK, msb_exec_run(c, req, 2 << 20, T_MS, &out, ERR))) {
            size_t len = 0;
            msb_run_output_stdout(out, &len);
            CHECK_INT(len, 1048576);
            CHECK(!msb_run_output_truncated(out));
            CHECK_INT(msb_run_output_exit_code(out), 0);
        }
        msb_run_output_free(out);
        msb_exec_request_free(req);
    }
    msb_client_free(c);
    msb_connect_options_free(opts);
}

static void test_connect_argument_errors(void) {
    msb_client *c = (msb_client *)&c; /* sentinel: outputs are written only on success */
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_connect(NULL, NULL, &c, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_connect(env_socket(), NULL, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_client_connect("/tmp/" BAD_UTF8, NULL, &c, ERR));
    EXPECT(MSB_ERR_NOT_FOUND, msb_client_connect("/nonexistent/msb-test/agent.sock", NULL, &c, ERR));

    /* sun_path holds 108 bytes including the terminating NUL. */
    char long_path[300];
    memset(long_path, 'a', sizeof long_path);
    long_path[0] = '/';
    long_path[109] = '\0';
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_connect(long_path, NULL, &c, ERR));
    long_path[299] = '\0';
    memset(long_path + 109, 'b', 190);
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_connect(long_path, NULL, &c, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_connect_sandbox(long_path + 1, NULL, &c, ERR));
    CHECK(c == (msb_client *)&c);
}

static void test_connect_to_socket_nobody_listens_on(void) {
    /* A bound but never listening socket: connect(2) is refused. */
    char dir[] = "/tmp/msb-ctest-nolisten.XXXXXX";
    REQUIRE(mkdtemp(dir));
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s/s.sock", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    CHECK(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    msb_client *c = NULL;
    EXPECT(MSB_ERR_NOT_FOUND, msb_client_connect(addr.sun_path, NULL, &c, ERR));
    close(fd);
    unlink(addr.sun_path);
    rmdir(dir);
}

/* Points $MSB_HOME at a temporary directory for the length of one test. */
struct msb_home {
    char dir[64];
    char *saved;
};

static void msb_home_enter(struct msb_home *h) {
    snprintf(h->dir, sizeof h->dir, "/tmp/msb-ctest-home.XXXXXX");
    if (!mkdtemp(h->dir)) abort();
    const char *old = getenv("MSB_HOME");
    h->saved = old ? strdup(old) : NULL;
    setenv("MSB_HOME", h->dir, 1);
}

static void msb_home_leave(struct msb_home *h) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", h->dir);
    if (system(cmd) != 0) test_fail(__FILE__, __LINE__, "could not remove %s", h->dir);
    if (h->saved) setenv("MSB_HOME", h->saved, 1);
    else unsetenv("MSB_HOME");
    free(h->saved);
}

static void test_connect_sandbox_by_name(void) {
    struct msb_home home;
    msb_home_enter(&home);
    msb_client *c = NULL;
    EXPECT(MSB_ERR_NOT_FOUND, msb_client_connect_sandbox("no-such-sandbox", NULL, &c, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_connect_sandbox(NULL, NULL, &c, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_connect_sandbox("devbox", NULL, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_client_connect_sandbox(BAD_UTF8, NULL, &c, ERR));
    CHECK(c == NULL);

    /* A name resolves to $MSB_HOME/sandboxes/NAME/runtime/agent.sock. */
    char path[256];
    snprintf(path, sizeof path, "%s/sandboxes/devbox/runtime", home.dir);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    CHECK(system(cmd) == 0);
    strcat(path, "/agent.sock");
    CHECK(symlink(env_socket(), path) == 0);
    if (EXPECT(MSB_OK, msb_client_connect_sandbox("devbox", NULL, &c, ERR))) {
        msb_fs_entry *e = NULL;
        EXPECT(MSB_OK, msb_fs_stat(c, "/", T_MS, &e, ERR));
        CHECK_INT(msb_fs_entry_kind(msb_fs_entry_as_view(e)), MSB_FS_KIND_DIR);
        msb_fs_entry_free(e);
    }
    msb_client_free(c);
    msb_home_leave(&home);
}

static int connect_unix(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void test_connect_fd_uses_its_own_duplicate(void) {
    int fd = connect_unix(env_socket());
    REQUIRE(fd >= 0);
    msb_client *c = NULL;
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_connect_fd(fd, NULL, NULL, ERR));
    REQUIRE_OK(msb_client_connect_fd(fd, NULL, &c, ERR));
    /* The caller keeps its descriptor: closing it must not affect the client. */
    CHECK(close(fd) == 0);
    msb_fs_entry *e = NULL;
    EXPECT(MSB_OK, msb_fs_stat(c, "/", T_MS, &e, ERR));
    CHECK_INT(msb_fs_entry_kind(msb_fs_entry_as_view(e)), MSB_FS_KIND_DIR);
    msb_fs_entry_free(e);
    msb_client_free(c);
}

static void test_connect_fd_errors(void) {
    msb_client *c = NULL;
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_connect_fd(-1, NULL, &c, ERR));
    /* A descriptor number that is not open. */
    int closed_fd = dup(0);
    close(closed_fd);
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_connect_fd(closed_fd, NULL, &c, ERR));

    /* A peer that never speaks: the handshake deadline must fire. */
    msb_connect_options *opts = NULL;
    REQUIRE(msb_connect_options_new(&opts) == MSB_OK);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, 300), MSB_OK);
    int pair[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    int64_t t0 = now_ms();
    EXPECT(MSB_ERR_TIMEOUT, msb_client_connect_fd(pair[0], opts, &c, ERR));
    int64_t took = now_ms() - t0;
    CHECK(took >= 250 && took < 10000);

    /* A peer that hangs up before the first handshake byte: what a full
     * relay does. The message says so and says to retry. */
    close(pair[1]);
    msb_error *busy = NULL;
    CHECK_INT(msb_client_connect_fd(pair[0], opts, &c, &busy), MSB_ERR_RELAY_BUSY);
    CHECK_INT(msb_error_code(busy), MSB_ERR_RELAY_BUSY);
    CHECK(strstr(msb_error_message(busy), "full") != NULL);
    CHECK(strstr(msb_error_message(busy), "retry") != NULL);
    msb_error_free(busy);
    close(pair[0]);
    CHECK(c == NULL);

    /* A peer that hangs up in the middle of the 8 bytes that start every
     * handshake: a truncated handshake, not a busy relay. */
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    REQUIRE(write(pair[1], "\0\0\0\0\0", 5) == 5);
    close(pair[1]);
    msb_error *cut = NULL;
    CHECK_INT(msb_client_connect_fd(pair[0], opts, &c, &cut), MSB_ERR_HANDSHAKE);
    CHECK(strstr(msb_error_message(cut), "truncated") != NULL);
    msb_error_free(cut);
    close(pair[0]);
    CHECK(c == NULL);

    /* A current-form handshake whose id range is empty. */
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    static const unsigned char bad_range[8] = {0x0b, 0xeb, 0xc2, 0x00, 0x05, 0xf5, 0xe1, 0x00};
    REQUIRE(write(pair[1], bad_range, sizeof bad_range) == (ssize_t)sizeof bad_range);
    msb_error *range = NULL;
    CHECK_INT(msb_client_connect_fd(pair[0], opts, &c, &range), MSB_ERR_HANDSHAKE);
    CHECK(strstr(msb_error_message(range), "start=200000000, end=100000000") != NULL);
    msb_error_free(range);
    close(pair[1]);
    close(pair[0]);
    CHECK(c == NULL);
    msb_connect_options_free(opts);
}

static void test_connect_fault_relays(void) {
    msb_connect_options *opts = NULL;
    REQUIRE(msb_connect_options_new(&opts) == MSB_OK);
    CHECK_INT(msb_connect_options_set_timeout_ms(opts, 400), MSB_OK);
    struct {
        const char *fault;
        msb_status want;
    } cases[] = {
        {"no-handshake", MSB_ERR_TIMEOUT},
        {"stall-after-id", MSB_ERR_TIMEOUT},
        {"close-in-handshake", MSB_ERR_HANDSHAKE},
        {"not-ready-first", MSB_ERR_PROTOCOL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct relay r;
        if (!relay_start(&r, cases[i].fault)) continue;
        msb_client *c = NULL;
        msb_error *err = NULL;
        msb_status st = msb_client_connect(r.socket, opts, &c, &err);
        if (st != cases[i].want)
            test_fail(__FILE__, __LINE__, "--fault %s: connect gave %d (%s), expected %d", cases[i].fault, st,
                      msb_error_message(err), cases[i].want);
        msb_error_free(err);
        msb_client_free(st == MSB_OK ? c : NULL);
        relay_stop(&r, SIGTERM);
    }
    msb_connect_options_free(opts);
}

const struct test_case basics_tests[] = {
    {"status code values are stable", test_status_code_values_are_stable},
    {"msb_status_str describes every code", test_status_str_describes_every_code},
    {"msb_error carries code and message; err_out optional", test_error_object_code_and_message},
    {"msb_bytes accessors accept NULL", test_bytes_accessors_on_null},
    {"every accessor given NULL returns NULL, 0 or false", test_every_accessor_on_null},
    {"version macros match msb_version()", test_version_macros_match_runtime},
    {"connect options validate and apply (64 KiB budget carries 1 MiB)", test_connect_options},
    {"connect argument errors (NULL, UTF-8, missing, path > 108 bytes)", test_connect_argument_errors},
    {"connect to a socket nobody listens on is NOT_FOUND", test_connect_to_socket_nobody_listens_on},
    {"connect_sandbox resolves names under MSB_HOME", test_connect_sandbox_by_name},
    {"connect_fd duplicates the caller's socket", test_connect_fd_uses_its_own_duplicate},
    {"connect_fd errors: bad fd, silent peer timeout, hang-up", test_connect_fd_errors},
    {"connect against handshake fault relays", test_connect_fault_relays},
    {NULL, NULL},
};
