/*
 * A tiny test harness for the hostile-input C tests: test registration by
 * hand, CHECK macros that record failures without aborting the test, a
 * per-test watchdog (a hang is a failure, not a stuck CI job), wall-clock
 * bounds, a development relay started per test, and the two ways of waiting
 * every scenario is run with (blocking pulls, or poll(2) on the readiness fd
 * followed by a pull with timeout 0).
 *
 * Header-only (static functions) so each test program is one translation
 * unit plus this file. Include it after defining _GNU_SOURCE.
 */
#ifndef MSB_HOSTILE_HARNESS_H
#define MSB_HOSTILE_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "microsandbox_agent.h"
#include "../common/devrelay.h"

/* ------------------------------------------------------------ results */

static int h_passed;
static int h_failed;
static int h_test_failures;
static const char *h_test_name = "";

static inline void h_record_failure(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    h_test_failures++;
    fprintf(stderr, "  FAIL %s:%d [%s]: ", file, line, h_test_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) h_record_failure(__FILE__, __LINE__, "%s", #cond);      \
    } while (0)

#define CHECK_MSG(cond, ...)                                                  \
    do {                                                                      \
        if (!(cond)) h_record_failure(__FILE__, __LINE__, __VA_ARGS__);       \
    } while (0)

/* Compares status codes, printing both names on mismatch. */
#define CHECK_STATUS(got, want)                                               \
    do {                                                                      \
        msb_status h_got_ = (got), h_want_ = (want);                          \
        if (h_got_ != h_want_)                                                \
            h_record_failure(__FILE__, __LINE__, "%s = %d (%s), want %d (%s)", \
                             #got, h_got_, msb_status_str(h_got_), h_want_,   \
                             msb_status_str(h_want_));                        \
    } while (0)

/* Fails the test if `err` does not carry `code` and a message containing
 * `needle` (NULL: any message). Releases `err`. */
#define CHECK_ERROR(err, code, needle) h_check_error(__FILE__, __LINE__, (err), (code), (needle))

static inline void h_check_error(const char *file, int line, msb_error *err, msb_status code,
                          const char *needle) {
    if (err == NULL) {
        h_record_failure(file, line, "no msb_error returned (want %s)", msb_status_str(code));
        return;
    }
    const char *msg = msb_error_message(err);
    if (msb_error_code(err) != code)
        h_record_failure(file, line, "error code %d (%s), want %d (%s); message: %s",
                         msb_error_code(err), msb_status_str(msb_error_code(err)), code,
                         msb_status_str(code), msg);
    else if (needle != NULL && strstr(msg, needle) == NULL)
        h_record_failure(file, line, "error message \"%s\" does not mention \"%s\"", msg, needle);
    msb_error_free(err);
}

/* ------------------------------------------------------------ time */

static inline int64_t h_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void h_sleep_ms(int64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline int64_t h_env_int(const char *name, int64_t fallback) {
    const char *v = getenv(name);
    return (v != NULL && *v != '\0') ? strtoll(v, NULL, 10) : fallback;
}

/* How late a call may return after its timeout. Generous enough for a busy
 * 2-core machine; raised by the script under valgrind, which slows every
 * instruction tens of times. */
static inline int64_t h_slack_ms(void) { return h_env_int("MSB_TEST_SLACK_MS", 400); }

/* Asserts that a call that started at `start` (h_now_ms) came back within
 * `timeout` plus the slack. */
#define CHECK_WITHIN(start, timeout)                                          \
    do {                                                                      \
        int64_t h_took_ = h_now_ms() - (start);                               \
        CHECK_MSG(h_took_ <= (int64_t)(timeout) + h_slack_ms(),               \
                  "took %lld ms, bound %lld ms + %lld ms slack",              \
                  (long long)h_took_, (long long)(timeout), (long long)h_slack_ms()); \
    } while (0)

/* ------------------------------------------------------------ running */

/* Seconds one test may take before the watchdog declares it hung. */
static inline int64_t h_watchdog_s(void) { return h_env_int("MSB_TEST_WATCHDOG_S", 120); }

static inline void h_on_alarm(int sig) {
    static const char msg[] = "  FAIL: watchdog: a test hung; aborting the run\n";
    (void)sig;
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(3);
}

typedef void (*h_test_fn)(void);

/* Each program runs once per relay release (scripts/test-hostile.sh), so
 * every test is named with the release it ran against, e.g.
 * "oversize-frame/poll (relay 0.6.14)"; MSB_TEST_ONLY matches that name. */
static inline void h_run(const char *name, h_test_fn fn) {
    static char label[256];
    snprintf(label, sizeof label, "%s (relay %s)", name, relay_profile());
    const char *only = getenv("MSB_TEST_ONLY");
    if (only != NULL && *only != '\0' && strstr(label, only) == NULL) return;
    h_test_name = label;
    h_test_failures = 0;
    signal(SIGALRM, h_on_alarm);
    alarm((unsigned)h_watchdog_s());
    int64_t start = h_now_ms();
    fn();
    alarm(0);
    if (h_test_failures == 0) {
        h_passed++;
        printf("ok   %s (%lld ms)\n", label, (long long)(h_now_ms() - start));
    } else {
        h_failed++;
        printf("FAIL %s (%lld ms)\n", label, (long long)(h_now_ms() - start));
    }
    fflush(stdout);
}

/* Prints the closing line and returns the process exit status. */
static inline int h_finish(void) {
    printf("%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ waiting */

enum wait_mode { WAIT_BLOCKING, WAIT_POLL };

static inline const char *wait_mode_name(enum wait_mode m) {
    return m == WAIT_BLOCKING ? "blocking" : "poll";
}

/* Waits up to timeout_ms for `fd` to become readable. Returns 1 if readable,
 * 0 on timeout. */
static inline int h_poll_readable(int fd, int64_t timeout_ms) {
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = timeout_ms < 0 ? -1 : deadline - h_now_ms();
        if (timeout_ms >= 0 && left < 0) left = 0;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return 0;
    }
}

/* In poll mode: after poll(2) said readable, a pull with timeout 0 must not
 * report MSB_NOTHING_YET (the fd's level semantics). */
#define CHECK_READY_CONSISTENT(readable, status)                              \
    CHECK_MSG(!(readable) || (status) != MSB_NOTHING_YET,                     \
              "readiness fd was readable but the pull returned MSB_NOTHING_YET")

static inline msb_status pull_message(const msb_subscription *sub, enum wait_mode mode,
                               int64_t timeout_ms, msb_message **out, msb_error **err) {
    if (mode == WAIT_BLOCKING) return msb_subscription_next(sub, timeout_ms, out, err);
    int fd = -1;
    msb_status s = msb_subscription_readiness_fd(sub, &fd, err);
    if (s != MSB_OK) return s;
    int readable = h_poll_readable(fd, timeout_ms);
    s = msb_subscription_next(sub, 0, out, err);
    CHECK_READY_CONSISTENT(readable, s);
    return s;
}

static inline msb_status pull_event(const msb_exec *exec, enum wait_mode mode, int64_t timeout_ms,
                             msb_exec_event **out, msb_error **err) {
    if (mode == WAIT_BLOCKING) return msb_exec_next_event(exec, timeout_ms, out, err);
    int fd = -1;
    msb_status s = msb_exec_readiness_fd(exec, &fd, err);
    if (s != MSB_OK) return s;
    int readable = h_poll_readable(fd, timeout_ms);
    s = msb_exec_next_event(exec, 0, out, err);
    CHECK_READY_CONSISTENT(readable, s);
    return s;
}

static inline msb_status pull_chunk(const msb_file_reader *reader, enum wait_mode mode,
                             int64_t timeout_ms, msb_bytes **out, msb_error **err) {
    if (mode == WAIT_BLOCKING) return msb_file_reader_next(reader, timeout_ms, out, err);
    int fd = -1;
    msb_status s = msb_file_reader_readiness_fd(reader, &fd, err);
    if (s != MSB_OK) return s;
    int readable = h_poll_readable(fd, timeout_ms);
    s = msb_file_reader_next(reader, 0, out, err);
    CHECK_READY_CONSISTENT(readable, s);
    return s;
}

/* ------------------------------------------------------------ process facts */

/* Resident set size of this process in KiB (VmRSS), or -1. */
static inline long h_rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "re");
    if (f == NULL) return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

/* Number of open file descriptors of this process. */
static inline int h_open_fds(void) {
    int count = 0;
    char path[64];
    /* Probing each number avoids opendir, whose own descriptor would be
     * counted; 4096 is far above anything these tests open. */
    for (int fd = 0; fd < 4096; fd++) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        if (access(path, F_OK) == 0) count++;
    }
    return count;
}

/* True when the script built this program with a sanitizer or runs it under
 * valgrind: absolute RSS numbers are then dominated by the tool. */
static inline int h_instrumented(void) { return h_env_int("MSB_TEST_INSTRUMENTED", 0) != 0; }

/* ------------------------------------------------------------ the relay */

/* struct relay, relay_spawn and relay_stop come from the devrelay helper
 * both C suites share. */

/* Starts a relay with `fault` (NULL for none) and one optional extra
 * argument pair, and waits for its ready line. Returns 0 on success; on
 * failure the relay (if it was forked) is already stopped and its directory
 * removed, so callers only report and return. */
static inline int relay_start_with(struct relay *r, const char *fault, const char *extra_flag,
                                   const char *extra_value) {
    const char *args[5];
    int n = 0;
    if (fault != NULL) {
        args[n++] = "--fault";
        args[n++] = fault;
    }
    if (extra_flag != NULL) {
        args[n++] = extra_flag;
        args[n++] = extra_value;
    }
    args[n] = NULL;
    char why[512];
    if (relay_spawn(r, "/tmp/msb-hostile.XXXXXX", args, 15000, why, sizeof why) != 0) {
        fprintf(stderr, "  %s (fault %s)\n", why, fault ? fault : "none");
        return -1;
    }
    return 0;
}

static inline int relay_start(struct relay *r, const char *fault) {
    return relay_start_with(r, fault, NULL, NULL);
}

/* Whether this run's relay imitates `release` (relay_profile). */
static inline int h_relay_is(const char *release) { return strcmp(relay_profile(), release) == 0; }

/* 0.3.14 is the one release imitated with the legacy handshake. */
static inline int h_relay_legacy(void) { return h_relay_is("0.3.14"); }

/* relay_start for a test body: a relay that does not start fails the test.
 * Returns 1 when it is up. */
static inline int h_relay_up(struct relay *r, const char *fault) {
    if (relay_start(r, fault) == 0) return 1;
    CHECK_MSG(0, "relay did not start");
    return 0;
}

/* Connects to `r` with a connect timeout, a memory budget (0: default) and
 * a backpressure mode; NULL (and a recorded failure) if that fails. */
static inline msb_client *h_connect_with(const struct relay *r, uint64_t timeout_ms, size_t budget,
                                         int32_t backpressure) {
    msb_connect_options *opts = NULL;
    msb_client *client = NULL;
    msb_error *err = NULL;
    CHECK_STATUS(msb_connect_options_new(&opts), MSB_OK);
    CHECK_STATUS(msb_connect_options_set_timeout_ms(opts, timeout_ms), MSB_OK);
    if (budget != 0) CHECK_STATUS(msb_connect_options_set_memory_budget(opts, budget), MSB_OK);
    CHECK_STATUS(msb_connect_options_set_backpressure(opts, backpressure), MSB_OK);
    msb_status s = msb_client_connect(r->socket, opts, &client, &err);
    msb_connect_options_free(opts);
    if (s != MSB_OK) {
        CHECK_MSG(0, "connect to %s: %s", r->socket, msb_error_message(err));
        msb_error_free(err);
        return NULL;
    }
    return client;
}

/* h_connect_with, failing the stream that overflows (the default). */
static inline msb_client *h_connect(const struct relay *r, uint64_t timeout_ms, size_t budget) {
    return h_connect_with(r, timeout_ms, budget, MSB_BACKPRESSURE_FAIL_STREAM);
}

#endif /* MSB_HOSTILE_HARNESS_H */
