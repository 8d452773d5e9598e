/* Lifetimes and threads: frees and closes racing blocked pulls, a relay
 * dying, leaked threads, a client shared by many threads, shutdown. */
/* gettid(2), to watch the blocked thread's state in /proc. */
#define _GNU_SOURCE
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const uint8_t stat_root[] = {0xa1, 0x62, 'o', 'p', 0xa1, 0x64, 'S', 't', 'a', 't',
                                    0xa1, 0x64, 'p', 'a', 't', 'h', 0x61, '/'};

/* A pull running on its own thread, so the main thread can pull the rug. */
struct blocked_pull {
    pthread_t thread;
    msb_subscription *sub;
    msb_exec *exec;
    const msb_client *client; /* for a blocked msb_client_request */
    atomic_int tid; /* set by the thread before it calls in */
    atomic_int returned;
    msb_status status;
    msb_status err_code;
    int64_t returned_at;
};

static void *pull_thread(void *arg) {
    struct blocked_pull *b = arg;
    msb_error *err = NULL;
    b->tid = (int)gettid();
    if (b->sub) {
        msb_message *m = NULL;
        b->status = msb_subscription_next(b->sub, MSB_TIMEOUT_INFINITE, &m, &err);
        msb_message_free(m);
    } else if (b->exec) {
        msb_exec_event *ev = NULL;
        /* Skip the STARTED event; block on what never comes. */
        do {
            msb_exec_event_free(ev);
            ev = NULL;
            b->status = msb_exec_next_event(b->exec, MSB_TIMEOUT_INFINITE, &ev, &err);
        } while (b->status == MSB_OK);
    } else {
        /* A well-formed {data: h''}: an undecodable payload may make the
         * agent exit. No reply ever comes to a stray stdin frame. */
        static const uint8_t empty_data[] = {0xa1, 0x64, 'd', 'a', 't', 'a', 0x40};
        msb_message *m = NULL;
        b->status = msb_client_request(b->client, "core.exec.stdin", empty_data, sizeof empty_data,
                                       MSB_TIMEOUT_INFINITE, &m, &err);
        msb_message_free(m);
    }
    b->err_code = err ? msb_error_code(err) : 0;
    msb_error_free(err);
    b->returned_at = now_ms();
    b->returned = 1;
    return NULL;
}

/* True if the thread is asleep in the kernel: for a thread whose only
 * remaining step is the library call, that means it is parked in its wait. */
static bool thread_sleeping(int tid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *after_name = strrchr(buf, ')');
    return after_name && after_name[1] == ' ' && after_name[2] == 'S';
}

/* Starts the pull and returns once it is parked inside the library: freeing
 * the handle before the call began would be a use after free by the test. */
static bool start_blocked(struct blocked_pull *b) {
    if (pthread_create(&b->thread, NULL, pull_thread, b) != 0) return false;
    while (!b->tid) sleep_ms(1);
    int64_t deadline = now_ms() + T_MS;
    for (int asleep = 0; asleep < 5 && now_ms() < deadline; sleep_ms(20))
        asleep = thread_sleeping(b->tid) ? asleep + 1 : 0;
    return !b->returned && thread_sleeping(b->tid);
}

/*
 * Waits (bounded) for the blocked thread to return MSB_ERR_CLOSED after the
 * main thread freed or closed what it waited on at `woken_at`. A thread that
 * was not woken is reported, then unstuck by traffic on `client` (or by
 * closing it) so that the rest of the run can go on.
 */
static void expect_woken_closed(struct blocked_pull *b, const msb_client *client, int64_t woken_at) {
    while (!b->returned && now_ms() - woken_at < 5000) sleep_ms(5);
    if (!b->returned) {
        test_fail(__FILE__, __LINE__,
                  "the blocked thread was not woken within 5 s (library bug: see /tmp/msb-requests/c-tests.md)");
        if (client) {
            msb_fs_entry *e = NULL;
            msb_fs_stat(client, "/", T_MS, &e, NULL);
            msb_fs_entry_free(e);
            sleep_ms(200);
            if (!b->returned) msb_client_close(client);
        }
    }
    pthread_join(b->thread, NULL);
    CHECK_INT(b->status, MSB_ERR_CLOSED);
    CHECK_INT(b->err_code, MSB_ERR_CLOSED);
}

static void test_free_subscription_while_another_thread_pulls(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    struct blocked_pull b = {0};
    REQUIRE_OK(msb_client_subscribe(c, msb_client_alloc_id(c), &b.sub, ERR));
    REQUIRE(start_blocked(&b));
    int64_t t0 = now_ms();
    msb_subscription_free(b.sub);
    expect_woken_closed(&b, c, t0);
    msb_client_free(c);
}

static void test_free_exec_while_another_thread_pulls(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    struct blocked_pull b = {0};
    msb_exec_request *req = make_request("sleep", "30", NULL);
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &b.exec, ERR));
    msb_exec_request_free(req);
    REQUIRE(start_blocked(&b));
    int64_t t0 = now_ms();
    msb_exec_free(b.exec);
    expect_woken_closed(&b, c, t0);
    msb_client_free(c); /* the relay kills the orphaned sleep */
}

static void test_client_close_wakes_every_waiter(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    struct blocked_pull on_sub = {0}, on_exec = {0}, on_request = {.client = c};
    REQUIRE_OK(msb_client_subscribe(c, msb_client_alloc_id(c), &on_sub.sub, ERR));
    msb_exec_request *req = make_request("sleep", "30", NULL);
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &on_exec.exec, ERR));
    REQUIRE(start_blocked(&on_sub) && start_blocked(&on_exec) && start_blocked(&on_request));

    int64_t t0 = now_ms();
    CHECK_INT(msb_client_close(c), MSB_OK);
    expect_woken_closed(&on_sub, NULL, t0);
    expect_woken_closed(&on_exec, NULL, t0);
    expect_woken_closed(&on_request, NULL, t0);

    /* Closed for good: every later call says so, and close is idempotent. */
    CHECK_INT(msb_client_close(c), MSB_OK);
    CHECK_INT(msb_client_close(NULL), MSB_ERR_NULL_POINTER);
    msb_fs_entry *e = NULL;
    EXPECT(MSB_ERR_CLOSED, msb_fs_stat(c, "/", T_MS, &e, ERR));
    msb_exec *exec = NULL;
    EXPECT(MSB_ERR_CLOSED, msb_exec_start(c, req, T_MS, &exec, ERR));
    msb_subscription *sub = NULL;
    EXPECT(MSB_ERR_CLOSED, msb_client_subscribe(c, msb_client_alloc_id(c), &sub, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_client_send(c, "core.fs.request", 0, stat_root, sizeof stat_root, T_MS, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_exec_write_stdin(on_exec.exec, (const uint8_t *)"x", 1, T_MS, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_exec_signal(on_exec.exec, 9, T_MS, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_exec_resize(on_exec.exec, 10, 10, T_MS, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_exec_close_stdin(on_exec.exec, T_MS, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_client_shutdown(c, T_MS, ERR));
    msb_file_reader *r = NULL;
    EXPECT(MSB_ERR_CLOSED, msb_file_reader_open(c, "/x", T_MS, &r, ERR));
    msb_exec_request_free(req);
    msb_subscription_free(on_sub.sub);
    msb_exec_free(on_exec.exec);
    msb_client_free(c);
}

static void test_client_free_while_another_thread_waits(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    struct blocked_pull b = {.client = c};
    REQUIRE(start_blocked(&b));
    int64_t t0 = now_ms();
    msb_client_free(c);
    expect_woken_closed(&b, NULL, t0);
}

/* Handles outlive their client: they stay valid to free and report CLOSED. */
static void test_handles_outlive_their_client(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_subscription *sub = NULL;
    msb_exec *exec = NULL;
    msb_file_reader *r = NULL;
    msb_file_writer *w = NULL;
    msb_exec_request *req = make_request("cat", NULL);
    EXPECT(MSB_OK, msb_client_subscribe(c, msb_client_alloc_id(c), &sub, ERR));
    EXPECT(MSB_OK, msb_exec_start(c, req, T_MS, &exec, ERR));
    EXPECT(MSB_OK, msb_fs_write_file(c, "/life.txt", (const uint8_t *)"x", 1, 0644, T_MS, ERR));
    EXPECT(MSB_OK, msb_file_reader_open(c, "/life.txt", T_MS, &r, ERR));
    EXPECT(MSB_OK, msb_file_writer_open(c, "/life2.txt", 0644, T_MS, &w, ERR));
    msb_client_free(c);

    msb_message *m = NULL;
    EXPECT(MSB_ERR_CLOSED, msb_subscription_next(sub, T_MS, &m, ERR));
    msb_exec_event *ev = NULL;
    msb_status st;
    while ((st = msb_exec_next_event(exec, T_MS, &ev, NULL)) == MSB_OK) msb_exec_event_free(ev);
    CHECK_INT(st, MSB_ERR_CLOSED);
    EXPECT(MSB_ERR_CLOSED, msb_exec_write_stdin(exec, (const uint8_t *)"x", 1, T_MS, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_file_writer_write(w, (const uint8_t *)"x", 1, T_MS, ERR));
    EXPECT(MSB_ERR_CLOSED, msb_file_writer_finish(w, T_MS, ERR));
    msb_bytes *chunk = NULL;
    /* The reply may have arrived before the close; whatever came is delivered first. */
    while ((st = msb_file_reader_next(r, T_MS, &chunk, NULL)) == MSB_OK) msb_bytes_free(chunk);
    CHECK(st == MSB_ERR_CLOSED || st == MSB_ENDED);
    msb_subscription_free(sub);
    msb_exec_free(exec);
    msb_file_reader_free(r);
    msb_file_writer_free(w);
    msb_exec_request_free(req);
}

static void test_relay_killed_mid_exec(void) {
    struct relay r;
    REQUIRE(relay_start(&r, NULL));
    msb_client *c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(r.socket, NULL, &c, ERR))) {
        /* cat ends by itself when the dead relay's end of its stdin closes. */
        msb_exec_request *req = make_request("sh", "-c", "echo before; exec cat", NULL);
        msb_exec *exec = NULL;
        if (EXPECT(MSB_OK, msb_exec_start(c, req, T_MS, &exec, ERR))) {
            struct exec_result res = {0};
            CHECK(read_stdout_until(exec, "before\n", &res));
            /* SIGKILL: the relay vanishes without a word (a SIGTERMed relay
             * may still report the exit of the processes it kills). */
            int status = relay_stop(&r, SIGKILL);
            CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
            collect_exec(exec, T_MS, &res);
            CHECK_INT(res.end_status, MSB_ERR_CLOSED);
            CHECK(!res.exited);
            exec_result_free(&res);
            msb_fs_entry *e = NULL;
            EXPECT(MSB_ERR_CLOSED, msb_fs_stat(c, "/", T_MS, &e, ERR));
        }
        msb_exec_free(exec);
        msb_exec_request_free(req);
    }
    msb_client_free(c);
    relay_stop(&r, SIGKILL);
}

static void test_relay_closes_mid_exec_fault(void) {
    struct relay r;
    REQUIRE(relay_start(&r, "close-mid-exec"));
    msb_client *c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(r.socket, NULL, &c, ERR))) {
        msb_exec_request *req = make_request("true", NULL);
        msb_exec *exec = NULL;
        if (EXPECT(MSB_OK, msb_exec_start(c, req, T_MS, &exec, ERR))) {
            /* started and one stdout frame are delivered, then the error. */
            struct exec_result res = {0};
            collect_exec(exec, T_MS, &res);
            CHECK(res.started);
            CHECK(res.out_len > 0);
            CHECK(!res.exited);
            CHECK_INT(res.end_status, MSB_ERR_CLOSED);
            exec_result_free(&res);
        }
        msb_exec_free(exec);
        msb_exec_request_free(req);
    }
    msb_client_free(c);
    relay_stop(&r, SIGTERM);
}

static void test_protocol_faults_close_the_connection(void) {
    const char *faults[] = {"oversize-frame", "short-frame", "bad-cbor", "bad-body-shape"};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        struct relay r;
        if (!relay_start(&r, faults[i])) continue;
        msb_client *c = NULL;
        if (EXPECT(MSB_OK, msb_client_connect(r.socket, NULL, &c, ERR))) {
            msb_fs_entry *e = NULL;
            msb_error *err = NULL;
            msb_status st = msb_fs_stat(c, "/", T_MS, &e, &err);
            if (st != MSB_ERR_PROTOCOL)
                test_fail(__FILE__, __LINE__, "--fault %s: stat gave %d (%s), expected MSB_ERR_PROTOCOL", faults[i],
                          st, msb_error_message(err));
            msb_error_free(err);
            msb_fs_entry_free(st == MSB_OK ? e : NULL);
        }
        msb_client_free(c);
        relay_stop(&r, SIGTERM);
    }
}

static void test_stray_frames_are_dropped_and_counted(void) {
    struct relay r;
    REQUIRE(relay_start(&r, "out-of-range-id"));
    msb_client *c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(r.socket, NULL, &c, ERR))) {
        msb_fs_entry *e = NULL;
        if (EXPECT(MSB_OK, msb_fs_stat(c, "/", T_MS, &e, ERR))) CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_DIR);
        msb_fs_entry_free(e);
        msb_counters k = {.struct_size = sizeof k};
        CHECK_INT(msb_client_counters(c, &k), MSB_OK);
        CHECK(k.dropped_out_of_range >= 1);
    }
    msb_client_free(c);
    relay_stop(&r, SIGTERM);

    REQUIRE(relay_start(&r, "unknown-type"));
    c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(r.socket, NULL, &c, ERR))) {
        msb_fs_entry *e = NULL;
        if (EXPECT(MSB_OK, msb_fs_stat(c, "/", T_MS, &e, ERR))) CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_DIR);
        msb_fs_entry_free(e);
        msb_counters k = {.struct_size = sizeof k};
        CHECK_INT(msb_client_counters(c, &k), MSB_OK);
        CHECK(k.unknown_type >= 1);
    }
    msb_client_free(c);
    relay_stop(&r, SIGTERM);
}

static void test_send_times_out_when_the_relay_stops_reading(void) {
    struct relay r;
    REQUIRE(relay_start(&r, "stop-reading"));
    msb_client *c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(r.socket, NULL, &c, ERR))) {
        size_t chunk = 16 << 10;
        uint8_t *payload = calloc(1, chunk);
        REQUIRE(payload);
        uint32_t id = msb_client_alloc_id(c);
        /* Socket buffers hold a few MiB at most; then a send must time out. */
        msb_status st = MSB_OK;
        int sent = 0;
        int64_t t0 = 0;
        for (; sent < 4096 && st == MSB_OK; sent++) {
            t0 = now_ms();
            st = msb_client_send(c, "core.exec.stdin", id, payload, chunk, 300, NULL);
        }
        CHECK_INT(st, MSB_ERR_TIMEOUT);
        int64_t took = now_ms() - t0;
        CHECK(took >= 250 && took < 5000);
        CHECK(sent > 1);
        /* A frame cut short by the timeout leaves the stream unusable, so
         * the client closes it; a frame that never started leaves it open. */
        msb_exec_request *req = make_request("true", NULL);
        msb_exec *exec = NULL;
        msb_status next = msb_exec_start(c, req, 200, &exec, NULL);
        CHECK(next == MSB_ERR_TIMEOUT || next == MSB_ERR_CLOSED);
        msb_exec_request_free(req);
        free(payload);
    }
    msb_client_free(c);
    relay_stop(&r, SIGTERM);
}

static void test_memory_budget_bounds_a_flood(void) {
    struct relay r;
    REQUIRE(relay_start(&r, "flood"));
    msb_connect_options *opts = NULL;
    REQUIRE(msb_connect_options_new(&opts) == MSB_OK);
    const size_t budget = 65536;
    CHECK_INT(msb_connect_options_set_memory_budget(opts, budget), MSB_OK);
    msb_client *c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(r.socket, opts, &c, ERR))) {
        msb_exec_request *req = make_request("true", NULL);
        msb_exec *exec = NULL;
        int fd = -1;
        if (EXPECT(MSB_OK, msb_exec_start(c, req, T_MS, &exec, ERR)) &&
            EXPECT(MSB_OK, msb_exec_readiness_fd(exec, &fd, ERR))) {
            /* A passive waiter: the client reads in the background, until
             * the budget is spent, while nobody pulls. */
            CHECK(fd_readable(fd, T_MS));
            sleep_ms(300);
            msb_counters k = {.struct_size = sizeof k};
            CHECK_INT(msb_client_counters(c, &k), MSB_OK);
            CHECK(k.bytes_queued > 0);
            /* The client stops reading once the budget is spent, but frames
             * already in its 256 KiB read buffer are still queued: at most
             * the budget, plus that buffer, plus the 64 KiB flood frame that
             * straddles its end. Without a budget the flood would queue
             * without bound. */
            const uint64_t bound = budget + (256u << 10) + (64u << 10) + 1024u;
            if (k.bytes_queued > bound)
                test_fail(__FILE__, __LINE__, "bytes_queued %llu exceeds %llu", (unsigned long long)k.bytes_queued,
                          (unsigned long long)bound);
            /* Pulling frees budget and the stream carries on. */
            size_t got = 0;
            for (int i = 0; i < 40; i++) {
                msb_exec_event *ev = NULL;
                if (!EXPECT(MSB_OK, msb_exec_next_event(exec, T_MS, &ev, ERR))) break;
                size_t len = 0;
                msb_exec_event_data(ev, &len);
                got += len;
                msb_exec_event_free(ev);
            }
            CHECK(got >= 38u * 65536u);
        }
        msb_exec_free(exec);
        msb_exec_request_free(req);
    }
    msb_client_free(c);
    msb_connect_options_free(opts);
    relay_stop(&r, SIGTERM);
}

static void test_shutdown_stops_the_relay(void) {
    struct relay r;
    REQUIRE(relay_start(&r, NULL));
    msb_client *c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(r.socket, NULL, &c, ERR))) {
        EXPECT(MSB_ERR_NULL_POINTER, msb_client_shutdown(NULL, T_MS, ERR));
        EXPECT(MSB_OK, msb_client_shutdown(c, T_MS, ERR));
        int status = relay_stop(&r, 0); /* waits for the relay to exit by itself */
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        msb_fs_entry *e = NULL;
        EXPECT(MSB_ERR_CLOSED, msb_fs_stat(c, "/", T_MS, &e, ERR));
    }
    msb_client_free(c);
    relay_stop(&r, SIGKILL);
}

/* Makes the client read in the background: a caller waiting on a readiness
 * fd does not pull, so only the client's own thread can read the reply. */
static bool wait_on_readiness_fd(msb_client *c, int *threads_seen) {
    uint32_t id = msb_client_alloc_id(c);
    msb_subscription *sub = NULL;
    int fd = -1;
    bool ok = EXPECT(MSB_OK, msb_client_subscribe(c, id, &sub, ERR)) &&
              EXPECT(MSB_OK, msb_subscription_readiness_fd(sub, &fd, ERR)) &&
              EXPECT(MSB_OK, msb_client_send(c, "core.fs.request", id, stat_root, sizeof stat_root, T_MS, ERR)) &&
              fd_readable(fd, T_MS);
    *threads_seen = thread_count();
    msb_subscription_free(sub);
    return ok;
}

static void test_no_threads_leak_over_100_clients(void) {
    int before = thread_count(), peak = before;
    REQUIRE(before > 0);
    for (int i = 0; i < 100; i++) {
        msb_client *c = NULL;
        if (!EXPECT(MSB_OK, msb_client_connect(env_socket(), NULL, &c, ERR))) break;
        int now = 0;
        CHECK(wait_on_readiness_fd(c, &now));
        if (now > peak) peak = now;
        msb_client_free(c);
    }
    CHECK(peak > before); /* the clients did run threads of their own */
    CHECK_INT(thread_count(), before);
}

#define SHARING_THREADS 8
#define ROUND_TRIPS 40

struct sharer {
    pthread_t thread;
    const msb_client *client;
    int index;
    int ok;
};

static void *share_client(void *arg) {
    struct sharer *s = arg;
    char path[64];
    snprintf(path, sizeof path, "/share-%d", s->index);
    for (int i = 0; i < ROUND_TRIPS; i++) {
        msb_fs_entry *e = NULL;
        if (msb_fs_stat(s->client, "/", T_MS, &e, NULL) == MSB_OK && msb_fs_entry_kind(e) == MSB_FS_KIND_DIR) s->ok++;
        msb_fs_entry_free(e);
        /* Raw requests interleave with typed calls on the same connection. */
        msb_message *m = NULL;
        if (msb_client_request(s->client, "core.fs.request", stat_root, sizeof stat_root, T_MS, &m, NULL) == MSB_OK &&
            !strcmp(msb_message_type(m), "core.fs.response"))
            s->ok++;
        msb_message_free(m);
    }
    /* Each thread's own file survives the others' traffic intact. */
    uint8_t content[1000];
    memset(content, 'a' + s->index, sizeof content);
    msb_bytes *back = NULL;
    if (msb_fs_write_file(s->client, path, content, sizeof content, 0644, T_MS, NULL) == MSB_OK &&
        msb_fs_read_file(s->client, path, T_MS, &back, NULL) == MSB_OK && msb_bytes_len(back) == sizeof content &&
        memcmp(msb_bytes_data(back), content, sizeof content) == 0)
        s->ok++;
    msb_bytes_free(back);
    msb_fs_remove(s->client, path, T_MS, NULL);
    return NULL;
}

static void test_eight_threads_share_one_client(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    struct sharer s[SHARING_THREADS];
    for (int i = 0; i < SHARING_THREADS; i++) {
        s[i] = (struct sharer){.client = c, .index = i};
        CHECK(pthread_create(&s[i].thread, NULL, share_client, &s[i]) == 0);
    }
    for (int i = 0; i < SHARING_THREADS; i++) {
        pthread_join(s[i].thread, NULL);
        CHECK_INT(s[i].ok, 2 * ROUND_TRIPS + 1);
    }
    msb_counters k = {.struct_size = sizeof k};
    CHECK_INT(msb_client_counters(c, &k), MSB_OK);
    CHECK_INT(k.dropped_no_subscriber, 0);
    CHECK_INT(k.bytes_queued, 0);
    msb_client_free(c);
}

const struct test_case lifecycle_tests[] = {
    {"freeing a subscription wakes its blocked puller with CLOSED", test_free_subscription_while_another_thread_pulls},
    {"freeing an exec wakes its blocked puller with CLOSED", test_free_exec_while_another_thread_pulls},
    {"client close wakes every waiter; later calls are CLOSED", test_client_close_wakes_every_waiter},
    {"client free while another thread waits in a request", test_client_free_while_another_thread_waits},
    {"handles outlive their client and report CLOSED", test_handles_outlive_their_client},
    {"relay SIGKILLed mid-exec: output first, then CLOSED", test_relay_killed_mid_exec},
    {"--fault close-mid-exec: started + stdout, then CLOSED", test_relay_closes_mid_exec_fault},
    {"protocol faults surface as MSB_ERR_PROTOCOL", test_protocol_faults_close_the_connection},
    {"out-of-range and unknown-type frames are counted, not fatal", test_stray_frames_are_dropped_and_counted},
    {"send times out when the relay stops reading", test_send_times_out_when_the_relay_stops_reading},
    {"memory budget bounds what a flood queues", test_memory_budget_bounds_a_flood},
    {"shutdown makes the relay exit", test_shutdown_stops_the_relay},
    {"100 connect+use+free cycles leak no threads", test_no_threads_leak_over_100_clients},
    {"8 threads share one client for stat round trips", test_eight_threads_share_one_client},
    {NULL, NULL},
};
