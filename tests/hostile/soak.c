/*
 * Soak: 10,000 execs and 10,000 fs round trips over one client from 8
 * concurrent threads, then the process's RSS and open descriptors must be
 * back where they started: nothing per request may be left behind (a leaked
 * subscription, eventfd, buffer or thread would show up here even when each
 * single request looks fine).
 *
 * The baseline is taken after connecting and a short warm-up on every
 * thread, so that what legitimately exists once per client or per thread
 * (the runtime, its poller, thread-local caches, the frame pool) is in it.
 * After the load: fds exactly equal, RSS within +8 MiB (allocator caches);
 * after msb_client_free, fds back to the count before connecting.
 *
 * Half the execs go through msb_exec_run, half through msb_exec_start and
 * event pulls; fs round trips cycle write, read (compared with what was
 * written) and stat (size checked) on one file per thread.
 *
 *   MSB_SOAK_EXECS, MSB_SOAK_FS, MSB_SOAK_THREADS scale it (defaults
 *   10000, 10000, 8). Run by scripts/soak.sh.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "harness.h"

#define TIMEOUT 20000
#define RSS_SLACK_KIB (8 * 1024)

static msb_client *client;
static int64_t execs_per_thread, fs_per_thread;

struct worker {
    int index;
    int64_t execs_done, fs_done, warmup;
    int failures;
    char first_failure[256];
};

static void note_failure(struct worker *w, const char *what, msb_error *err) {
    if (w->failures++ == 0)
        snprintf(w->first_failure, sizeof w->first_failure, "%s: %s", what, msb_error_message(err));
    msb_error_free(err);
}

static void one_exec(struct worker *w, int64_t i) {
    msb_error *err = NULL;
    msb_exec_request *req = NULL;
    char arg[32];
    snprintf(arg, sizeof arg, "%d-%lld", w->index, (long long)i);
    if (msb_exec_request_new("echo", &req, &err) != MSB_OK ||
        msb_exec_request_add_arg(req, arg, &err) != MSB_OK) {
        note_failure(w, "request", err);
        msb_exec_request_free(req);
        return;
    }
    size_t want = strlen(arg) + 1;
    if (i % 2 == 0) {
        msb_run_output *out = NULL;
        if (msb_exec_run(client, req, 4096, TIMEOUT, &out, &err) != MSB_OK) {
            note_failure(w, "msb_exec_run", err);
        } else {
            size_t n = 0;
            const uint8_t *d = msb_run_output_stdout(out, &n);
            if (msb_run_output_exit_code(out) != 0 || n != want || memcmp(d, arg, n - 1) != 0)
                note_failure(w, "msb_exec_run output", NULL);
            msb_run_output_free(out);
        }
    } else {
        msb_exec *exec = NULL;
        if (msb_exec_start(client, req, TIMEOUT, &exec, &err) != MSB_OK) {
            note_failure(w, "msb_exec_start", err);
        } else {
            size_t got = 0;
            int exit_code = -100;
            msb_status s;
            msb_exec_event *ev = NULL;
            while ((s = msb_exec_next_event(exec, TIMEOUT, &ev, &err)) == MSB_OK) {
                if (msb_exec_event_kind(ev) == MSB_EXEC_STDOUT) {
                    size_t n = 0;
                    (void)msb_exec_event_data(ev, &n);
                    got += n;
                } else if (msb_exec_event_kind(ev) == MSB_EXEC_EXITED) {
                    exit_code = msb_exec_event_exit_code(ev);
                }
                msb_exec_event_free(ev);
            }
            if (s != MSB_ENDED) note_failure(w, "msb_exec_next_event", err);
            else if (exit_code != 0 || got != want) note_failure(w, "streamed exec output", NULL);
            msb_exec_free(exec);
        }
    }
    msb_exec_request_free(req);
    w->execs_done++;
}

static void one_fs(struct worker *w, int64_t i) {
    char path[64], body[64];
    snprintf(path, sizeof path, "/soak/worker-%d.txt", w->index);
    /* Round i reads back what round i - 1 wrote, so each cycle of three
     * starts with a write of its own content. */
    int64_t cycle = i / 3;
    int len = snprintf(body, sizeof body, "worker %d cycle %lld", w->index, (long long)cycle);
    msb_error *err = NULL;
    switch (i % 3) {
    case 0:
        if (msb_fs_write_file(client, path, (const uint8_t *)body, (size_t)len, 0644, TIMEOUT, &err) != MSB_OK)
            note_failure(w, "msb_fs_write_file", err);
        break;
    case 1: {
        msb_bytes *data = NULL;
        if (msb_fs_read_file(client, path, TIMEOUT, &data, &err) != MSB_OK) {
            note_failure(w, "msb_fs_read_file", err);
        } else {
            if (msb_bytes_len(data) != (size_t)len || memcmp(msb_bytes_data(data), body, (size_t)len) != 0)
                note_failure(w, "read back differs", NULL);
            msb_bytes_free(data);
        }
        break;
    }
    default: {
        msb_fs_entry *entry = NULL;
        if (msb_fs_stat(client, path, TIMEOUT, &entry, &err) != MSB_OK) {
            note_failure(w, "msb_fs_stat", err);
        } else {
            if (msb_fs_entry_size(msb_fs_entry_as_view(entry)) != (uint64_t)len || msb_fs_entry_kind(msb_fs_entry_as_view(entry)) != MSB_FS_KIND_FILE)
                note_failure(w, "stat differs", NULL);
            msb_fs_entry_free(entry);
        }
    }
    }
    w->fs_done++;
}

static void *warm_up(void *arg) {
    struct worker *w = arg;
    for (int64_t i = 0; i < w->warmup; i++) {
        one_exec(w, i);
        one_fs(w, i);
    }
    return NULL;
}

static void *work(void *arg) {
    struct worker *w = arg;
    /* Interleave the two kinds so execs and fs requests are in flight
     * together on the shared connection. */
    int64_t e = 0, f = 0;
    while (e < execs_per_thread || f < fs_per_thread) {
        if (e < execs_per_thread) one_exec(w, e++);
        if (f < fs_per_thread) one_fs(w, f++);
    }
    return NULL;
}

static int run_threads(struct worker *workers, int n, void *(*fn)(void *)) {
    pthread_t t[64];
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, fn, &workers[i]);
    int failures = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        if (workers[i].failures) {
            fprintf(stderr, "  worker %d: %d failures, first: %s\n", i, workers[i].failures,
                    workers[i].first_failure);
            failures += workers[i].failures;
        }
    }
    return failures;
}

static struct relay relay;

static void soak(void) {
    const int64_t execs = h_env_int("MSB_SOAK_EXECS", 10000);
    const int64_t fs = h_env_int("MSB_SOAK_FS", 10000);
    int threads = (int)h_env_int("MSB_SOAK_THREADS", 8);
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    execs_per_thread = (execs + threads - 1) / threads;
    fs_per_thread = (fs + threads - 1) / threads;

    int fds_before_connect = h_open_fds();
    client = h_connect(&relay, 10000, 0);
    if (client == NULL) return;
    CHECK_STATUS(msb_fs_mkdir(client, "/soak", TIMEOUT, NULL), MSB_OK);

    struct worker workers[64];
    memset(workers, 0, sizeof workers);
    for (int i = 0; i < threads; i++) {
        workers[i].index = i;
        workers[i].warmup = 6;
    }
    CHECK(run_threads(workers, threads, warm_up) == 0);
    int fds_base = h_open_fds();
    long rss_base = h_rss_kib();

    for (int i = 0; i < threads; i++) workers[i].execs_done = workers[i].fs_done = 0;
    int64_t t0 = h_now_ms();
    int failures = run_threads(workers, threads, work);
    int64_t took = h_now_ms() - t0;
    CHECK_MSG(failures == 0, "%d failed requests", failures);
    int64_t execs_done = 0, fs_done = 0;
    for (int i = 0; i < threads; i++) {
        execs_done += workers[i].execs_done;
        fs_done += workers[i].fs_done;
    }
    CHECK(execs_done == execs_per_thread * threads && execs_done >= execs);
    CHECK(fs_done == fs_per_thread * threads && fs_done >= fs);

    int fds_after = h_open_fds();
    long rss_after = h_rss_kib();
    msb_counters k;
    memset(&k, 0, sizeof k);
    k.struct_size = sizeof k;
    CHECK_STATUS(msb_client_counters(client, &k), MSB_OK);
    printf("     %lld execs + %lld fs round trips from %d threads in %lld ms (%.0f requests/s)\n"
           "     fds %d -> %d, RSS %ld KiB -> %ld KiB, frames received %llu, queued now %llu\n",
           (long long)execs_done, (long long)fs_done, threads, (long long)took,
           (double)(execs_done + fs_done) * 1000.0 / (double)(took > 0 ? took : 1), fds_base, fds_after,
           rss_base, rss_after, (unsigned long long)k.frames_received,
           (unsigned long long)k.bytes_queued);
    CHECK_MSG(fds_after == fds_base, "open fds %d, were %d", fds_after, fds_base);
    CHECK_MSG(rss_after <= rss_base + RSS_SLACK_KIB, "RSS %ld KiB, was %ld KiB", rss_after, rss_base);
    CHECK(k.bytes_queued == 0);
    CHECK(k.dropped_out_of_range == 0 && k.unknown_type == 0);

    msb_client_free(client);
    client = NULL;
    int fds_freed = h_open_fds();
    CHECK_MSG(fds_freed == fds_before_connect, "after free: fds %d, before connect %d", fds_freed,
              fds_before_connect);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    if (relay_start(&relay, NULL) != 0) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    h_run("soak", soak);
    relay_stop(&relay, SIGTERM);
    return h_finish();
}
