/*
 * Forwards a local TCP port into the sandbox: every connection accepted on
 * 127.0.0.1:LOCAL_PORT becomes a TCP connection the guest makes to
 * GUEST_HOST:GUEST_PORT, and bytes flow both ways until both sides are
 * done. All connections run at once in one poll(2) loop, which waits on
 * the listening socket, the accepted sockets and the readiness fds of the
 * guest-side streams.
 *
 *   tcp_forward SOCKET LOCAL_PORT GUEST_HOST GUEST_PORT [CONNECTIONS]
 *
 * LOCAL_PORT 0 picks a free port. The program prints
 * "listening on 127.0.0.1:PORT" once it accepts connections; with
 * CONNECTIONS it exits after forwarding that many, otherwise it runs until
 * killed. Needs a sandbox of protocol generation 4 or later (0.5.5+).
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "microsandbox_agent.h"

#define MAX_PAIRS 64
#define TIMEOUT_MS 10000

/* One forwarded connection: the accepted local socket and the guest's. */
struct pair {
    int local;                /* -1 when the slot is free */
    msb_tcp_stream *guest;
    int guest_fd;             /* readiness fd of `guest` */
    bool local_eof;           /* the local side sent everything (EOF seen) */
    bool guest_eof;           /* the guest side sent everything (MSB_ENDED) */
};

static int fail(const char *what, msb_error *err) {
    fprintf(stderr, "%s: %s\n", what, err ? msb_error_message(err) : strerror(errno));
    msb_error_free(err);
    return -1;
}

static int listen_on(uint16_t port, uint16_t *bound) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        close(fd);
        return -1;
    }
    *bound = ntohs(addr.sin_port);
    return fd;
}

static bool write_all(int fd, const uint8_t *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        data += n;
        len -= (size_t)n;
    }
    return true;
}

static void pair_close(struct pair *p) {
    close(p->local);
    msb_tcp_stream_free(p->guest);
    memset(p, 0, sizeof *p);
    p->local = -1;
}

/* Local → guest: one read's worth. Returns false when the pair is broken. */
static bool pump_local(struct pair *p) {
    uint8_t buf[64 * 1024];
    ssize_t n = read(p->local, buf, sizeof buf);
    if (n < 0 && errno == EINTR) return true;
    msb_error *err = NULL;
    if (n > 0) {
        if (msb_tcp_write(p->guest, buf, (size_t)n, TIMEOUT_MS, &err) == MSB_OK) return true;
        return fail("write to the guest", err), false;
    }
    /* EOF (or a reset): the guest's peer reads end-of-file too. */
    p->local_eof = true;
    if (msb_tcp_shutdown_write(p->guest, TIMEOUT_MS, &err) != MSB_OK && !p->guest_eof)
        return fail("shutdown towards the guest", err), false;
    msb_error_free(err);
    return true;
}

/* Guest → local: everything pulled without blocking. */
static bool pump_guest(struct pair *p) {
    for (;;) {
        msb_bytes *chunk = NULL;
        msb_error *err = NULL;
        msb_status st = msb_tcp_read(p->guest, 0, &chunk, &err);
        if (st == MSB_NOTHING_YET) return true;
        if (st == MSB_ENDED) {
            p->guest_eof = true;
            shutdown(p->local, SHUT_WR);
            return true;
        }
        if (st != MSB_OK) return fail("read from the guest", err), false;
        bool ok = write_all(p->local, msb_bytes_data(chunk), msb_bytes_len(chunk));
        msb_bytes_free(chunk);
        if (!ok) return fail("write to the local connection", NULL), false;
    }
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: %s SOCKET LOCAL_PORT GUEST_HOST GUEST_PORT [CONNECTIONS]\n", argv[0]);
        return 2;
    }
    const char *guest_host = argv[3];
    uint16_t local_port = (uint16_t)atoi(argv[2]), guest_port = (uint16_t)atoi(argv[4]);
    long limit = argc == 6 ? atol(argv[5]) : -1;

    msb_client *client = NULL;
    msb_error *err = NULL;
    if (msb_client_connect(argv[1], NULL, &client, &err) != MSB_OK) return fail("connect", err), 1;
    if (msb_client_generation(client) < 4) {
        fprintf(stderr, "the sandbox speaks protocol generation %u; TCP needs 4 (0.5.5 or later)\n",
                msb_client_generation(client));
        msb_client_free(client);
        return 1;
    }
    uint16_t bound = 0;
    int listener = listen_on(local_port, &bound);
    if (listener < 0) {
        fail("listen", NULL);
        msb_client_free(client);
        return 1;
    }
    printf("listening on 127.0.0.1:%u\n", bound);
    fflush(stdout);

    struct pair pairs[MAX_PAIRS];
    for (int i = 0; i < MAX_PAIRS; i++) pairs[i] = (struct pair){.local = -1};
    long accepted = 0, finished = 0;
    int status = 0;

    while (limit < 0 || finished < limit) {
        /* pfd[0] is the listener; then, per live pair, its two fds. */
        struct pollfd pfd[1 + 2 * MAX_PAIRS];
        int owner[1 + 2 * MAX_PAIRS];
        nfds_t n = 0;
        bool room = limit < 0 || accepted < limit;
        pfd[n] = (struct pollfd){.fd = room ? listener : -1, .events = POLLIN};
        owner[n++] = -1;
        for (int i = 0; i < MAX_PAIRS; i++) {
            if (pairs[i].local < 0) continue;
            pfd[n] = (struct pollfd){.fd = pairs[i].local_eof ? -1 : pairs[i].local, .events = POLLIN};
            owner[n++] = i;
            pfd[n] = (struct pollfd){.fd = pairs[i].guest_eof ? -1 : pairs[i].guest_fd, .events = POLLIN};
            owner[n++] = i;
        }
        if (poll(pfd, n, -1) < 0) {
            if (errno == EINTR) continue;
            status = fail("poll", NULL);
            break;
        }
        if (pfd[0].revents & POLLIN) {
            int local = accept(listener, NULL, NULL);
            int slot = -1;
            for (int i = 0; i < MAX_PAIRS && slot < 0; i++)
                if (pairs[i].local < 0) slot = i;
            if (local >= 0 && slot < 0) {
                close(local); /* full: refuse by closing */
            } else if (local >= 0) {
                struct pair *p = &pairs[slot];
                accepted++;
                if (msb_tcp_connect(client, guest_host, guest_port, TIMEOUT_MS, &p->guest, &err) != MSB_OK ||
                    msb_tcp_readiness_fd(p->guest, &p->guest_fd, &err) != MSB_OK) {
                    fail("guest connect", err);
                    err = NULL;
                    msb_tcp_stream_free(p->guest);
                    p->guest = NULL;
                    close(local);
                    finished++;
                    status = 1;
                } else {
                    p->local = local;
                }
            }
        }
        for (nfds_t k = 1; k < n; k++) {
            struct pair *p = &pairs[owner[k]];
            if (p->local < 0 || !(pfd[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            bool is_local = pfd[k].fd == p->local;
            bool ok = is_local ? pump_local(p) : pump_guest(p);
            if (!ok) status = 1;
            if (!ok || (p->local_eof && p->guest_eof)) {
                pair_close(p);
                finished++;
            }
        }
    }
    for (int i = 0; i < MAX_PAIRS; i++)
        if (pairs[i].local >= 0) pair_close(&pairs[i]);
    close(listener);
    msb_client_free(client);
    return status == 0 ? 0 : 1;
}
