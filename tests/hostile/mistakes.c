/*
 * A careless caller: NULL arguments, invalid UTF-8, zero lengths, payloads
 * over 4 MiB, calls on a closed or freed client, and handles freed while
 * another thread waits on them. Each must give an error code (or a
 * documented neutral value), never a crash or a hang.
 *
 * What cannot be checked, and is therefore documented as forbidden in the
 * header rather than tested here: freeing a handle twice, using any handle
 * after its _free returned (the pointer is dangling: the library cannot tell
 * it from a live one without a registry of every handle, which would cost a
 * lock on every call), pointers that do not point where they claim (a
 * `len` longer than the buffer, a string without its NUL), closing or
 * reading the borrowed readiness fds, and polling a readiness fd while
 * another thread frees its handle (the descriptor is closed under poll(2)
 * and its number may be reused at once). These are the cases valgrind and
 * AddressSanitizer catch in the caller's own code.
 *
 *   cc -std=c11 -Wall -Wextra -Wpedantic -Werror -Iinclude tests/hostile/mistakes.c \
 *      -Ltarget/release -lmicrosandbox_agent -lpthread -o mistakes
 *   LD_LIBRARY_PATH=target/release ./mistakes      (from the repository root)
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "harness.h"

#define MIB (1024 * 1024)
#define TIMEOUT 5000

static struct relay relay;
static msb_client *client;

static void error_is(msb_status got, msb_error *err, msb_status want, const char *needle,
                     const char *what) {
    if (got != want)
        h_record_failure(__FILE__, __LINE__, "%s: %s, want %s", what, msb_status_str(got),
                         msb_status_str(want));
    CHECK_ERROR(err, want, needle);
}

/* Expects `call` (which takes `&err` as its last argument) to fail with
 * `want`, its message containing `needle`, within a few milliseconds. */
#define EXPECT_FAILS(want, needle, call)                                      \
    do {                                                                      \
        msb_error *err = NULL;                                                \
        int64_t t0_ = h_now_ms();                                             \
        msb_status s_ = call;                                                 \
        CHECK_WITHIN(t0_, 0);                                                 \
        error_is(s_, err, want, needle, #call);                               \
    } while (0)

/* ------------------------------------------------------------ NULL */

static void null_arguments(void) {
    msb_client *c = (msb_client *)&relay; /* a sentinel: must stay untouched */
    msb_connect_options *opts = NULL;
    msb_exec_request *req = NULL;
    msb_fs_entry *entry = NULL;
    msb_bytes *bytes = NULL;
    msb_message *msg = NULL;
    msb_exec_event *ev = NULL;
    msb_subscription *sub = NULL;
    uint8_t data[4] = {0};

    EXPECT_FAILS(MSB_ERR_NULL_POINTER, "socket_path", msb_client_connect(NULL, NULL, &c, &err));
    CHECK(c == (msb_client *)&relay);
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, "client_out", msb_client_connect(relay.socket, NULL, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_client_connect_sandbox(NULL, NULL, &c, &err));
    CHECK_STATUS(msb_connect_options_new(NULL), MSB_ERR_NULL_POINTER);
    CHECK_STATUS(msb_connect_options_set_timeout_ms(NULL, 5), MSB_ERR_NULL_POINTER);
    CHECK_STATUS(msb_connect_options_set_memory_budget(NULL, 1 << 20), MSB_ERR_NULL_POINTER);

    EXPECT_FAILS(MSB_ERR_NULL_POINTER, "cmd", msb_exec_request_new(NULL, &req, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_request_new("true", NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_request_add_arg(NULL, "x", &err));
    CHECK_STATUS(msb_exec_request_new("true", &req, NULL), MSB_OK);
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_request_add_arg(req, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_request_add_env(req, NULL, "v", &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_request_add_env(req, "K", NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_request_add_rlimit(req, NULL, 1, 1, &err));
    /* NULL cwd and user are documented as "the default", not mistakes. */
    CHECK_STATUS(msb_exec_request_set_cwd(req, NULL, NULL), MSB_OK);
    CHECK_STATUS(msb_exec_request_set_user(req, NULL, NULL), MSB_OK);

    msb_exec *exec = NULL;
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_start(NULL, req, TIMEOUT, &exec, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_start(client, NULL, TIMEOUT, &exec, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_start(client, req, TIMEOUT, NULL, &err));
    msb_run_output *out = NULL;
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_run(client, NULL, 16, TIMEOUT, &out, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_next_event(NULL, 0, &ev, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_write_stdin(NULL, data, 4, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_signal(NULL, 15, TIMEOUT, &err));
    int fd = -1;
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_exec_readiness_fd(NULL, &fd, &err));
    CHECK(fd == -1);

    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_read_file(client, NULL, TIMEOUT, &bytes, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_read_file(client, "/x", TIMEOUT, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_read_file(NULL, "/x", TIMEOUT, &bytes, &err));
    /* A NULL buffer with a non-zero length is a mistake; (NULL, 0) is not. */
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_write_file(client, "/x", NULL, 5, -1, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_stat(client, "/", TIMEOUT, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_copy(client, NULL, "/b", TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_rename(client, "/a", NULL, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_fs_list(client, "/", TIMEOUT, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_file_writer_write(NULL, data, 4, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_file_reader_next(NULL, 0, &bytes, &err));

    uint32_t id = msb_client_alloc_id(client);
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_client_send(client, NULL, id, data, 4, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL,
                 msb_client_send(client, "core.exec.stdin", id, NULL, 4, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL,
                 msb_client_request(client, "core.fs.request", data, 4, TIMEOUT, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_client_subscribe(client, id, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_subscription_next(NULL, 0, &msg, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_subscription_readiness_fd(NULL, &fd, &err));
    CHECK_STATUS(msb_client_subscribe(client, id, &sub, NULL), MSB_OK);
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_subscription_next(sub, 0, NULL, &err));
    EXPECT_FAILS(MSB_ERR_NULL_POINTER, NULL, msb_subscription_readiness_fd(sub, NULL, &err));
    msb_subscription_free(sub);

    CHECK_STATUS(msb_client_counters(client, NULL), MSB_ERR_NULL_POINTER);
    CHECK_STATUS(msb_client_counters(NULL, NULL), MSB_ERR_NULL_POINTER);
    CHECK_STATUS(msb_client_ready_timings(client, NULL), MSB_ERR_NULL_POINTER);
    CHECK_STATUS(msb_client_ready_payload(NULL, &bytes), MSB_ERR_NULL_POINTER);
    CHECK_STATUS(msb_client_close(NULL), MSB_ERR_NULL_POINTER);
    CHECK_STATUS(msb_exec_event_take_data(NULL, &bytes), MSB_ERR_NULL_POINTER);

    /* err_out may be NULL: the failure is still reported by the status. */
    CHECK_STATUS(msb_fs_stat(client, NULL, TIMEOUT, &entry, NULL), MSB_ERR_NULL_POINTER);

    /* Accessors given NULL return NULL, 0 or false (the README's rule). */
    CHECK(msb_error_code(NULL) == MSB_OK);
    CHECK(msb_error_message(NULL) == NULL);
    CHECK(msb_bytes_data(NULL) == NULL && msb_bytes_len(NULL) == 0);
    CHECK(msb_message_type(NULL) == NULL);
    CHECK(msb_message_payload(NULL, NULL) == NULL);
    CHECK(msb_message_id(NULL) == 0 && msb_message_flags(NULL) == 0);
    CHECK(msb_client_id_offset(NULL) == 0 && msb_client_alloc_id(NULL) == 0);
    CHECK(msb_subscription_id(NULL) == 0 && msb_exec_id(NULL) == 0);
    CHECK(msb_exec_event_kind(NULL) == 0 && msb_exec_event_pid(NULL) == 0);
    size_t len = 99;
    (void)msb_exec_event_data(NULL, &len);
    CHECK(len == 0);
    CHECK(msb_fs_entry_path(NULL) == NULL);
    CHECK(msb_fs_entry_kind(NULL) == MSB_FS_KIND_OTHER && msb_fs_entry_size(NULL) == 0);
    int64_t mtime = 7;
    CHECK(!msb_fs_entry_mtime(NULL, &mtime) && mtime == 7);
    CHECK(msb_fs_entries_len(NULL) == 0 && msb_fs_entries_get(NULL, 0) == NULL);
    CHECK(msb_run_output_exit_code(NULL) == 0 && !msb_run_output_truncated(NULL));
    CHECK(msb_status_str(123456) != NULL && msb_status_str(-123456) != NULL);

    /* Every _free accepts NULL. */
    msb_error_free(NULL);
    msb_bytes_free(NULL);
    msb_connect_options_free(NULL);
    msb_client_free(NULL);
    msb_subscription_free(NULL);
    msb_message_free(NULL);
    msb_exec_request_free(NULL);
    msb_exec_free(NULL);
    msb_exec_event_free(NULL);
    msb_run_output_free(NULL);
    msb_fs_entry_free(NULL);
    msb_fs_entries_free(NULL);
    msb_file_reader_free(NULL);
    msb_file_writer_free(NULL);

    /* Outputs stayed untouched through all of it. */
    CHECK(opts == NULL && exec == NULL && entry == NULL && bytes == NULL && msg == NULL && ev == NULL &&
          out == NULL);
    msb_exec_request_free(req);
}

/* ------------------------------------------------------------ UTF-8 */

static void invalid_utf8(void) {
    static const char bad[] = "caf\xc3\x28";   /* broken 2-byte sequence */
    static const char bad_path[] = "/\xff\xfe"; /* bytes never valid in UTF-8 */
    msb_exec_request *req = NULL;
    msb_fs_entry *entry = NULL;
    msb_bytes *bytes = NULL;

    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_exec_request_new(bad, &req, &err));
    CHECK(req == NULL);
    CHECK_STATUS(msb_exec_request_new("true", &req, NULL), MSB_OK);
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_exec_request_add_arg(req, bad, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_exec_request_add_env(req, bad, "v", &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_exec_request_add_env(req, "K", bad, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_exec_request_set_cwd(req, bad, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_exec_request_set_user(req, bad, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_exec_request_add_rlimit(req, bad, 1, 1, &err));
    msb_exec_request_free(req);

    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_fs_stat(client, bad_path, TIMEOUT, &entry, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_fs_read_file(client, bad_path, TIMEOUT, &bytes, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_fs_write_file(client, bad_path, NULL, 0, -1, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_fs_copy(client, "/a", bad_path, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_fs_mkdir(client, bad_path, TIMEOUT, &err));
    uint32_t id = msb_client_alloc_id(client);
    EXPECT_FAILS(MSB_ERR_INVALID_UTF8, NULL, msb_client_send(client, bad, id, NULL, 0, TIMEOUT, &err));
    CHECK(entry == NULL && bytes == NULL);

    /* A socket path is bytes, not text: a non-UTF-8 one is simply absent. */
    msb_client *c = NULL;
    msb_error *err = NULL;
    msb_status s = msb_client_connect("/tmp/msb-no-such-\xff.sock", NULL, &c, &err);
    CHECK_MSG(s == MSB_ERR_NOT_FOUND || s == MSB_ERR_INVALID_UTF8, "got %s", msb_status_str(s));
    msb_error_free(err);
    CHECK(c == NULL);

    /* The client is unharmed by any of it. */
    CHECK_STATUS(msb_fs_stat(client, "/", TIMEOUT, &entry, NULL), MSB_OK);
    msb_fs_entry_free(entry);
}

/* ------------------------------------------------------------ empty and zero */

static void zero_lengths(void) {
    msb_exec_request *req = NULL;
    msb_connect_options *opts = NULL;
    EXPECT_FAILS(MSB_ERR_INVALID_ARGUMENT, NULL, msb_exec_request_new("", &req, &err));
    CHECK_STATUS(msb_exec_request_new("cat", &req, NULL), MSB_OK);
    EXPECT_FAILS(MSB_ERR_INVALID_ARGUMENT, NULL, msb_exec_request_add_env(req, "", "v", &err));
    EXPECT_FAILS(MSB_ERR_INVALID_ARGUMENT, NULL, msb_exec_request_add_env(req, "A=B", "v", &err));
    EXPECT_FAILS(MSB_ERR_INVALID_ARGUMENT, NULL, msb_exec_request_add_rlimit(req, "", 1, 1, &err));
    EXPECT_FAILS(MSB_ERR_INVALID_ARGUMENT, NULL, msb_exec_request_add_rlimit(req, "bogus", 1, 1, &err));
    CHECK_STATUS(msb_exec_request_add_arg(req, "", NULL), MSB_OK); /* an empty argument is valid */
    CHECK_STATUS(msb_connect_options_new(&opts), MSB_OK);
    CHECK_STATUS(msb_connect_options_set_timeout_ms(opts, 0), MSB_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(msb_connect_options_set_memory_budget(opts, 0), MSB_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(msb_connect_options_set_memory_budget(opts, 65535), MSB_ERR_INVALID_ARGUMENT);
    msb_connect_options_free(opts);

    /* `cat ""` fails in the guest, but stdin writes of zero bytes must be
     * accepted before that matters. */
    msb_exec *exec = NULL;
    CHECK_STATUS(msb_exec_start(client, req, TIMEOUT, &exec, NULL), MSB_OK);
    msb_exec_request_free(req);
    uint8_t one = 0;
    CHECK_STATUS(msb_exec_write_stdin(exec, NULL, 0, TIMEOUT, NULL), MSB_OK);
    CHECK_STATUS(msb_exec_write_stdin(exec, &one, 0, TIMEOUT, NULL), MSB_OK);
    CHECK_STATUS(msb_exec_close_stdin(exec, TIMEOUT, NULL), MSB_OK);
    msb_exec_free(exec);

    /* (NULL, 0) writes an empty file; reading it gives a live, empty buffer. */
    CHECK_STATUS(msb_fs_write_file(client, "/empty.txt", NULL, 0, -1, TIMEOUT, NULL), MSB_OK);
    msb_bytes *bytes = NULL;
    CHECK_STATUS(msb_fs_read_file(client, "/empty.txt", TIMEOUT, &bytes, NULL), MSB_OK);
    CHECK(bytes != NULL && msb_bytes_len(bytes) == 0 && msb_bytes_data(bytes) != NULL);
    msb_bytes_free(bytes);

    /* A raw message with an empty payload goes out. No agent can decode it
     * as stdin, and one that cannot decode a payload may exit, taking the
     * sandbox with it: this takes a relay of its own. */
    struct relay own;
    if (!h_relay_up(&own, NULL)) return;
    msb_client *alone = h_connect(&own, TIMEOUT, 0);
    if (alone != NULL) {
        uint32_t id = msb_client_alloc_id(alone);
        CHECK_STATUS(msb_client_send(alone, "core.exec.stdin", id, NULL, 0, TIMEOUT, NULL), MSB_OK);
        msb_client_free(alone);
    }
    relay_stop(&own, SIGKILL);
}

/* ------------------------------------------------------------ over 4 MiB */

static void too_large(void) {
    const size_t over = MSB_MAX_FRAME_SIZE; /* payload alone fills the frame: no room for the envelope */
    uint8_t *data = calloc(6 * MIB, 1);
    if (data == NULL) {
        CHECK(0);
        return;
    }
    uint32_t id = msb_client_alloc_id(client);
    EXPECT_FAILS(MSB_ERR_TOO_LARGE, "4 MiB",
                 msb_client_send(client, "core.exec.stdin", id, data, over, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_TOO_LARGE, "4 MiB",
                 msb_client_send(client, "core.exec.stdin", id, data, SIZE_MAX / 2, TIMEOUT, &err));
    msb_message *reply = NULL;
    EXPECT_FAILS(MSB_ERR_TOO_LARGE, "4 MiB",
                 msb_client_request(client, "core.fs.request", data, 5 * MIB, TIMEOUT, &reply, &err));
    CHECK(reply == NULL);

    /* The typed calls split large data into frames instead of refusing it:
     * 5 MiB through a file write and through an exec's stdin. */
    for (size_t i = 0; i < 5 * MIB; i++) data[i] = (uint8_t)(i * 7 + i / 4096);
    CHECK_STATUS(msb_fs_write_file(client, "/five.bin", data, 5 * MIB, 0600, 20000, NULL), MSB_OK);
    msb_bytes *back = NULL;
    CHECK_STATUS(msb_fs_read_file(client, "/five.bin", 20000, &back, NULL), MSB_OK);
    CHECK(msb_bytes_len(back) == 5 * MIB && memcmp(msb_bytes_data(back), data, 5 * MIB) == 0);
    msb_bytes_free(back);

    msb_exec_request *req = NULL;
    CHECK_STATUS(msb_exec_request_new("wc", &req, NULL), MSB_OK);
    CHECK_STATUS(msb_exec_request_add_arg(req, "-c", NULL), MSB_OK);
    msb_exec *exec = NULL;
    CHECK_STATUS(msb_exec_start(client, req, TIMEOUT, &exec, NULL), MSB_OK);
    msb_exec_request_free(req);
    CHECK_STATUS(msb_exec_write_stdin(exec, data, 5 * MIB, 20000, NULL), MSB_OK);
    CHECK_STATUS(msb_exec_close_stdin(exec, TIMEOUT, NULL), MSB_OK);
    char out[64] = {0};
    size_t out_len = 0;
    int exit_code = -100;
    for (;;) {
        msb_exec_event *ev = NULL;
        msb_status s = msb_exec_next_event(exec, 20000, &ev, NULL);
        if (s != MSB_OK) {
            CHECK_STATUS(s, MSB_ENDED);
            break;
        }
        if (msb_exec_event_kind(ev) == MSB_EXEC_STDOUT) {
            size_t n = 0;
            const uint8_t *d = msb_exec_event_data(ev, &n);
            if (out_len + n < sizeof out) memcpy(out + out_len, d, n), out_len += n;
        } else if (msb_exec_event_kind(ev) == MSB_EXEC_EXITED) {
            exit_code = msb_exec_event_exit_code(ev);
        }
        msb_exec_event_free(ev);
    }
    msb_exec_free(exec);
    CHECK(exit_code == 0);
    CHECK_MSG(strtoul(out, NULL, 10) == 5 * MIB, "wc -c said %s", out);
    free(data);
}

/* ------------------------------------------------------------ closed and freed */

struct blocked_pull {
    const msb_subscription *sub;
    const msb_exec *exec;
    msb_status status;
    msb_error *err;
    int64_t returned_at;
};

static void *pull_forever(void *arg) {
    struct blocked_pull *b = arg;
    if (b->sub != NULL) {
        msb_message *m = NULL;
        b->status = msb_subscription_next(b->sub, MSB_TIMEOUT_INFINITE, &m, &b->err);
        msb_message_free(m);
    } else {
        /* Consume everything up to the blocking wait: the exec's started
         * event may already be queued. */
        do {
            msb_exec_event *ev = NULL;
            b->status = msb_exec_next_event(b->exec, MSB_TIMEOUT_INFINITE, &ev, &b->err);
            msb_exec_event_free(ev);
        } while (b->status == MSB_OK);
    }
    b->returned_at = h_now_ms();
    return NULL;
}

/* Starts `b` pulling on a thread of its own and gives it `settle_ms` to
 * block. */
static pthread_t start_blocked_pull(struct blocked_pull *b, int settle_ms) {
    pthread_t t;
    pthread_create(&t, NULL, pull_forever, b);
    h_sleep_ms(settle_ms);
    return t;
}

/* Joins the pull and checks it returned promptly after `since`, when its
 * handle or client was closed or freed. */
static void join_woken_promptly(pthread_t t, const struct blocked_pull *b, int64_t since) {
    pthread_join(t, NULL);
    CHECK_MSG(b->returned_at - since <= h_slack_ms(), "waiter woke after %lld ms",
              (long long)(b->returned_at - since));
}

static msb_client *fresh_client(void) { return h_connect(&relay, TIMEOUT, 0); }

static void closed_client(void) {
    msb_client *c = fresh_client();
    if (c == NULL) return;
    /* A subscription and an exec made before the close. */
    msb_subscription *sub = NULL;
    CHECK_STATUS(msb_client_subscribe(c, msb_client_alloc_id(c), &sub, NULL), MSB_OK);
    struct blocked_pull waiter = {sub, NULL, MSB_OK, NULL, 0};
    pthread_t t = start_blocked_pull(&waiter, 100);

    int64_t closed_at = h_now_ms();
    CHECK_STATUS(msb_client_close(c), MSB_OK);
    CHECK_STATUS(msb_client_close(c), MSB_OK); /* idempotent */
    join_woken_promptly(t, &waiter, closed_at);
    error_is(waiter.status, waiter.err, MSB_ERR_CLOSED, "closed", "blocked pull at close");

    msb_exec_request *req = NULL;
    CHECK_STATUS(msb_exec_request_new("true", &req, NULL), MSB_OK);
    msb_exec *exec = NULL;
    msb_fs_entry *entry = NULL;
    msb_message *m = NULL;
    msb_file_reader *reader = NULL;
    msb_subscription *sub2 = NULL;
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_exec_start(c, req, TIMEOUT, &exec, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_fs_stat(c, "/", TIMEOUT, &entry, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_fs_write_file(c, "/x", NULL, 0, -1, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_file_reader_open(c, "/x", TIMEOUT, &reader, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_client_request(c, "core.fs.request", NULL, 0, TIMEOUT, &m, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed",
                 msb_client_send(c, "core.exec.stdin", msb_client_alloc_id(c), NULL, 0, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_client_subscribe(c, msb_client_alloc_id(c), &sub2, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_client_shutdown(c, TIMEOUT, &err));
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_subscription_next(sub, 0, &m, &err));
    CHECK(exec == NULL && entry == NULL && m == NULL && reader == NULL && sub2 == NULL);
    /* Read-only facts stay available. */
    msb_counters k;
    memset(&k, 0, sizeof k);
    k.struct_size = sizeof k;
    CHECK_STATUS(msb_client_counters(c, &k), MSB_OK);
    msb_ready_timings timings;
    CHECK_STATUS(msb_client_ready_timings(c, &timings), MSB_OK);
    msb_exec_request_free(req);
    msb_subscription_free(sub);
    msb_client_free(c);
}

/* msb_client_free while another thread is blocked on one of its execs: the
 * waiter returns MSB_ERR_CLOSED, and the exec handle stays valid to free. */
static void client_freed_while_waiting(void) {
    msb_client *c = fresh_client();
    if (c == NULL) return;
    msb_exec_request *req = NULL;
    CHECK_STATUS(msb_exec_request_new("sleep", &req, NULL), MSB_OK);
    CHECK_STATUS(msb_exec_request_add_arg(req, "30", NULL), MSB_OK);
    msb_exec *exec = NULL;
    CHECK_STATUS(msb_exec_start(c, req, TIMEOUT, &exec, NULL), MSB_OK);
    msb_exec_request_free(req);
    if (exec == NULL) {
        msb_client_free(c);
        return;
    }
    struct blocked_pull waiter = {NULL, exec, MSB_OK, NULL, 0};
    pthread_t t = start_blocked_pull(&waiter, 150);
    int64_t freed_at = h_now_ms();
    msb_client_free(c);
    join_woken_promptly(t, &waiter, freed_at);
    error_is(waiter.status, waiter.err, MSB_ERR_CLOSED, "closed", "exec pull at client free");
    EXPECT_FAILS(MSB_ERR_CLOSED, "closed", msb_exec_signal(exec, 9, TIMEOUT, &err));
    msb_exec_free(exec);
}

/* msb_subscription_free / msb_exec_free while another thread is blocked in a
 * pull on that very handle: the pull returns MSB_ERR_CLOSED. The client
 * carries on. */
static void handle_freed_while_waiting(void) {
    msb_subscription *sub = NULL;
    CHECK_STATUS(msb_client_subscribe(client, msb_client_alloc_id(client), &sub, NULL), MSB_OK);
    struct blocked_pull waiter = {sub, NULL, MSB_OK, NULL, 0};
    pthread_t t = start_blocked_pull(&waiter, 100);
    int64_t freed_at = h_now_ms();
    msb_subscription_free(sub);
    join_woken_promptly(t, &waiter, freed_at);
    error_is(waiter.status, waiter.err, MSB_ERR_CLOSED, NULL, "pull on a freed subscription");

    msb_exec_request *req = NULL;
    CHECK_STATUS(msb_exec_request_new("sleep", &req, NULL), MSB_OK);
    CHECK_STATUS(msb_exec_request_add_arg(req, "30", NULL), MSB_OK);
    msb_exec *exec = NULL;
    CHECK_STATUS(msb_exec_start(client, req, TIMEOUT, &exec, NULL), MSB_OK);
    msb_exec_request_free(req);
    if (exec != NULL) {
        struct blocked_pull ew = {NULL, exec, MSB_OK, NULL, 0};
        t = start_blocked_pull(&ew, 150);
        /* Kill the process first so nothing outlives the test. */
        CHECK_STATUS(msb_exec_signal(exec, 9, TIMEOUT, NULL), MSB_OK);
        freed_at = h_now_ms();
        msb_exec_free(exec);
        join_woken_promptly(t, &ew, freed_at);
        /* The kill may win the race: then the pull saw the exit and ended. */
        CHECK_MSG(ew.status == MSB_ERR_CLOSED || ew.status == MSB_ENDED, "pull on a freed exec: %s",
                  msb_status_str(ew.status));
        msb_error_free(ew.err);
    }
    msb_fs_entry *entry = NULL;
    CHECK_STATUS(msb_fs_stat(client, "/", TIMEOUT, &entry, NULL), MSB_OK);
    msb_fs_entry_free(entry);
}

/* Subscribing twice to one id, or to an id outside the range. */
static void id_mistakes(void) {
    uint32_t id = msb_client_alloc_id(client);
    msb_subscription *a = NULL, *b = NULL;
    CHECK_STATUS(msb_client_subscribe(client, id, &a, NULL), MSB_OK);
    EXPECT_FAILS(MSB_ERR_ID_UNAVAILABLE, NULL, msb_client_subscribe(client, id, &b, &err));
    EXPECT_FAILS(MSB_ERR_ID_UNAVAILABLE, NULL, msb_client_subscribe(client, 0, &b, &err));
    uint32_t start = 0, end = 0;
    CHECK_STATUS(msb_client_id_range(client, &start, &end), MSB_OK);
    EXPECT_FAILS(MSB_ERR_ID_UNAVAILABLE, NULL, msb_client_subscribe(client, end, &b, &err));
    CHECK(b == NULL);
    msb_subscription_free(a);
    if (msb_client_is_legacy(client)) {
        /* A legacy relay lets an id freed by its subscription be used again. */
        CHECK_STATUS(msb_client_subscribe(client, id, &b, NULL), MSB_OK);
        msb_subscription_free(b);
    } else {
        /* A current relay disconnects a client that reuses an id: once
         * used, an id stays retired. */
        EXPECT_FAILS(MSB_ERR_ID_UNAVAILABLE, NULL, msb_client_subscribe(client, id, &b, &err));
        CHECK(b == NULL);
    }
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    if (relay_start(&relay, NULL) != 0) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    h_test_name = "setup";
    client = h_connect(&relay, TIMEOUT, 0);
    if (client == NULL) {
        relay_stop(&relay, SIGTERM);
        printf("0 passed, 1 failed\n");
        return 1;
    }
    h_run("null-arguments", null_arguments);
    h_run("invalid-utf8", invalid_utf8);
    h_run("zero-lengths", zero_lengths);
    h_run("too-large", too_large);
    h_run("closed-client", closed_client);
    h_run("client-freed-while-waiting", client_freed_while_waiting);
    h_run("handle-freed-while-waiting", handle_freed_while_waiting);
    h_run("id-mistakes", id_mistakes);
    msb_client_free(client);
    relay_stop(&relay, SIGTERM);
    return h_finish();
}
