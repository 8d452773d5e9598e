/*
 * A small test harness for the C ABI tests, plus helpers shared by the test
 * files (relay control, exec collection, a minimal CBOR reader/writer).
 *
 * Checks never stop a test: a failed CHECK is reported with its file, line
 * and expression, and the test carries on, so one run shows every broken
 * assertion. REQUIRE_* return from the test when what follows cannot run.
 */
#ifndef MSB_C_TEST_H
#define MSB_C_TEST_H

#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "microsandbox_agent.h"
#include "../common/devrelay.h"

/* Generous: the same binary runs under valgrind, where everything is ~20x slower. */
#define T_MS 20000

struct test_case {
    const char *name;
    void (*run)(void);
};

extern const struct test_case basics_tests[];
extern const struct test_case client_tests[];
extern const struct test_case exec_tests[];
extern const struct test_case fs_tests[];
extern const struct test_case lifecycle_tests[];
extern const struct test_case paths_tests[];
extern const struct test_case handles_tests[];
extern const struct test_case tcp_tests[];

/* ---- reporting (harness.c) */

void test_fail(const char *file, int line, const char *fmt, ...);
int test_failures_so_far(void);
/* Records a failure unless `got` is `want` and, for a failure code, `err`
 * holds the same code and a non-empty message; frees `err`. */
bool test_check_status(const char *file, int line, const char *expr, msb_status got, msb_status want,
                       msb_error *err);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                            \
    } while (0)

#define CHECK_INT(got, want)                                                                       \
    do {                                                                                           \
        long long got_ = (long long)(got), want_ = (long long)(want);                              \
        if (got_ != want_) test_fail(__FILE__, __LINE__, "%s is %lld, expected %lld", #got, got_, want_); \
    } while (0)

#define CHECK_STR(got, want)                                                                       \
    do {                                                                                           \
        const char *got_ = (got), *want_ = (want);                                                 \
        if (!got_ || strcmp(got_, want_) != 0)                                                     \
            test_fail(__FILE__, __LINE__, "%s is \"%s\", expected \"%s\"", #got, got_ ? got_ : "(null)", want_); \
    } while (0)

/* Checks the bytes (ptr, len) equal the C string `want`. */
#define CHECK_MEM(ptr, len, want)                                                                  \
    do {                                                                                           \
        const char *want_ = (want);                                                                \
        size_t len_ = (len);                                                                       \
        const void *ptr_ = (ptr);                                                                  \
        if (len_ != strlen(want_) || (len_ && memcmp(ptr_, want_, len_) != 0))                     \
            test_fail(__FILE__, __LINE__, "%s is \"%.*s\", expected \"%s\"", #ptr, (int)len_,      \
                      ptr_ ? (const char *)ptr_ : "", want_);                                      \
    } while (0)

/*
 * EXPECT(want, call): `call` must return `want`. Inside `call`, write ERR
 * where the function takes `msb_error **err_out`; the error it produces is
 * checked (same code, non-empty message) and freed. Evaluates to true when
 * the check passed.
 */
extern _Thread_local msb_error *test_err_;
extern _Thread_local msb_status test_status_;
#define ERR (&test_err_)
#define EXPECT(want, call)                                                                         \
    (test_err_ = NULL, test_status_ = (call),                                                      \
     test_check_status(__FILE__, __LINE__, #call, test_status_, (want), test_err_))
#define REQUIRE_OK(call)                                                                           \
    do {                                                                                           \
        if (!EXPECT(MSB_OK, call)) return;                                                         \
    } while (0)
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond);                                   \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* ---- environment and relays (helpers.c) */

const char *env_socket(void);       /* MSB_SOCKET of the shared relay */
const char *env_relay_root(void);   /* MSB_DEVRELAY_ROOT of the shared relay */
/* The shared relay's fs root joined with a guest path, for checking on the host. */
void host_path(char *out, size_t cap, const char *guest_path);
/* Connects to the shared relay; records a failure and returns NULL if it cannot. */
msb_client *connect_shared(void);

/* Starts a relay of this process's own (fault may be NULL) and waits for
 * its ready line; records a failure and returns false if it does not start.
 * struct relay and relay_stop come from ../common/devrelay.h. */
bool relay_start(struct relay *r, const char *fault);

/* ---- small utilities (helpers.c) */

int64_t now_ms(void);
void sleep_ms(int ms);
int thread_count(void);
bool fd_readable(int fd, int wait_ms);
/* NULL-terminated argument list after cmd. */
msb_exec_request *make_request(const char *cmd, ...);

/* Everything an exec produced, pulled with blocking waits until MSB_ENDED. */
struct exec_result {
    msb_status end_status; /* MSB_ENDED, or the error that ended the stream */
    bool started;
    bool started_first;    /* STARTED was the first event */
    uint32_t pid;
    bool exited;
    int32_t exit_code;
    char *out;
    size_t out_len;
    char *err;
    size_t err_len;
    int events_after_exit; /* must stay 0 */
    bool failed;           /* MSB_EXEC_FAILED came (instead of EXITED) */
    char *failure_kind;    /* its accessors' values, copied */
    char *failure_message;
    char *failure_stage;   /* NULL when the guest named no stage */
    int32_t failure_errno;
    int stdin_errors;      /* MSB_EXEC_STDIN_ERROR events */
};
void collect_exec(msb_exec *exec, int64_t timeout_ms, struct exec_result *res);
void exec_result_free(struct exec_result *res);
/* Pulls events until stdout contains `needle` or the stream ends; appends to res. */
bool read_stdout_until(msb_exec *exec, const char *needle, struct exec_result *res);

/* ---- a minimal CBOR writer and reader, enough for hand-built payloads */

struct cbor_buf {
    uint8_t data[1024];
    size_t len;
};
void cbor_head(struct cbor_buf *b, int major, uint64_t value);
void cbor_text(struct cbor_buf *b, const char *s);
/* Finds key `key` in the top-level CBOR map `p` and returns its byte-string
 * value (or text). Returns false if absent or not a (byte/text) string. */
bool cbor_map_get_bytes(const uint8_t *p, size_t len, const char *key, const uint8_t **val, size_t *val_len);
/* As above for an unsigned-integer value. */
bool cbor_map_get_uint(const uint8_t *p, size_t len, const char *key, uint64_t *val);
/* As above for a boolean value. */
bool cbor_map_get_bool(const uint8_t *p, size_t len, const char *key, bool *val);

#endif
