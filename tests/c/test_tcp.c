/*
 * TCP through the guest (generation 4) and liveness (generation 6), against
 * a small TCP server run by this test on 127.0.0.1: the development relay
 * makes the guest's connections from the host. Below the generations that
 * have them (the 0.3.14 profile), the calls must be MSB_ERR_UNSUPPORTED.
 */
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---------------------------------------------------------------- server */

enum server_mode {
    ECHO,           /* echo every byte; after the client's EOF, close */
    GREET_AND_CLOSE /* send "hello\n" and close without reading */
};

struct server {
    int listen_fd;
    uint16_t port;
    enum server_mode mode;
    int connections; /* how many to serve before the thread ends */
    pthread_t thread;
};

static void *serve_one(void *arg) {
    intptr_t fd = (intptr_t)arg;
    char buf[65536];
    for (;;) {
        ssize_t n = read((int)fd, buf, sizeof buf);
        if (n <= 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write((int)fd, buf + off, (size_t)(n - off));
            if (w <= 0) goto done;
            off += w;
        }
    }
done:
    close((int)fd);
    return NULL;
}

static void *server_main(void *arg) {
    struct server *s = arg;
    pthread_t workers[16];
    int started = 0;
    for (int i = 0; i < s->connections; i++) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) break;
        if (s->mode == GREET_AND_CLOSE) {
            if (write(fd, "hello\n", 6) != 6) {
            }
            close(fd);
            continue;
        }
        if (started < 16 && pthread_create(&workers[started], NULL, serve_one, (void *)(intptr_t)fd) == 0)
            started++;
        else
            close(fd);
    }
    for (int i = 0; i < started; i++) pthread_join(workers[i], NULL);
    return NULL;
}

static bool server_start(struct server *s, enum server_mode mode, int connections) {
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->connections = connections;
    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->listen_fd < 0) return false;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(s->listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s->listen_fd, 16) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&addr, &len) != 0) {
        close(s->listen_fd);
        return false;
    }
    s->port = ntohs(addr.sin_port);
    return pthread_create(&s->thread, NULL, server_main, s) == 0;
}

static void server_stop(struct server *s) {
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
}

/* A port nothing listens on (bound, then closed). */
static uint16_t closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    bind(fd, (struct sockaddr *)&addr, sizeof addr);
    getsockname(fd, (struct sockaddr *)&addr, &len);
    close(fd);
    return ntohs(addr.sin_port);
}

/* ---------------------------------------------------------------- helpers */

static bool has_tcp(msb_client *c) { return msb_client_generation(c) >= 4; }

/* Reads until `want` bytes arrived (or the stream ends); returns how many
 * arrived, appended to buf. */
static size_t read_exactly(msb_tcp_stream *s, uint8_t *buf, size_t want) {
    size_t got = 0;
    while (got < want) {
        msb_bytes *chunk = NULL;
        msb_status st = msb_tcp_read(s, T_MS, &chunk, NULL);
        if (st != MSB_OK) break;
        size_t n = msb_bytes_len(chunk);
        CHECK(n > 0 && n <= 64 * 1024);
        if (got + n > want) n = want - got;
        memcpy(buf + got, msb_bytes_data(chunk), n);
        got += n;
        msb_bytes_free(chunk);
    }
    return got;
}

/* ---------------------------------------------------------------- tests */

static void test_unsupported_on_older_sandboxes(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    uint32_t gen = msb_client_generation(c);
    msb_tcp_stream *s = (msb_tcp_stream *)&s;
    uint64_t seq = 77;
    if (gen < 4) {
        EXPECT(MSB_ERR_UNSUPPORTED, msb_tcp_connect(c, "127.0.0.1", 1, T_MS, &s, ERR));
        CHECK(s == (msb_tcp_stream *)&s);
        msb_error *err = NULL;
        msb_tcp_connect(c, "127.0.0.1", 1, T_MS, &s, &err);
        CHECK(err && strstr(msb_error_message(err), "core.tcp.connect") != NULL);
        msb_error_free(err);
    }
    if (gen < 6) {
        EXPECT(MSB_ERR_UNSUPPORTED, msb_client_ping(c, T_MS, ERR));
        EXPECT(MSB_ERR_UNSUPPORTED, msb_client_touch(c, T_MS, &seq, ERR));
        CHECK_INT(seq, 77);
    }
    /* The connection is untouched: an exec still runs. */
    msb_exec_request *req = make_request("true", NULL);
    msb_run_output *out = NULL;
    if (EXPECT(MSB_OK, msb_exec_run(c, req, 1024, T_MS, &out, ERR))) CHECK_INT(msb_run_output_exit_code(out), 0);
    msb_run_output_free(out);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_ping_and_touch(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (msb_client_generation(c) < 6) {
        msb_client_free(c);
        return;
    }
    EXPECT(MSB_OK, msb_client_ping(c, T_MS, ERR));
    uint64_t a = 0, b = 0;
    EXPECT(MSB_OK, msb_client_touch(c, T_MS, &a, ERR));
    EXPECT(MSB_OK, msb_client_touch(c, T_MS, &b, ERR));
    CHECK(b > a);
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_touch(c, T_MS, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_touch(NULL, T_MS, &a, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_ping(NULL, T_MS, ERR));
    /* Many at once from one thread's view: each gets its own id. */
    for (int i = 0; i < 50; i++) EXPECT(MSB_OK, msb_client_ping(c, T_MS, ERR));
    msb_client_close(c);
    EXPECT(MSB_ERR_CLOSED, msb_client_ping(c, T_MS, ERR));
    msb_client_free(c);
}

static void test_echo_and_half_close(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_tcp(c)) {
        msb_client_free(c);
        return;
    }
    struct server srv;
    REQUIRE(server_start(&srv, ECHO, 1));
    msb_tcp_stream *s = NULL;
    if (EXPECT(MSB_OK, msb_tcp_connect(c, "127.0.0.1", srv.port, T_MS, &s, ERR))) {
        CHECK(msb_tcp_stream_id(s) != 0);
        /* Nothing sent yet: a non-blocking read has nothing, and the
         * readiness fd is not readable. */
        msb_bytes *chunk = (msb_bytes *)&chunk;
        EXPECT(MSB_NOTHING_YET, msb_tcp_read(s, 0, &chunk, ERR));
        CHECK(chunk == (msb_bytes *)&chunk);
        int fd = -1;
        EXPECT(MSB_OK, msb_tcp_readiness_fd(s, &fd, ERR));
        CHECK(fd >= 0 && !fd_readable(fd, 0));

        EXPECT(MSB_OK, msb_tcp_write(s, (const uint8_t *)"ping", 4, T_MS, ERR));
        EXPECT(MSB_OK, msb_tcp_write(s, NULL, 0, T_MS, ERR));
        CHECK(fd_readable(fd, T_MS));
        uint8_t buf[16];
        CHECK_INT(read_exactly(s, buf, 4), 4);
        CHECK(memcmp(buf, "ping", 4) == 0);

        /* 1 MiB both ways: sent in 64 KiB chunks, echoed back whole. */
        size_t big = 1 << 20;
        uint8_t *out = malloc(big), *back = malloc(big);
        REQUIRE(out && back);
        for (size_t i = 0; i < big; i++) out[i] = (uint8_t)(i * 7 + 3);
        EXPECT(MSB_OK, msb_tcp_write(s, out, big, T_MS, ERR));
        CHECK_INT(read_exactly(s, back, big), big);
        CHECK(memcmp(out, back, big) == 0);
        free(out);
        free(back);

        /* Half-close: the server sees EOF and closes; we read MSB_ENDED,
         * and keep reading it. Writes are now MSB_ERR_WRONG_STATE. */
        EXPECT(MSB_OK, msb_tcp_shutdown_write(s, T_MS, ERR));
        EXPECT(MSB_OK, msb_tcp_shutdown_write(s, T_MS, ERR));
        EXPECT(MSB_ERR_WRONG_STATE, msb_tcp_write(s, (const uint8_t *)"x", 1, T_MS, ERR));
        EXPECT(MSB_ENDED, msb_tcp_read(s, T_MS, &chunk, ERR));
        EXPECT(MSB_ENDED, msb_tcp_read(s, 0, &chunk, ERR));
        EXPECT(MSB_ENDED, msb_tcp_read(s, T_MS, &chunk, ERR));
        CHECK(chunk == (msb_bytes *)&chunk);
    }
    msb_tcp_stream_free(s);
    server_stop(&srv);
    /* The client carries on. */
    msb_fs_entry *e = NULL;
    EXPECT(MSB_OK, msb_fs_stat(c, "/", T_MS, &e, ERR));
    msb_fs_entry_free(e);
    msb_client_free(c);
}

static void test_peer_closes_first(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_tcp(c)) {
        msb_client_free(c);
        return;
    }
    struct server srv;
    REQUIRE(server_start(&srv, GREET_AND_CLOSE, 1));
    msb_tcp_stream *s = NULL;
    if (EXPECT(MSB_OK, msb_tcp_connect(c, "127.0.0.1", srv.port, T_MS, &s, ERR))) {
        uint8_t buf[16];
        CHECK_INT(read_exactly(s, buf, 6), 6);
        CHECK(memcmp(buf, "hello\n", 6) == 0);
        msb_bytes *chunk = NULL;
        EXPECT(MSB_ENDED, msb_tcp_read(s, T_MS, &chunk, ERR));
        /* Our side may still write until we shut it down (the peer has
         * gone, so the bytes are lost, but the session is half open). */
        EXPECT(MSB_OK, msb_tcp_shutdown_write(s, T_MS, ERR));
        EXPECT(MSB_ENDED, msb_tcp_read(s, T_MS, &chunk, ERR));
        CHECK(chunk == NULL);
    }
    msb_tcp_stream_free(s);
    server_stop(&srv);
    msb_client_free(c);
}

static void test_connect_failures_and_arguments(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_tcp(c)) {
        msb_client_free(c);
        return;
    }
    msb_tcp_stream *s = (msb_tcp_stream *)&s;
    /* Refused: the guest's text, with errno ECONNREFUSED (111). */
    msb_error *err = NULL;
    CHECK_INT(msb_tcp_connect(c, "127.0.0.1", closed_port(), T_MS, &s, &err), MSB_ERR_GUEST);
    CHECK(err && msb_error_errno(err) == 111);
    CHECK(err && strstr(msb_error_message(err), "refused") != NULL);
    msb_error_free(err);
    CHECK(s == (msb_tcp_stream *)&s);

    EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_connect(NULL, "127.0.0.1", 1, T_MS, &s, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_connect(c, NULL, 1, T_MS, &s, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_connect(c, "127.0.0.1", 1, T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_tcp_connect(c, "bad\x80", 1, T_MS, &s, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_tcp_connect(c, "", 1, T_MS, &s, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_write(NULL, (const uint8_t *)"x", 1, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_shutdown_write(NULL, T_MS, ERR));
    msb_bytes *chunk = NULL;
    EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_read(NULL, 0, &chunk, ERR));
    int fd = -1;
    EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_readiness_fd(NULL, &fd, ERR));
    CHECK_INT(msb_tcp_stream_id(NULL), 0);
    msb_tcp_stream_free(NULL);
    CHECK(s == (msb_tcp_stream *)&s);

    /* Argument checks on a live stream. */
    struct server srv;
    REQUIRE(server_start(&srv, ECHO, 1));
    s = NULL;
    if (EXPECT(MSB_OK, msb_tcp_connect(c, "localhost", srv.port, T_MS, &s, ERR))) {
        EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_write(s, NULL, 1, T_MS, ERR));
        EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_read(s, 0, NULL, ERR));
        EXPECT(MSB_ERR_NULL_POINTER, msb_tcp_readiness_fd(s, NULL, ERR));
    }
    /* Freed while open: the guest drops the connection; the server sees EOF. */
    msb_tcp_stream_free(s);
    server_stop(&srv);
    msb_client_free(c);
}

struct blocked_read {
    msb_tcp_stream *s;
    msb_status status;
};

static void *read_blocking(void *arg) {
    struct blocked_read *b = arg;
    msb_bytes *chunk = NULL;
    b->status = msb_tcp_read(b->s, T_MS, &chunk, NULL);
    msb_bytes_free(chunk);
    return NULL;
}

/* Several connections at once over one client, served from one poll loop,
 * and a free that wakes a blocked reader. */
static void test_concurrent_streams(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_tcp(c)) {
        msb_client_free(c);
        return;
    }
    enum { N = 6 };
    struct server srv;
    REQUIRE(server_start(&srv, ECHO, N + 1));
    msb_tcp_stream *s[N] = {0};
    struct pollfd pfd[N];
    size_t got[N] = {0};
    char msg[N][32];
    for (int i = 0; i < N; i++) {
        REQUIRE_OK(msb_tcp_connect(c, "127.0.0.1", srv.port, T_MS, &s[i], ERR));
        snprintf(msg[i], sizeof msg[i], "stream %d says hi", i);
        EXPECT(MSB_OK, msb_tcp_write(s[i], (const uint8_t *)msg[i], strlen(msg[i]), T_MS, ERR));
        EXPECT(MSB_OK, msb_tcp_shutdown_write(s[i], T_MS, ERR));
        int fd = -1;
        EXPECT(MSB_OK, msb_tcp_readiness_fd(s[i], &fd, ERR));
        pfd[i] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    char back[N][32];
    int ended = 0;
    int64_t give_up = now_ms() + T_MS;
    while (ended < N && now_ms() < give_up) {
        if (poll(pfd, N, 1000) <= 0) continue;
        for (int i = 0; i < N; i++) {
            if (!(pfd[i].revents & POLLIN)) continue;
            msb_bytes *chunk = NULL;
            msb_status st = msb_tcp_read(s[i], 0, &chunk, NULL);
            if (st == MSB_OK) {
                size_t n = msb_bytes_len(chunk);
                if (got[i] + n < sizeof back[i]) memcpy(back[i] + got[i], msb_bytes_data(chunk), n);
                got[i] += n;
                msb_bytes_free(chunk);
            } else if (st == MSB_ENDED) {
                ended++;
                pfd[i].fd = -1;
            } else {
                CHECK_INT(st, MSB_NOTHING_YET);
            }
        }
    }
    CHECK_INT(ended, N);
    for (int i = 0; i < N; i++) {
        CHECK_INT(got[i], strlen(msg[i]));
        CHECK(memcmp(back[i], msg[i], strlen(msg[i])) == 0);
        msb_tcp_stream_free(s[i]);
    }

    /* A reader blocked on a stream is woken by its free. */
    msb_tcp_stream *blocked = NULL;
    if (EXPECT(MSB_OK, msb_tcp_connect(c, "127.0.0.1", srv.port, T_MS, &blocked, ERR))) {
        struct blocked_read b = {.s = blocked, .status = 12345};
        pthread_t t;
        REQUIRE(pthread_create(&t, NULL, read_blocking, &b) == 0);
        sleep_ms(500);
        msb_tcp_stream_free(blocked);
        pthread_join(t, NULL);
        CHECK_INT(b.status, MSB_ERR_CLOSED);
    }
    server_stop(&srv);
    msb_client_free(c);
}

const struct test_case tcp_tests[] = {
    {"tcp and liveness are MSB_ERR_UNSUPPORTED on older sandboxes", test_unsupported_on_older_sandboxes},
    {"ping and touch", test_ping_and_touch},
    {"tcp: echo, 1 MiB both ways, half-close, readiness fd", test_echo_and_half_close},
    {"tcp: the peer closes first", test_peer_closes_first},
    {"tcp: refused connections carry the errno; argument errors", test_connect_failures_and_arguments},
    {"tcp: six streams in one poll loop; free wakes a blocked read", test_concurrent_streams},
    {NULL, NULL},
};
