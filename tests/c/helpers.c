/* Helpers shared by the test files; see test.h. */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *env_socket(void) {
    const char *s = getenv("MSB_SOCKET");
    return s ? s : "";
}

const char *env_relay_root(void) {
    const char *s = getenv("MSB_DEVRELAY_ROOT");
    return s ? s : "";
}

void host_path(char *out, size_t cap, const char *guest_path) {
    snprintf(out, cap, "%s%s", env_relay_root(), guest_path);
}

msb_client *connect_shared(void) {
    msb_client *c = NULL;
    if (!EXPECT(MSB_OK, msb_client_connect(env_socket(), NULL, &c, ERR))) return NULL;
    return c;
}

int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

bool fd_readable(int fd, int wait_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n;
    do n = poll(&p, 1, wait_ms);
    while (n < 0 && errno == EINTR);
    return n == 1 && (p.revents & POLLIN);
}

msb_exec_request *make_request(const char *cmd, ...) {
    msb_exec_request *req = NULL;
    if (!EXPECT(MSB_OK, msb_exec_request_new(cmd, &req, ERR))) return NULL;
    va_list ap;
    va_start(ap, cmd);
    for (const char *arg; (arg = va_arg(ap, const char *));) EXPECT(MSB_OK, msb_exec_request_add_arg(req, arg, ERR));
    va_end(ap);
    return req;
}

/* ---------------------------------------------------------------- relays */

bool relay_start(struct relay *r, const char *fault) {
    const char *fault_args[] = {"--fault", fault, NULL};
    char why[512];
    if (relay_spawn(r, "/tmp/msb-ctest.XXXXXX", fault ? fault_args : NULL, T_MS, why, sizeof why) != 0) {
        test_fail(__FILE__, __LINE__, "%s", why);
        return false;
    }
    return true;
}

/* ---------------------------------------------------------------- exec */

static void append(char **buf, size_t *len, const uint8_t *data, size_t n) {
    char *grown = realloc(*buf, *len + n + 1);
    if (!grown) abort();
    memcpy(grown + *len, data, n);
    *len += n;
    grown[*len] = '\0';
    *buf = grown;
}

/* Records one event in res. Returns false once the stream ended. */
static bool take_event(msb_exec *exec, int64_t timeout_ms, struct exec_result *res) {
    msb_exec_event *ev = NULL;
    msb_error *err = NULL;
    msb_status st = msb_exec_next_event(exec, timeout_ms, &ev, &err);
    if (st != MSB_OK) {
        res->end_status = st;
        if (st < 0 && (!err || msb_error_code(err) != st))
            test_fail(__FILE__, __LINE__, "msb_exec_next_event returned %d without a matching error", st);
        if (st >= 0 && err) test_fail(__FILE__, __LINE__, "msb_exec_next_event returned %d with an error", st);
        msb_error_free(err);
        return false;
    }
    if (res->exited || res->failed) res->events_after_exit++;
    size_t len = 0;
    const uint8_t *data = msb_exec_event_data(ev, &len);
    switch (msb_exec_event_kind(ev)) {
    case MSB_EXEC_STARTED:
        res->started_first = !res->started && !res->out_len && !res->err_len;
        res->started = true;
        res->pid = msb_exec_event_pid(ev);
        break;
    case MSB_EXEC_STDOUT:
        append(&res->out, &res->out_len, data, len);
        break;
    case MSB_EXEC_STDERR:
        append(&res->err, &res->err_len, data, len);
        break;
    case MSB_EXEC_EXITED:
        res->exited = true;
        res->exit_code = msb_exec_event_exit_code(ev);
        break;
    case MSB_EXEC_FAILED: {
        res->failed = true;
        const char *stage = msb_exec_event_stage(ev);
        free(res->failure_kind);
        free(res->failure_message);
        free(res->failure_stage);
        res->failure_kind = strdup(msb_exec_event_failure_kind(ev));
        res->failure_message = strdup(msb_exec_event_message(ev));
        res->failure_stage = stage ? strdup(stage) : NULL;
        res->failure_errno = msb_exec_event_errno(ev);
        break;
    }
    case MSB_EXEC_STDIN_ERROR:
        res->stdin_errors++;
        break;
    default:
        test_fail(__FILE__, __LINE__, "unknown event kind %d", msb_exec_event_kind(ev));
    }
    msb_exec_event_free(ev);
    return true;
}

void collect_exec(msb_exec *exec, int64_t timeout_ms, struct exec_result *res) {
    while (take_event(exec, timeout_ms, res)) {
    }
}

bool read_stdout_until(msb_exec *exec, const char *needle, struct exec_result *res) {
    while (!(res->out && strstr(res->out, needle)))
        if (!take_event(exec, T_MS, res)) return false;
    return true;
}

void exec_result_free(struct exec_result *res) {
    free(res->out);
    free(res->err);
    free(res->failure_kind);
    free(res->failure_message);
    free(res->failure_stage);
    memset(res, 0, sizeof *res);
}

/* ---------------------------------------------------------------- CBOR */

void cbor_head(struct cbor_buf *b, int major, uint64_t value) {
    uint8_t m = (uint8_t)(major << 5);
    if (value < 24) {
        b->data[b->len++] = m | (uint8_t)value;
    } else if (value < 256) {
        b->data[b->len++] = m | 24;
        b->data[b->len++] = (uint8_t)value;
    } else {
        b->data[b->len++] = m | 25;
        b->data[b->len++] = (uint8_t)(value >> 8);
        b->data[b->len++] = (uint8_t)value;
    }
}

void cbor_text(struct cbor_buf *b, const char *s) {
    size_t n = strlen(s);
    cbor_head(b, 3, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

struct cbor_reader {
    const uint8_t *p, *end;
};

/* Reads one item head: major type and argument. Indefinite lengths are
 * not produced by the peers under test, so they count as malformed. */
static bool read_head(struct cbor_reader *r, int *major, uint64_t *arg) {
    if (r->p >= r->end) return false;
    uint8_t b = *r->p++;
    *major = b >> 5;
    uint8_t info = b & 31;
    if (info < 24) {
        *arg = info;
        return true;
    }
    if (info > 27) return false;
    size_t n = (size_t)1 << (info - 24);
    if ((size_t)(r->end - r->p) < n) return false;
    *arg = 0;
    for (size_t i = 0; i < n; i++) *arg = (*arg << 8) | *r->p++;
    return true;
}

static bool skip_item(struct cbor_reader *r) {
    int major;
    uint64_t arg;
    if (!read_head(r, &major, &arg)) return false;
    switch (major) {
    case 0: case 1: case 7:
        return true;
    case 2: case 3:
        if ((uint64_t)(r->end - r->p) < arg) return false;
        r->p += arg;
        return true;
    case 4:
        for (uint64_t i = 0; i < arg; i++)
            if (!skip_item(r)) return false;
        return true;
    case 5:
        for (uint64_t i = 0; i < 2 * arg; i++)
            if (!skip_item(r)) return false;
        return true;
    case 6:
        return skip_item(r);
    }
    return false;
}

/* Positions r at the value of `key` in the map r points at. */
static bool find_key(struct cbor_reader *r, const char *key) {
    int major;
    uint64_t entries;
    if (!read_head(r, &major, &entries) || major != 5) return false;
    size_t key_len = strlen(key);
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t n;
        if (!read_head(r, &major, &n) || major != 3 || (uint64_t)(r->end - r->p) < n) return false;
        bool match = n == key_len && memcmp(r->p, key, key_len) == 0;
        r->p += n;
        if (match) return true;
        if (!skip_item(r)) return false;
    }
    return false;
}

bool cbor_map_get_bytes(const uint8_t *p, size_t len, const char *key, const uint8_t **val, size_t *val_len) {
    struct cbor_reader r = {p, p + len};
    int major;
    uint64_t n;
    if (!find_key(&r, key) || !read_head(&r, &major, &n) || (major != 2 && major != 3)) return false;
    if ((uint64_t)(r.end - r.p) < n) return false;
    *val = r.p;
    *val_len = (size_t)n;
    return true;
}

bool cbor_map_get_uint(const uint8_t *p, size_t len, const char *key, uint64_t *val) {
    struct cbor_reader r = {p, p + len};
    int major;
    return find_key(&r, key) && read_head(&r, &major, val) && major == 0;
}

bool cbor_map_get_bool(const uint8_t *p, size_t len, const char *key, bool *val) {
    struct cbor_reader r = {p, p + len};
    int major;
    uint64_t simple;
    if (!find_key(&r, key) || !read_head(&r, &major, &simple) || major != 7) return false;
    if (simple != 20 && simple != 21) return false;
    *val = simple == 21;
    return true;
}
