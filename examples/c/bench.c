/*
 * Benchmark: libmicrosandbox_agent against a minimal blocking client.
 *
 *   cc -O2 -Iinclude examples/c/bench.c -Ltarget/release -lmicrosandbox_agent -lpthread -o bench
 *   LD_LIBRARY_PATH=target/release ./bench [--socket PATH] [--json] [--quick] ...
 *   (or simply: scripts/bench.sh [ARGS...])
 *
 * The baseline is the physical limit on this machine: plain connect/write/read
 * on the Unix socket with hand-built frames, one thread, no runtime, no
 * queues; it parses frames in place from one large read buffer and pipelines
 * requests when the library runs several threads. Every library figure is
 * reported as a ratio to it. Library and baseline runs alternate (library,
 * baseline, library, ...) so that drift on a shared machine hits both alike,
 * and each reported figure is the median over --runs runs.
 *
 * Round trips from several threads have a second reference, "threaded": the
 * same minimal client used the way the library's callers use it, each thread
 * blocking for its own reply. One thread at a time reads the socket and hands
 * replies to their threads, waking all that one read served with a single
 * futex call. It is the limit of any blocking
 * call-per-thread API on this machine, which the pipelined baseline is not:
 * one thread with many requests in flight never sleeps and wakes per request.
 * They also get "lib-pipelined": the library used like the baseline, one
 * thread keeping as many requests in flight through the raw tier.
 *
 * Only the round-trip and stream benches must work against any relay (they
 * need Stat and exec of `sh -c`); the file benches write and read one file
 * under --file-path in the relay's filesystem.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include "microsandbox_agent.h"

#define TIMEOUT_MS 120000
#define MAX_FRAME_LEN (4u * 1024 * 1024)
#define FS_CHUNK (3u * 1024 * 1024)
#define ID_RANGE 268435455u
#define FLAG_TERMINAL 0x01
#define FLAG_SESSION_START 0x02
#define MIB (1024.0 * 1024.0)

/* {"op": {"Stat": {"path": "/"}}}, the request every round trip sends. */
static const uint8_t STAT_ROOT_PAYLOAD[] = {0xa1, 0x62, 0x6f, 0x70, 0xa1, 0x64, 0x53, 0x74, 0x61,
                                            0x74, 0xa1, 0x64, 0x70, 0x61, 0x74, 0x68, 0x61, 0x2f};

/* ------------------------------------------------------------------------ */
/* Options                                                                   */

enum only { ONLY_BOTH, ONLY_LIBRARY, ONLY_BASELINE };

struct options {
    const char *socket_path;
    long requests;
    int threads;
    const char *stream_cmd;
    uint64_t stream_bytes;
    uint64_t file_bytes;
    const char *file_path;
    long connects;
    int idle_clients;
    int runs;
    enum only only;
    bool json;
};

static struct options opt = {
    .requests = 100000,
    .threads = 8,
    .stream_cmd = "head -c $B /dev/zero",
    .stream_bytes = 1ull << 30,
    .file_bytes = 256ull << 20,
    .file_path = "/tmp/msb-bench-file.bin",
    .connects = 1000,
    .idle_clients = 64,
    .runs = 3,
    .only = ONLY_BOTH,
};

static bool run_library(void) { return opt.only != ONLY_BASELINE; }
static bool run_baseline(void) { return opt.only != ONLY_LIBRARY; }

/* ------------------------------------------------------------------------ */
/* The relay this process started (if any), stopped on every exit path.      */

static pid_t relay_pid = -1;
static char relay_dir[PATH_MAX - 64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void stop_relay(void) {
    if (relay_pid > 0) {
        kill(relay_pid, SIGTERM);
        waitpid(relay_pid, NULL, 0);
        relay_pid = -1;
    }
    if (relay_dir[0]) {
        nftw(relay_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        relay_dir[0] = 0;
    }
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    stop_relay();
    exit(1);
}

static void die_msb(const char *what, msb_status st, msb_error *err) {
    die("%s failed: %s (%s)", what, err ? msb_error_message(err) : "", msb_status_str(st));
}

static bool is_executable(const char *path) { return access(path, X_OK) == 0; }

/* The devrelay binary: $MSB_DEVRELAY, ./target/release, or beside this program's target dir. */
static void find_relay(char *out, size_t cap, const char *argv0) {
    const char *env = getenv("MSB_DEVRELAY");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return;
    }
    snprintf(out, cap, "target/release/msb-devrelay");
    if (is_executable(out)) return;
    char self[PATH_MAX - 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
        snprintf(out, cap, "%s/../release/msb-devrelay", self);
        if (is_executable(out)) return;
        snprintf(out, cap, "%s/msb-devrelay", self);
        if (is_executable(out)) return;
    }
    (void)argv0;
    die("no msb-devrelay found (build it with cargo build --release --workspace, set MSB_DEVRELAY, "
        "or pass --socket)");
}

static char started_socket[PATH_MAX];

/* Starts msb-devrelay on a temporary socket and waits for its ready line. */
static const char *start_relay(const char *argv0) {
    char relay[PATH_MAX];
    find_relay(relay, sizeof relay, argv0);
    snprintf(relay_dir, sizeof relay_dir, "/tmp/msb-bench.XXXXXX");
    if (!mkdtemp(relay_dir)) die("mkdtemp: %s", strerror(errno));
    char root[PATH_MAX + 8];
    snprintf(started_socket, sizeof started_socket, "%s/agent.sock", relay_dir);
    snprintf(root, sizeof root, "%s/root", relay_dir);

    int ready_pipe[2];
    if (pipe2(ready_pipe, O_CLOEXEC) != 0) die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(ready_pipe[1], STDOUT_FILENO);
        /* The release the relay imitates: $MSB_DEVRELAY_PROFILE, default 0.7.13. */
        char *profile = getenv("MSB_DEVRELAY_PROFILE");
        if (profile == NULL || *profile == '\0') profile = "0.7.13";
        char *args[] = {relay,          "--profile", profile, "--socket",     started_socket,
                        "--root",       root,        "--exec-chunk", "65536", "--quiet",
                        NULL};
        execv(relay, args);
        _exit(127);
    }
    relay_pid = pid;
    close(ready_pipe[1]);

    char line[PATH_MAX + 64];
    size_t used = 0;
    struct pollfd pfd = {.fd = ready_pipe[0], .events = POLLIN};
    while (!memchr(line, '\n', used)) {
        if (poll(&pfd, 1, 10000) <= 0) die("msb-devrelay did not print its ready line within 10 s");
        ssize_t n = read(ready_pipe[0], line + used, sizeof line - 1 - used);
        if (n <= 0) die("msb-devrelay exited before it was ready (%s)", relay);
        used += (size_t)n;
    }
    line[used] = 0;
    close(ready_pipe[0]);
    if (!strstr(line, "listening")) die("unexpected ready line from msb-devrelay: %s", line);
    return started_socket;
}

/* ------------------------------------------------------------------------ */
/* Clocks and process facts                                                  */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * CPU seconds of the whole process (every thread, user + system). The
 * process clock is exact, where getrusage may only count scheduler ticks.
 */
static double process_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static double rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long size = 0, resident = 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* ------------------------------------------------------------------------ */
/* CBOR, just enough for the frames the baseline builds and reads            */

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die("out of memory");
    b->cap = cap;
}

static void buf_put(struct buf *b, const void *p, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_byte(struct buf *b, uint8_t v) { buf_put(b, &v, 1); }

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A head in its shortest form, as canonical encoding requires. */
static void cb_head(struct buf *b, int major, uint64_t v) {
    uint8_t m = (uint8_t)(major << 5);
    if (v < 24) {
        buf_byte(b, m | (uint8_t)v);
    } else if (v <= 0xff) {
        buf_byte(b, m | 24), buf_byte(b, (uint8_t)v);
    } else if (v <= 0xffff) {
        uint8_t h[3] = {m | 25, (uint8_t)(v >> 8), (uint8_t)v};
        buf_put(b, h, 3);
    } else if (v <= 0xffffffffull) {
        uint8_t h[5] = {m | 26};
        put_be32(h + 1, (uint32_t)v);
        buf_put(b, h, 5);
    } else {
        uint8_t h[9] = {m | 27};
        put_be32(h + 1, (uint32_t)(v >> 32));
        put_be32(h + 5, (uint32_t)v);
        buf_put(b, h, 9);
    }
}

static void cb_text(struct buf *b, const char *s) {
    cb_head(b, 3, strlen(s));
    buf_put(b, s, strlen(s));
}

/*
 * Appends a frame header and the envelope up to the payload bytes:
 * [len][id][flags] {"v": 1, "t": type, "p": h'<payload_len bytes follow>'}.
 * The caller appends (or writev's) exactly payload_len payload bytes.
 */
static void frame_prefix(struct buf *b, uint32_t id, uint8_t flags, const char *type, size_t payload_len) {
    size_t start = b->len;
    uint8_t header[9];
    put_be32(header + 4, id);
    header[8] = flags;
    buf_put(b, header, 9);
    cb_head(b, 5, 3);
    cb_text(b, "v");
    cb_head(b, 0, 1);
    cb_text(b, "t");
    cb_text(b, type);
    cb_text(b, "p");
    cb_head(b, 2, payload_len);
    put_be32(b->p + start, (uint32_t)(b->len - start - 4 + payload_len));
}

static void frame_full(struct buf *b, uint32_t id, uint8_t flags, const char *type, const uint8_t *payload,
                       size_t len) {
    frame_prefix(b, id, flags, type, len);
    buf_put(b, payload, len);
}

struct cursor {
    const uint8_t *p, *end;
};

static bool cb_read_head(struct cursor *c, int *major, uint64_t *v) {
    if (c->p >= c->end) return false;
    uint8_t first = *c->p++;
    *major = first >> 5;
    uint8_t info = first & 31;
    if (info < 24) {
        *v = info;
        return true;
    }
    int n = info == 24 ? 1 : info == 25 ? 2 : info == 26 ? 4 : info == 27 ? 8 : 0;
    if (n == 0 || c->end - c->p < n) return false; /* indefinite lengths never appear on this wire */
    uint64_t value = 0;
    for (int i = 0; i < n; i++) value = value << 8 | *c->p++;
    *v = value;
    return true;
}

static bool cb_skip(struct cursor *c, int depth) {
    int major;
    uint64_t v;
    if (depth > 32 || !cb_read_head(c, &major, &v)) return false;
    switch (major) {
    case 2:
    case 3:
        if (v > (uint64_t)(c->end - c->p)) return false;
        c->p += v;
        return true;
    case 4:
        for (uint64_t i = 0; i < v; i++)
            if (!cb_skip(c, depth + 1)) return false;
        return true;
    case 5:
        for (uint64_t i = 0; i < 2 * v; i++)
            if (!cb_skip(c, depth + 1)) return false;
        return true;
    case 6:
        return cb_skip(c, depth + 1);
    default:
        return true;
    }
}

/* Positions *value at the value of text key `key` in the map at [p, p+n). */
static bool cb_lookup(const uint8_t *p, size_t n, const char *key, struct cursor *value) {
    struct cursor c = {p, p + n};
    int major;
    uint64_t count;
    if (!cb_read_head(&c, &major, &count) || major != 5) return false;
    size_t key_len = strlen(key);
    for (uint64_t i = 0; i < count; i++) {
        struct cursor k = c;
        int km;
        uint64_t kl;
        if (!cb_read_head(&k, &km, &kl)) return false;
        bool match = km == 3 && kl == key_len && (uint64_t)(k.end - k.p) >= kl && memcmp(k.p, key, key_len) == 0;
        if (!cb_skip(&c, 0)) return false;
        if (match) {
            *value = c;
            return true;
        }
        if (!cb_skip(&c, 0)) return false;
    }
    return false;
}

/* Reads a byte string (major 2) or text (major 3) at the cursor. */
static bool cb_string(struct cursor *c, int want_major, const uint8_t **p, size_t *n) {
    int major;
    uint64_t v;
    if (!cb_read_head(c, &major, &v) || major != want_major || v > (uint64_t)(c->end - c->p)) return false;
    *p = c->p;
    *n = (size_t)v;
    c->p += v;
    return true;
}

/* The `data` byte string of a {data: bytes} payload. */
static bool payload_data(const uint8_t *payload, size_t len, const uint8_t **data, size_t *n) {
    struct cursor c;
    return cb_lookup(payload, len, "data", &c) && cb_string(&c, 2, data, n);
}

/* The `ok` field of a core.fs.response payload. */
static bool fs_response_ok(const uint8_t *payload, size_t len) {
    struct cursor c;
    return cb_lookup(payload, len, "ok", &c) && c.p < c.end && *c.p == 0xf5;
}

/* ------------------------------------------------------------------------ */
/* The baseline client: blocking socket, frames parsed in place              */

struct raw_conn {
    int fd;
    uint32_t id_offset;
    uint32_t next_id;
    uint8_t *rbuf;
    size_t rcap, rstart, rend;
    struct buf ready_frame; /* the relay's core.ready frame, as received */
};

struct raw_frame {
    uint32_t id;
    uint8_t flags;
    const uint8_t *type;
    size_t type_len;
    const uint8_t *payload;
    size_t payload_len;
};

/* Large enough for the biggest legal frame plus a big read behind it. */
#define RAW_READ_BUFFER (MAX_FRAME_LEN * 2)

static bool raw_fill(struct raw_conn *c, size_t need) {
    while (c->rend - c->rstart < need) {
        if (c->rstart == c->rend) c->rstart = c->rend = 0;
        if (c->rcap - c->rstart < need || c->rcap - c->rend < 65536) {
            memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
            c->rend -= c->rstart;
            c->rstart = 0;
        }
        ssize_t n = read(c->fd, c->rbuf + c->rend, c->rcap - c->rend);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        c->rend += (size_t)n;
    }
    return true;
}

static bool type_is(const struct raw_frame *f, const char *type) {
    return f->type_len == strlen(type) && memcmp(f->type, type, f->type_len) == 0;
}

/* Next frame; its pointers stay valid until the next call. */
static void raw_next(struct raw_conn *c, struct raw_frame *f) {
    if (!raw_fill(c, 4)) die("baseline: connection closed while reading");
    uint32_t len = get_be32(c->rbuf + c->rstart);
    if (len < 5 || len > MAX_FRAME_LEN) die("baseline: bad frame length %u", len);
    if (!raw_fill(c, 4 + (size_t)len)) die("baseline: connection closed mid-frame");
    const uint8_t *frame = c->rbuf + c->rstart;
    f->id = get_be32(frame + 4);
    f->flags = frame[8];
    struct cursor t, p;
    if (!cb_lookup(frame + 9, len - 5, "t", &t) || !cb_string(&t, 3, &f->type, &f->type_len) ||
        !cb_lookup(frame + 9, len - 5, "p", &p) || !cb_string(&p, 2, &f->payload, &f->payload_len))
        die("baseline: undecodable frame body");
    c->rstart += 4 + (size_t)len;
}

static void write_all(int fd, const void *p, size_t n) {
    const uint8_t *q = p;
    while (n > 0) {
        ssize_t w = write(fd, q, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("baseline: write: %s", strerror(errno));
        q += w, n -= (size_t)w;
    }
}

static void writev_all(int fd, struct iovec *iov, int count) {
    while (count > 0) {
        ssize_t w = writev(fd, iov, count);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("baseline: writev: %s", strerror(errno));
        size_t done = (size_t)w;
        while (count > 0 && done >= iov->iov_len) done -= iov->iov_len, iov++, count--;
        if (count > 0) iov->iov_base = (uint8_t *)iov->iov_base + done, iov->iov_len -= done;
    }
}

/* Reads id_offset and the ready frame from an already-connected socket. */
static void raw_handshake(struct raw_conn *c, int fd) {
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->rcap = RAW_READ_BUFFER;
    c->rbuf = malloc(c->rcap);
    if (!c->rbuf) die("out of memory");
    if (!raw_fill(c, 4)) die("baseline: connection closed during the handshake");
    c->id_offset = get_be32(c->rbuf + c->rstart);
    c->rstart += 4;
    c->next_id = c->id_offset + 1;
    size_t frame_start = c->rstart;
    struct raw_frame f;
    raw_next(c, &f);
    if (!type_is(&f, "core.ready")) die("baseline: first frame is not core.ready");
    buf_put(&c->ready_frame, c->rbuf + frame_start, c->rstart - frame_start);
}

static int unix_connect(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) die("socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect %s: %s", path, strerror(errno));
    return fd;
}

static void raw_connect(struct raw_conn *c, const char *path) { raw_handshake(c, unix_connect(path)); }

static void raw_close(struct raw_conn *c) {
    close(c->fd);
    free(c->rbuf);
    free(c->ready_frame.p);
    memset(c, 0, sizeof *c);
}

static uint32_t raw_alloc_id(struct raw_conn *c) {
    uint32_t id = c->next_id++;
    if (c->next_id == c->id_offset + ID_RANGE) c->next_id = c->id_offset + 1;
    return id;
}

/* ------------------------------------------------------------------------ */
/* Samples and medians                                                       */

enum field { F_REQ = 1, F_LAT = 2, F_MB = 4, F_CPU = 8, F_IDLE = 16 };

struct sample {
    double req_per_s, p50_us, p99_us, mb_per_s, cpu_s;
    double threads_per_client, rss_kib_per_client, extra_threads;
};

#define MAX_RUNS 64

struct measurement {
    const char *bench;
    const char *client;
    int threads;
    int fields;
    int n;
    struct sample runs[MAX_RUNS];
    struct sample median;
    bool has_ratio;
    double ratio;
    /* Library round trips from several threads: over the threaded reference. */
    bool has_ratio_threaded;
    double ratio_threaded;
};

#define MAX_MEASUREMENTS 32
static struct measurement results[MAX_MEASUREMENTS];
static int result_count;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(const struct sample *s, int n, size_t offset) {
    double v[MAX_RUNS];
    for (int i = 0; i < n; i++) v[i] = *(const double *)((const char *)&s[i] + offset);
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void finish_measurement(struct measurement *m) {
    struct sample *md = &m->median;
#define MEDIAN(field) md->field = median_of(m->runs, m->n, offsetof(struct sample, field))
    MEDIAN(req_per_s);
    MEDIAN(p50_us);
    MEDIAN(p99_us);
    MEDIAN(mb_per_s);
    MEDIAN(cpu_s);
    MEDIAN(threads_per_client);
    MEDIAN(rss_kib_per_client);
    MEDIAN(extra_threads);
#undef MEDIAN
}

static struct measurement *new_measurement(const char *bench, const char *client, int threads, int fields) {
    if (result_count == MAX_MEASUREMENTS) die("too many measurements");
    struct measurement *m = &results[result_count++];
    memset(m, 0, sizeof *m);
    m->bench = bench, m->client = client, m->threads = threads, m->fields = fields;
    return m;
}

/* Library figure over baseline figure: throughput for everything but idle clients. */
static void set_ratios(struct measurement *lib, struct measurement *base) {
    if (!lib || !base || (lib->fields & F_IDLE)) return;
    double l = lib->fields & F_MB ? lib->median.mb_per_s : lib->median.req_per_s;
    double b = base->fields & F_MB ? base->median.mb_per_s : base->median.req_per_s;
    if (b > 0) {
        lib->has_ratio = true, lib->ratio = l / b;
        base->has_ratio = true, base->ratio = 1.0;
    }
}


static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void latency_summary(uint64_t *lat_ns, size_t n, struct sample *s) {
    qsort(lat_ns, n, sizeof lat_ns[0], cmp_u64);
    size_t p99 = (size_t)((double)n * 0.99);
    if (p99 >= n) p99 = n - 1;
    s->p50_us = (double)lat_ns[n / 2] / 1e3;
    s->p99_us = (double)lat_ns[p99] / 1e3;
}

/* ------------------------------------------------------------------------ */
/* Shared state of one bench run                                             */

static const char *socket_path;
static msb_client *lib_client;   /* one library client for the whole run */
static struct raw_conn raw;      /* one baseline connection for the whole run */
static uint8_t *file_data;       /* the file the file benches write */

/* ------------------------------------------------------------------------ */
/* Round trips                                                               */

/* The latency array of one round-trip run, one entry per request. */
static uint64_t *latencies_new(size_t n) {
    uint64_t *lat = malloc(n * sizeof *lat);
    if (!lat) die("out of memory");
    return lat;
}

/* Fills in `s` for n round trips timed from t0 to t1 (process CPU from cpu0)
 * and frees their latency array. */
static void round_trips_done(struct sample *s, uint64_t *lat, size_t n, double cpu0, uint64_t t0, uint64_t t1) {
    s->cpu_s = process_cpu_s() - cpu0;
    s->req_per_s = (double)n / ((double)(t1 - t0) / 1e9);
    latency_summary(lat, n, s);
    free(lat);
}

/* One of the threads of a round-trip run: its share of the requests and of
 * the latency array. */
struct rt_worker {
    int index;
    size_t count;
    uint64_t *lat_ns;
    pthread_barrier_t *start;
};

/*
 * Splits opt.requests round trips over `threads` threads running `worker_main`
 * (which waits on w->start, then makes w->count round trips), and fills in
 * throughput, latency and CPU time. The clock starts when all threads are up.
 */
static void run_rt_workers(int threads, void *(*worker_main)(void *), struct sample *s) {
    size_t n = (size_t)opt.requests;
    uint64_t *lat = latencies_new(n);
    pthread_t tid[threads];
    struct rt_worker w[threads];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    size_t offset = 0;
    for (int i = 0; i < threads; i++) {
        size_t count = n / (size_t)threads + ((size_t)i < n % (size_t)threads);
        w[i] = (struct rt_worker){.index = i, .count = count, .lat_ns = lat + offset, .start = &start};
        offset += count;
        if (pthread_create(&tid[i], NULL, worker_main, &w[i]) != 0) die("pthread_create failed");
    }
    double cpu0 = process_cpu_s();
    pthread_barrier_wait(&start);
    uint64_t t0 = now_ns();
    for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
    uint64_t t1 = now_ns();
    pthread_barrier_destroy(&start);
    round_trips_done(s, lat, n, cpu0, t0, t1);
}

static void lib_stat_requests(size_t count, uint64_t *lat_ns) {
    for (size_t i = 0; i < count; i++) {
        msb_message *reply = NULL;
        msb_error *err = NULL;
        uint64_t t0 = now_ns();
        msb_status st = msb_client_request(lib_client, "core.fs.request", STAT_ROOT_PAYLOAD,
                                           sizeof STAT_ROOT_PAYLOAD, TIMEOUT_MS, &reply, &err);
        if (st != MSB_OK) die_msb("msb_client_request", st, err);
        if (lat_ns) lat_ns[i] = now_ns() - t0;
        if (strcmp(msb_message_type(reply), "core.fs.response") != 0 ||
            !(msb_message_flags(reply) & MSB_FLAG_TERMINAL))
            die("library: Stat answered with %s", msb_message_type(reply));
        msb_message_free(reply);
    }
}

static void *rt_worker_main(void *arg) {
    struct rt_worker *w = arg;
    pthread_barrier_wait(w->start);
    lib_stat_requests(w->count, w->lat_ns);
    return NULL;
}

static void lib_roundtrip(int threads, struct sample *s) {
    if (threads > 1) {
        run_rt_workers(threads, rt_worker_main, s);
        return;
    }
    size_t n = (size_t)opt.requests;
    uint64_t *lat = latencies_new(n);
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    lib_stat_requests(n, lat);
    uint64_t t1 = now_ns();
    round_trips_done(s, lat, n, cpu0, t0, t1);
}

/*
 * The library used like the pipelined baseline: one thread keeps `depth`
 * Stat requests in flight through the raw tier (subscribe, send, pull). As
 * the baseline answers each read's batch of replies with one batch of
 * requests, this waits for the oldest reply, takes every later one that is
 * already in without waiting, then refills all free slots.
 */
static void lib_pipelined(int depth, struct sample *s) {
    size_t n = (size_t)opt.requests;
    uint64_t *lat = latencies_new(n);
    msb_subscription *sub[depth];
    uint64_t sent_at[depth];
    size_t seq[depth];
    size_t sent = 0, done = 0;
    int oldest = 0, in_flight = 0;
    msb_error *err = NULL;
    msb_status st;
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    while (done < n) {
        while (in_flight < depth && sent < n) {
            int slot = (oldest + in_flight) % depth;
            uint32_t id = msb_client_alloc_id(lib_client);
            if ((st = msb_client_subscribe(lib_client, id, &sub[slot], &err)) != MSB_OK)
                die_msb("msb_client_subscribe", st, err);
            sent_at[slot] = now_ns(), seq[slot] = sent++;
            if ((st = msb_client_send(lib_client, "core.fs.request", id, STAT_ROOT_PAYLOAD,
                                      sizeof STAT_ROOT_PAYLOAD, TIMEOUT_MS, &err)) != MSB_OK)
                die_msb("msb_client_send", st, err);
            in_flight++;
        }
        int64_t wait_ms = TIMEOUT_MS;
        while (in_flight > 0) {
            msb_message *reply = NULL;
            st = msb_subscription_next(sub[oldest], wait_ms, &reply, &err);
            if (st == MSB_NOTHING_YET && wait_ms == 0) break;
            if (st != MSB_OK) die_msb("msb_subscription_next", st, err);
            lat[seq[oldest]] = now_ns() - sent_at[oldest];
            if (strcmp(msb_message_type(reply), "core.fs.response") != 0 ||
                !(msb_message_flags(reply) & MSB_FLAG_TERMINAL))
                die("library: Stat answered with %s", msb_message_type(reply));
            msb_message_free(reply);
            msb_subscription_free(sub[oldest]);
            oldest = (oldest + 1) % depth, in_flight--, done++;
            wait_ms = 0;
        }
    }
    uint64_t t1 = now_ns();
    round_trips_done(s, lat, n, cpu0, t0, t1);
}

static bool raw_frame_buffered(const struct raw_conn *c) {
    size_t have = c->rend - c->rstart;
    return have >= 4 && have >= 4 + (size_t)get_be32(c->rbuf + c->rstart);
}

/*
 * `depth` Stat requests in flight from this one thread: every batch of
 * replies that one read brought in is answered with one write of as many
 * new requests.
 */
static void base_roundtrip_n(size_t n, int depth, uint64_t *lat) {
    uint32_t pending_id[depth];
    uint64_t pending_t0[depth];
    size_t pending_seq[depth];
    int free_slots = depth;
    for (int i = 0; i < depth; i++) pending_id[i] = 0;
    struct buf out = {0};
    size_t sent = 0, done = 0;
    while (done < n) {
        out.len = 0;
        uint64_t now = now_ns();
        for (int slot = 0; slot < depth && free_slots > 0 && sent < n; slot++) {
            if (pending_id[slot]) continue;
            uint32_t id = raw_alloc_id(&raw);
            frame_full(&out, id, FLAG_SESSION_START, "core.fs.request", STAT_ROOT_PAYLOAD,
                       sizeof STAT_ROOT_PAYLOAD);
            pending_id[slot] = id, pending_t0[slot] = now, pending_seq[slot] = sent++;
            free_slots--;
        }
        if (out.len) write_all(raw.fd, out.p, out.len);
        do {
            struct raw_frame f;
            raw_next(&raw, &f);
            uint64_t t = now_ns();
            int slot = 0;
            while (slot < depth && pending_id[slot] != f.id) slot++;
            if (slot == depth) continue; /* not ours: dropped, as any client would */
            if (!type_is(&f, "core.fs.response") || !(f.flags & FLAG_TERMINAL))
                die("baseline: Stat answered with %.*s", (int)f.type_len, (const char *)f.type);
            if (!fs_response_ok(f.payload, f.payload_len)) die("baseline: Stat \"/\" failed in the guest");
            if (lat) lat[pending_seq[slot]] = t - pending_t0[slot];
            pending_id[slot] = 0;
            free_slots++;
            done++;
        } while (raw_frame_buffered(&raw));
    }
    free(out.p);
}

static void base_roundtrip(int depth, struct sample *s) {
    size_t n = (size_t)opt.requests;
    uint64_t *lat = latencies_new(n);
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    base_roundtrip_n(n, depth, lat);
    uint64_t t1 = now_ns();
    round_trips_done(s, lat, n, cpu0, t0, t1);
}

/*
 * The threaded reference: `threads` threads share the baseline connection,
 * each sending one Stat and blocking until its reply is in. Whichever waiting
 * thread finds nobody reading becomes the reader: it reads and hands out
 * replies until its own has come, then wakes one sleeping thread to read
 * next. Everything is as cheap as it can be: no allocation, no queue, a slot
 * per thread. All threads sleep on one futex word, each on a bit of its own
 * (FUTEX_WAIT_BITSET), and the reader wakes every sleeper one read served
 * with one FUTEX_WAKE_BITSET: woken one call each, every woken thread would
 * preempt the reader before it woke the next.
 */
struct thr_slot {
    _Atomic uint32_t id;      /* in flight, or 0 */
    _Atomic int ready;        /* its reply came */
    _Atomic int sleeping;
    char pad[64 - 12];        /* one cache line each */
};

static struct {
    int threads;
    struct thr_slot *slot;    /* one per thread */
    pthread_mutex_t write_lock;
    _Atomic int reading;      /* a thread is reading the socket */
    _Atomic uint32_t next;    /* id counter */
    _Atomic uint32_t wake;    /* futex word: bumped by every wake */
} thr;

static uint32_t thr_bit(int index) { return 1u << (index % 32); }

static void thr_wake(uint32_t bits) {
    if (!bits) return;
    atomic_fetch_add(&thr.wake, 1);
    syscall(SYS_futex, &thr.wake, FUTEX_WAKE_BITSET_PRIVATE, INT32_MAX, NULL, NULL, bits);
}

/* Reads and hands out replies until `me`'s has come. */
static void thr_read_until(int me) {
    struct thr_slot *mine = &thr.slot[me];
    uint32_t sleepers = 0; /* served by this read, to wake when it is drained */
    do {
        struct raw_frame f;
        raw_next(&raw, &f);
        int j = 0;
        while (j < thr.threads && atomic_load(&thr.slot[j].id) != f.id) j++;
        if (j < thr.threads) {
            if (!type_is(&f, "core.fs.response") || !(f.flags & FLAG_TERMINAL))
                die("threaded: Stat answered with %.*s", (int)f.type_len, (const char *)f.type);
            atomic_store(&thr.slot[j].id, 0);
            atomic_store(&thr.slot[j].ready, 1);
            if (j != me && atomic_load(&thr.slot[j].sleeping)) sleepers |= thr_bit(j);
        }
        if (!raw_frame_buffered(&raw)) {
            thr_wake(sleepers);
            sleepers = 0;
        }
    } while (!atomic_load(&mine->ready) || raw_frame_buffered(&raw));
    atomic_store(&thr.reading, 0);
    /* Someone must read next: wake one thread still waiting for its reply. */
    for (int j = 0; j < thr.threads; j++) {
        struct thr_slot *s = &thr.slot[j];
        if (j != me && atomic_load(&s->sleeping) && !atomic_load(&s->ready)) {
            thr_wake(thr_bit(j));
            break;
        }
    }
}

static void thr_wait_reply(int me) {
    struct thr_slot *mine = &thr.slot[me];
    for (;;) {
        if (atomic_load(&mine->ready)) return;
        int idle = 0;
        if (atomic_compare_exchange_strong(&thr.reading, &idle, 1)) {
            thr_read_until(me);
            return;
        }
        /* Take the word, then announce the sleep before the last check, so a
         * reader that lets go or delivers our reply after it sees us and
         * bumps the word. */
        uint32_t seen = atomic_load(&thr.wake);
        atomic_store(&mine->sleeping, 1);
        if (!atomic_load(&mine->ready) && atomic_load(&thr.reading))
            syscall(SYS_futex, &thr.wake, FUTEX_WAIT_BITSET_PRIVATE, seen, NULL, NULL, thr_bit(me));
        atomic_store(&mine->sleeping, 0);
    }
}

static void *thr_worker_main(void *arg) {
    struct rt_worker *w = arg;
    struct thr_slot *mine = &thr.slot[w->index];
    struct buf out = {0}; /* allocated by the first request, reused after */
    pthread_barrier_wait(w->start);
    for (size_t i = 0; i < w->count; i++) {
        uint32_t id = raw.id_offset + 1 + atomic_fetch_add(&thr.next, 1) % (ID_RANGE - 1);
        out.len = 0;
        frame_full(&out, id, FLAG_SESSION_START, "core.fs.request", STAT_ROOT_PAYLOAD, sizeof STAT_ROOT_PAYLOAD);
        uint64_t t0 = now_ns();
        atomic_store(&mine->ready, 0);
        atomic_store(&mine->id, id);
        pthread_mutex_lock(&thr.write_lock);
        write_all(raw.fd, out.p, out.len);
        pthread_mutex_unlock(&thr.write_lock);
        thr_wait_reply(w->index);
        w->lat_ns[i] = now_ns() - t0;
    }
    free(out.p);
    return NULL;
}

static void thr_roundtrip(int threads, struct sample *s) {
    thr.slot = calloc((size_t)threads, sizeof *thr.slot);
    if (!thr.slot) die("out of memory");
    thr.threads = threads;
    thr.reading = 0;
    thr.next = raw.next_id - raw.id_offset - 1;
    pthread_mutex_init(&thr.write_lock, NULL);
    run_rt_workers(threads, thr_worker_main, s);
    pthread_mutex_destroy(&thr.write_lock);
    free(thr.slot);
    thr.slot = NULL;
    /* Later baseline requests go on from where these left off. */
    raw.next_id = raw.id_offset + 1 + thr.next % (ID_RANGE - 1);
}

/* ------------------------------------------------------------------------ */
/* Streaming one exec's stdout                                               */

static void stream_bytes_text(char *out, size_t cap) { snprintf(out, cap, "%" PRIu64, opt.stream_bytes); }

static void report_stream_volume(const char *who, uint64_t got) {
    static bool warned;
    if (got != opt.stream_bytes && !warned) {
        warned = true;
        fprintf(stderr, "bench: note: %s received %" PRIu64 " stdout bytes, --stream-bytes is %" PRIu64
                        " (MB/s uses the bytes received)\n", who, got, opt.stream_bytes);
    }
}

static void lib_stream(struct sample *s) {
    char b[32];
    stream_bytes_text(b, sizeof b);
    msb_exec_request *req = NULL;
    msb_error *err = NULL;
    msb_status st;
    if ((st = msb_exec_request_new("sh", &req, &err)) != MSB_OK ||
        (st = msb_exec_request_add_arg(req, "-c", &err)) != MSB_OK ||
        (st = msb_exec_request_add_arg(req, opt.stream_cmd, &err)) != MSB_OK ||
        (st = msb_exec_request_add_env(req, "B", b, &err)) != MSB_OK)
        die_msb("building the exec request", st, err);

    uint64_t bytes = 0;
    int32_t code = -1;
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    msb_exec *exec = NULL;
    if ((st = msb_exec_start(lib_client, req, TIMEOUT_MS, &exec, &err)) != MSB_OK) die_msb("msb_exec_start", st, err);
    for (;;) {
        msb_exec_event *ev = NULL;
        st = msb_exec_next_event(exec, TIMEOUT_MS, &ev, &err);
        if (st == MSB_ENDED) break;
        if (st != MSB_OK) die_msb("msb_exec_next_event", st, err);
        msb_exec_kind kind = msb_exec_event_kind(ev);
        if (kind == MSB_EXEC_STDOUT) {
            size_t len = 0;
            msb_exec_event_data(ev, &len);
            bytes += len;
        } else if (kind == MSB_EXEC_EXITED) {
            code = msb_exec_event_exit_code(ev);
        }
        msb_exec_event_free(ev);
    }
    uint64_t t1 = now_ns();
    s->cpu_s = process_cpu_s() - cpu0;
    msb_exec_free(exec);
    msb_exec_request_free(req);
    if (code != 0) die("library: the stream command exited with %d", code);
    report_stream_volume("library", bytes);
    s->mb_per_s = (double)bytes / 1e6 / ((double)(t1 - t0) / 1e9);
}

/* core.exec.request {cmd: "sh", args: ["-c", CMD], env: ["B=<bytes>"], ...defaults}. */
static void exec_request_payload(struct buf *p) {
    char env[48];
    snprintf(env, sizeof env, "B=%" PRIu64, opt.stream_bytes);
    cb_head(p, 5, 9);
    cb_text(p, "cmd"), cb_text(p, "sh");
    cb_text(p, "args"), cb_head(p, 4, 2), cb_text(p, "-c"), cb_text(p, opt.stream_cmd);
    cb_text(p, "env"), cb_head(p, 4, 1), cb_text(p, env);
    cb_text(p, "cwd"), buf_byte(p, 0xf6);
    cb_text(p, "user"), buf_byte(p, 0xf6);
    cb_text(p, "tty"), buf_byte(p, 0xf4);
    cb_text(p, "rows"), cb_head(p, 0, 24);
    cb_text(p, "cols"), cb_head(p, 0, 80);
    cb_text(p, "rlimits"), cb_head(p, 4, 0);
}

static int64_t payload_int(const uint8_t *payload, size_t len, const char *key) {
    struct cursor c;
    int major;
    uint64_t v;
    if (!cb_lookup(payload, len, key, &c) || !cb_read_head(&c, &major, &v)) return INT64_MIN;
    return major == 0 ? (int64_t)v : major == 1 ? -1 - (int64_t)v : INT64_MIN;
}

static void base_stream(struct sample *s) {
    struct buf payload = {0}, frame = {0};
    exec_request_payload(&payload);
    uint32_t id = raw_alloc_id(&raw);
    frame_full(&frame, id, FLAG_SESSION_START, "core.exec.request", payload.p, payload.len);

    uint64_t bytes = 0;
    int64_t code = INT64_MIN;
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    write_all(raw.fd, frame.p, frame.len);
    for (;;) {
        struct raw_frame f;
        raw_next(&raw, &f);
        if (f.id != id) continue;
        if (type_is(&f, "core.exec.stdout")) {
            const uint8_t *data;
            size_t n;
            if (!payload_data(f.payload, f.payload_len, &data, &n)) die("baseline: bad core.exec.stdout payload");
            bytes += n;
        } else if (type_is(&f, "core.exec.exited")) {
            code = payload_int(f.payload, f.payload_len, "code");
            break;
        }
    }
    uint64_t t1 = now_ns();
    s->cpu_s = process_cpu_s() - cpu0;
    free(payload.p);
    free(frame.p);
    if (code != 0) die("baseline: the stream command exited with %" PRId64, code);
    report_stream_volume("baseline", bytes);
    s->mb_per_s = (double)bytes / 1e6 / ((double)(t1 - t0) / 1e9);
}

/* ------------------------------------------------------------------------ */
/* Files                                                                     */

/* {"op": {OP: {"path": PATH[, "mode": MODE]}}}; mode < 0 leaves it out. */
static void fs_op_payload(struct buf *p, const char *op, const char *path, long mode) {
    cb_head(p, 5, 1);
    cb_text(p, "op");
    cb_head(p, 5, 1);
    cb_text(p, op);
    cb_head(p, 5, mode >= 0 ? 2 : 1);
    cb_text(p, "path"), cb_text(p, path);
    if (mode >= 0) cb_text(p, "mode"), cb_head(p, 0, (uint64_t)mode);
}

static void raw_send_fs_request(uint32_t id, const char *op, const char *path, long mode) {
    struct buf payload = {0}, frame = {0};
    fs_op_payload(&payload, op, path, mode);
    frame_full(&frame, id, FLAG_SESSION_START, "core.fs.request", payload.p, payload.len);
    write_all(raw.fd, frame.p, frame.len);
    free(payload.p);
    free(frame.p);
}

/* Waits for the core.fs.response of `id`; data chunks go to `sink` if set. */
static bool raw_fs_wait(uint32_t id, struct buf *sink) {
    for (;;) {
        struct raw_frame f;
        raw_next(&raw, &f);
        if (f.id != id) continue;
        if (type_is(&f, "core.fs.data")) {
            const uint8_t *data;
            size_t n;
            if (!payload_data(f.payload, f.payload_len, &data, &n)) die("baseline: bad core.fs.data payload");
            if (sink) buf_put(sink, data, n);
        } else if (type_is(&f, "core.fs.response")) {
            return fs_response_ok(f.payload, f.payload_len);
        }
    }
}

/* A one-shot fs request (Mkdir, Remove) over the baseline connection. */
static bool raw_fs_simple(const char *op, const char *path) {
    uint32_t id = raw_alloc_id(&raw);
    raw_send_fs_request(id, op, path, -1);
    return raw_fs_wait(id, NULL);
}

static void lib_file_write(struct sample *s) {
    msb_error *err = NULL;
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    msb_status st = msb_fs_write_file(lib_client, opt.file_path, file_data, opt.file_bytes, 0644, TIMEOUT_MS, &err);
    uint64_t t1 = now_ns();
    if (st != MSB_OK) die_msb("msb_fs_write_file", st, err);
    s->cpu_s = process_cpu_s() - cpu0;
    s->mb_per_s = (double)opt.file_bytes / 1e6 / ((double)(t1 - t0) / 1e9);
}

static void lib_file_read(struct sample *s) {
    msb_error *err = NULL;
    msb_bytes *data = NULL;
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    msb_status st = msb_fs_read_file(lib_client, opt.file_path, TIMEOUT_MS, &data, &err);
    uint64_t t1 = now_ns();
    if (st != MSB_OK) die_msb("msb_fs_read_file", st, err);
    s->cpu_s = process_cpu_s() - cpu0;
    if (msb_bytes_len(data) != opt.file_bytes) die("library: read %zu bytes back", msb_bytes_len(data));
    msb_bytes_free(data);
    s->mb_per_s = (double)opt.file_bytes / 1e6 / ((double)(t1 - t0) / 1e9);
}

static void base_file_write(struct sample *s) {
    struct buf prefix = {0}, data_head = {0};
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    uint32_t id = raw_alloc_id(&raw);
    raw_send_fs_request(id, "Write", opt.file_path, 0644);
    uint64_t off = 0;
    for (;;) {
        size_t chunk = opt.file_bytes - off > FS_CHUNK ? FS_CHUNK : (size_t)(opt.file_bytes - off);
        data_head.len = 0, prefix.len = 0;
        cb_head(&data_head, 5, 1), cb_text(&data_head, "data"), cb_head(&data_head, 2, chunk);
        frame_prefix(&prefix, id, 0, "core.fs.data", data_head.len + chunk);
        buf_put(&prefix, data_head.p, data_head.len);
        struct iovec iov[2] = {{prefix.p, prefix.len}, {file_data + off, chunk}};
        writev_all(raw.fd, iov, chunk ? 2 : 1);
        if (chunk == 0) break; /* that was the empty end-of-data chunk */
        off += chunk;
    }
    if (!raw_fs_wait(id, NULL)) die("baseline: Write failed in the guest");
    uint64_t t1 = now_ns();
    s->cpu_s = process_cpu_s() - cpu0;
    free(prefix.p);
    free(data_head.p);
    s->mb_per_s = (double)opt.file_bytes / 1e6 / ((double)(t1 - t0) / 1e9);
}

static void base_file_read(struct sample *s) {
    struct buf content = {0};
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    uint32_t id = raw_alloc_id(&raw);
    raw_send_fs_request(id, "Read", opt.file_path, -1);
    if (!raw_fs_wait(id, &content)) die("baseline: Read failed in the guest");
    uint64_t t1 = now_ns();
    s->cpu_s = process_cpu_s() - cpu0;
    if (content.len != opt.file_bytes) die("baseline: read %zu bytes back", content.len);
    free(content.p);
    s->mb_per_s = (double)opt.file_bytes / 1e6 / ((double)(t1 - t0) / 1e9);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                               */

static long connect_retries;

static void lib_connect(struct sample *s) {
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    for (long i = 0; i < opt.connects; i++) {
        msb_client *c = NULL;
        msb_error *err = NULL;
        msb_status st = msb_client_connect(socket_path, NULL, &c, &err);
        if (st == MSB_ERR_HANDSHAKE) { /* all 16 slots busy: the relay has not seen a close yet */
            msb_error_free(err);
            connect_retries++;
            i--;
            continue;
        }
        if (st != MSB_OK) die_msb("msb_client_connect", st, err);
        msb_client_free(c);
    }
    uint64_t t1 = now_ns();
    s->cpu_s = process_cpu_s() - cpu0;
    s->req_per_s = (double)opt.connects / ((double)(t1 - t0) / 1e9);
}

/* connect, read id_offset and the ready frame into a stack buffer, close. */
static bool base_connect_once(void) {
    int fd = unix_connect(socket_path);
    uint8_t hs[4096];
    size_t have = 0, want = 8;
    while (have < want) {
        ssize_t n = read(fd, hs + have, sizeof hs - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            close(fd);
            return false;
        }
        have += (size_t)n;
        if (have >= 8) {
            want = 8 + (size_t)get_be32(hs + 4);
            if (want > sizeof hs) die("baseline: ready frame larger than expected");
        }
    }
    close(fd);
    return true;
}

static void base_connect(struct sample *s) {
    double cpu0 = process_cpu_s();
    uint64_t t0 = now_ns();
    for (long i = 0; i < opt.connects; i++) {
        if (!base_connect_once()) {
            connect_retries++;
            i--;
        }
    }
    uint64_t t1 = now_ns();
    s->cpu_s = process_cpu_s() - cpu0;
    s->req_per_s = (double)opt.connects / ((double)(t1 - t0) / 1e9);
}

/*
 * Idle clients. A relay serves at most 16 clients, so these connect to
 * socketpairs on which this program plays the relay's handshake (the real
 * relay's id_offset pattern and its actual ready frame): the footprint of an
 * idle client is the client's alone.
 */
static void idle_socketpair(int i, int *client_end, int *relay_end) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair: %s", strerror(errno));
    uint8_t id_offset[4];
    put_be32(id_offset, (uint32_t)(i % 16) * ID_RANGE);
    write_all(sv[1], id_offset, 4);
    write_all(sv[1], raw.ready_frame.p, raw.ready_frame.len);
    *client_end = sv[0], *relay_end = sv[1];
}

static void settle(void) { usleep(200 * 1000); }

static void lib_idle(struct sample *s) {
    int k = opt.idle_clients;
    msb_client *clients[k];
    int relay_ends[k];
    settle();
    int threads0 = thread_count();
    double rss0 = rss_bytes();
    for (int i = 0; i < k; i++) {
        int fd;
        idle_socketpair(i, &fd, &relay_ends[i]);
        msb_error *err = NULL;
        msb_status st = msb_client_connect_fd(fd, NULL, &clients[i], &err);
        if (st != MSB_OK) die_msb("msb_client_connect_fd", st, err);
        close(fd); /* the library holds its own duplicate */
    }
    settle();
    int threads1 = thread_count();
    double rss1 = rss_bytes();
    for (int i = 0; i < k; i++) msb_client_free(clients[i]), close(relay_ends[i]);
    s->extra_threads = threads1 - threads0;
    s->threads_per_client = (double)(threads1 - threads0) / k;
    s->rss_kib_per_client = (rss1 - rss0) / 1024.0 / k;
}

static void base_idle(struct sample *s) {
    int k = opt.idle_clients;
    struct raw_conn *conns = calloc((size_t)k, sizeof *conns);
    int relay_ends[k];
    settle();
    int threads0 = thread_count();
    double rss0 = rss_bytes();
    for (int i = 0; i < k; i++) {
        int fd;
        idle_socketpair(i, &fd, &relay_ends[i]);
        raw_handshake(&conns[i], fd);
    }
    int threads1 = thread_count();
    double rss1 = rss_bytes();
    for (int i = 0; i < k; i++) raw_close(&conns[i]), close(relay_ends[i]);
    free(conns);
    s->extra_threads = threads1 - threads0;
    s->threads_per_client = (double)(threads1 - threads0) / k;
    s->rss_kib_per_client = (rss1 - rss0) / 1024.0 / k;
}

/* ------------------------------------------------------------------------ */
/* Running and reporting                                                     */

static const char *bench_filter; /* --bench a,b: only these benches */

static bool bench_selected(const char *name) {
    if (!bench_filter) return true;
    size_t n = strlen(name);
    for (const char *p = bench_filter; (p = strstr(p, name)); p += n)
        if ((p == bench_filter || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return true;
    return false;
}

typedef void (*runner)(struct sample *);
typedef void (*threaded_runner)(int, struct sample *);

static int current_threads;
static threaded_runner current_lib_rt, current_base_rt;
static void lib_rt_current(struct sample *s) { current_lib_rt(current_threads, s); }
static void base_rt_current(struct sample *s) { current_base_rt(current_threads, s); }
static void thr_rt_current(struct sample *s) { thr_roundtrip(current_threads, s); }
static void lib_pipelined_current(struct sample *s) { lib_pipelined(current_threads, s); }

static bool progress; /* stderr is a terminal: show which run is going on */

/* The second library figure and the second baseline of a measurement, for
 * round trips from several threads (see the top of this file). */
struct extra_runners {
    runner lib_pipelined; /* the library, pipelined from one thread */
    runner threaded;      /* the threaded reference, a baseline */
};

static void measure_with(const char *bench, int threads, int fields, runner lib, runner base,
                         const struct extra_runners *extra) {
    struct measurement *lm = run_library() ? new_measurement(bench, "library", threads, fields) : NULL;
    struct measurement *bm = run_baseline() ? new_measurement(bench, "baseline", threads, fields) : NULL;
    struct measurement *pm = run_library() && extra ? new_measurement(bench, "lib-pipelined", threads, fields) : NULL;
    struct measurement *tm = run_baseline() && extra ? new_measurement(bench, "threaded", threads, fields) : NULL;
    for (int r = 0; r < opt.runs; r++) {
        if (progress) fprintf(stderr, "\rbench: %-12s threads %-2d run %d/%d", bench, threads, r + 1, opt.runs);
        if (lm) lib(&lm->runs[lm->n++]);
        if (bm) base(&bm->runs[bm->n++]);
        if (tm) extra->threaded(&tm->runs[tm->n++]);
        if (pm) extra->lib_pipelined(&pm->runs[pm->n++]);
    }
    if (progress) fprintf(stderr, "\r%60s\r", "");
    struct measurement *all[] = {lm, bm, pm, tm};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]) finish_measurement(all[i]);
    set_ratios(tm, bm);
    set_ratios(pm, bm);
    set_ratios(lm, bm);
    if (lm && tm && tm->median.req_per_s > 0) {
        lm->has_ratio_threaded = true;
        lm->ratio_threaded = lm->median.req_per_s / tm->median.req_per_s;
    }
}

static void measure(const char *bench, int threads, int fields, runner lib, runner base) {
    measure_with(bench, threads, fields, lib, base, NULL);
}

static void print_json(const struct measurement *m) {
    const struct sample *s = &m->median;
    printf("{\"bench\": \"%s\", \"client\": \"%s\"", m->bench, m->client);
    if (m->fields & F_IDLE) {
        printf(", \"clients\": %d, \"os_threads\": %.0f, \"threads_per_client\": %.3f, \"rss_kib_per_client\": %.1f",
               opt.idle_clients, s->extra_threads, s->threads_per_client, s->rss_kib_per_client);
    } else {
        printf(", \"threads\": %d", m->threads);
    }
    if (m->fields & F_REQ) printf(", \"req_per_s\": %.1f", s->req_per_s);
    if (m->fields & F_LAT) printf(", \"p50_us\": %.2f, \"p99_us\": %.2f", s->p50_us, s->p99_us);
    if (m->fields & F_MB) printf(", \"mb_per_s\": %.1f", s->mb_per_s);
    if (m->fields & F_CPU) printf(", \"cpu_s\": %.3f", s->cpu_s);
    if (m->has_ratio) printf(", \"ratio\": %.3f", m->ratio);
    if (m->has_ratio_threaded) printf(", \"ratio_threaded\": %.3f", m->ratio_threaded);
    printf("}\n");
}

static void print_table(FILE *out) {
    fprintf(out, "%-12s %-13s %4s %11s %9s %9s %9s %8s %7s\n", "bench", "client", "thr", "req/s", "p50 us",
            "p99 us", "MB/s", "CPU s", "ratio");
    for (int i = 0; i < result_count; i++) {
        const struct measurement *m = &results[i];
        const struct sample *s = &m->median;
        char c[7][24];
        for (int j = 0; j < 7; j++) strcpy(c[j], "-");
        if (m->fields & F_IDLE) {
            fprintf(out, "%-12s %-13s %4d clients: %+.0f threads (%.3f per client), %.1f KiB RSS per client\n",
                    m->bench, m->client, opt.idle_clients, s->extra_threads, s->threads_per_client,
                    s->rss_kib_per_client);
            continue;
        }
        if (m->fields & F_REQ) snprintf(c[0], sizeof c[0], "%.0f", s->req_per_s);
        if (m->fields & F_LAT) snprintf(c[1], sizeof c[1], "%.1f", s->p50_us), snprintf(c[2], sizeof c[2], "%.1f", s->p99_us);
        if (m->fields & F_MB) snprintf(c[3], sizeof c[3], "%.0f", s->mb_per_s);
        if (m->fields & F_CPU) snprintf(c[4], sizeof c[4], "%.3f", s->cpu_s);
        if (m->has_ratio) snprintf(c[5], sizeof c[5], "%.2f", m->ratio);
        fprintf(out, "%-12s %-13s %4d %11s %9s %9s %9s %8s %7s\n", m->bench, m->client, m->threads, c[0], c[1],
                c[2], c[3], c[4], c[5]);
    }
    for (int i = 0; i < result_count; i++) {
        const struct measurement *m = &results[i];
        if (m->has_ratio_threaded)
            fprintf(out, "\n%s from %d threads, library over threaded: %.2f\n", m->bench, m->threads,
                    m->ratio_threaded);
    }
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: bench [OPTIONS]\n"
            "  --socket PATH       relay socket (default: start target/release/msb-devrelay on a temp socket)\n"
            "  --requests N        round trips per run (default 100000)\n"
            "  --threads C         threads sharing one client / baseline pipeline depth (default 8)\n"
            "  --stream-cmd CMD    shell command whose stdout is streamed; $B is --stream-bytes\n"
            "                      (default: head -c $B /dev/zero)\n"
            "  --stream-bytes B    stream volume (default 1073741824)\n"
            "  --file-bytes B      file size for file_read/file_write (default 268435456)\n"
            "  --file-path PATH    guest path of that file (default /tmp/msb-bench-file.bin)\n"
            "  --connects N        connections per run (default 1000)\n"
            "  --idle-clients K    idle clients held at once (default 64)\n"
            "  --runs N            runs per measurement; medians are reported (default 3)\n"
            "  --only library|baseline   (baseline includes the threaded reference)\n"
            "  --bench LIST        comma-separated subset of: roundtrip,stream,file_write,file_read,connect,idle_clients\n"
            "  --json              one JSON line per measurement on stdout (the table goes to stderr)\n"
            "  --quick             small sizes for a smoke run (2000 requests, 64 MiB stream, 16 MiB files)\n"
            "Ratios are library/baseline throughput (req/s, MB/s; connections per second for connect).\n"
            "Round trips from several threads also run \"threaded\": the baseline's client with each thread\n"
            "blocking for its own reply, the limit of a blocking call-per-thread API on this machine, and\n"
            "\"lib-pipelined\": the library with as many requests in flight from one thread.\n");
}

static uint64_t parse_u64(const char *flag, const char *v) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || x == 0) die("%s wants a positive integer, got '%s'", flag, v);
    return x;
}

static void parse_args(int argc, char **argv) {
    bool quick = false;
    bool set_requests = false, set_stream = false, set_file = false, set_connects = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VALUE() (v ? (i++, v) : (die("%s needs a value", a), ""))
        if (!strcmp(a, "--socket")) opt.socket_path = VALUE();
        else if (!strcmp(a, "--requests")) opt.requests = (long)parse_u64(a, VALUE()), set_requests = true;
        else if (!strcmp(a, "--threads")) opt.threads = (int)parse_u64(a, VALUE());
        else if (!strcmp(a, "--stream-cmd")) opt.stream_cmd = VALUE();
        else if (!strcmp(a, "--stream-bytes")) opt.stream_bytes = parse_u64(a, VALUE()), set_stream = true;
        else if (!strcmp(a, "--file-bytes")) opt.file_bytes = parse_u64(a, VALUE()), set_file = true;
        else if (!strcmp(a, "--file-path")) opt.file_path = VALUE();
        else if (!strcmp(a, "--connects")) opt.connects = (long)parse_u64(a, VALUE()), set_connects = true;
        else if (!strcmp(a, "--idle-clients")) opt.idle_clients = (int)parse_u64(a, VALUE());
        else if (!strcmp(a, "--runs")) opt.runs = (int)parse_u64(a, VALUE());
        else if (!strcmp(a, "--bench")) bench_filter = VALUE();
        else if (!strcmp(a, "--json")) opt.json = true;
        else if (!strcmp(a, "--quick")) quick = true;
        else if (!strcmp(a, "--only")) {
            const char *w = VALUE();
            if (!strcmp(w, "library")) opt.only = ONLY_LIBRARY;
            else if (!strcmp(w, "baseline")) opt.only = ONLY_BASELINE;
            else die("--only wants library or baseline");
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else {
            usage(stderr);
            die("unknown argument %s", a);
        }
#undef VALUE
    }
    if (quick) {
        if (!set_requests) opt.requests = 2000;
        if (!set_stream) opt.stream_bytes = 64ull << 20;
        if (!set_file) opt.file_bytes = 16ull << 20;
        if (!set_connects) opt.connects = 100;
    }
    if (opt.runs > MAX_RUNS) die("--runs is at most %d", MAX_RUNS);
    if (opt.threads > 1024) die("--threads is at most 1024");
    if (opt.idle_clients > 1000) die("--idle-clients is at most 1000");
}

static void machine_facts(FILE *out) {
    char model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            char *colon = strchr(line, ':');
            if (!strncmp(line, "model name", 10) && colon) {
                snprintf(model, sizeof model, "%s", colon + 2);
                model[strcspn(model, "\n")] = 0;
                break;
            }
        }
        fclose(f);
    }
    fprintf(out, "libmicrosandbox_agent %s; %ld CPUs (%s); relay %s\n", msb_version(), sysconf(_SC_NPROCESSORS_ONLN),
            model, opt.socket_path ? opt.socket_path : "msb-devrelay started by the bench");
    fprintf(out, "%ld round trips, %.0f MiB stream (%s), %.0f MiB files, %ld connects, %d idle clients; "
                 "median of %d runs\n\n",
            opt.requests, (double)opt.stream_bytes / MIB, opt.stream_cmd, (double)opt.file_bytes / MIB,
            opt.connects, opt.idle_clients, opt.runs);
}

static void warm_up(void) {
    size_t n = opt.requests < 500 ? (size_t)opt.requests : 500;
    if (run_library()) lib_stat_requests(n, NULL);
    if (run_baseline()) base_roundtrip_n(n, 1, NULL);
}

static void on_signal(int sig) {
    stop_relay();
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    progress = isatty(STDERR_FILENO);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    socket_path = opt.socket_path ? opt.socket_path : start_relay(argv[0]);

    /* Always one baseline connection: it also captures the relay's ready frame for idle_clients. */
    raw_connect(&raw, socket_path);
    if (run_library()) {
        msb_error *err = NULL;
        msb_status st = msb_client_connect(socket_path, NULL, &lib_client, &err);
        if (st != MSB_OK) die_msb("msb_client_connect", st, err);
    }
    FILE *table = opt.json ? stderr : stdout;
    machine_facts(table);
    warm_up();

    if (bench_selected("roundtrip")) {
        current_lib_rt = lib_roundtrip, current_base_rt = base_roundtrip;
        current_threads = 1;
        measure("roundtrip", 1, F_REQ | F_LAT | F_CPU, lib_rt_current, base_rt_current);
        if (opt.threads != 1) {
            current_threads = opt.threads;
            struct extra_runners extra = {.lib_pipelined = lib_pipelined_current, .threaded = thr_rt_current};
            measure_with("roundtrip", opt.threads, F_REQ | F_LAT | F_CPU, lib_rt_current, base_rt_current, &extra);
        }
    }
    if (bench_selected("stream")) measure("stream", 1, F_MB | F_CPU, lib_stream, base_stream);
    bool files = bench_selected("file_write") || bench_selected("file_read");
    if (files) {
        file_data = malloc(opt.file_bytes);
        if (!file_data) die("out of memory for a %" PRIu64 "-byte file", opt.file_bytes);
        for (uint64_t i = 0; i < opt.file_bytes; i++) file_data[i] = (uint8_t)(i * 31 + (i >> 12));
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", opt.file_path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            if (!raw_fs_simple("Mkdir", dir)) die("could not create %s in the guest", dir);
        }
        /* file_read reads what file_write left, so it always needs one write first. */
        if (bench_selected("file_write")) measure("file_write", 1, F_MB | F_CPU, lib_file_write, base_file_write);
        else {
            struct sample ignored;
            base_file_write(&ignored);
        }
        if (bench_selected("file_read")) measure("file_read", 1, F_MB | F_CPU, lib_file_read, base_file_read);
        raw_fs_simple("Remove", opt.file_path);
        free(file_data);
    }
    if (bench_selected("connect")) measure("connect", 1, F_REQ | F_CPU, lib_connect, base_connect);
    if (bench_selected("idle_clients")) {
        struct measurement *lm = run_library() ? new_measurement("idle_clients", "library", 0, F_IDLE) : NULL;
        struct measurement *bm = run_baseline() ? new_measurement("idle_clients", "baseline", 0, F_IDLE) : NULL;
        for (int r = 0; r < opt.runs; r++) {
            if (lm) lib_idle(&lm->runs[lm->n++]);
            if (bm) base_idle(&bm->runs[bm->n++]);
        }
        if (lm) finish_measurement(lm);
        if (bm) finish_measurement(bm);
    }

    msb_client_free(lib_client);
    raw_close(&raw);
    stop_relay();

    if (connect_retries) fprintf(stderr, "bench: note: %ld connects found all relay slots busy and were retried\n", connect_retries);
    print_table(table);
    if (opt.json)
        for (int i = 0; i < result_count; i++) print_json(&results[i]);
    return 0;
}
