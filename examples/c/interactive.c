/*
 * Interactive exec: starts a process in the sandbox (default `cat`), feeds it
 * this program's stdin as it arrives, prints its output as it arrives, closes
 * its stdin at end of input and prints its exit code.
 *
 * One poll(2) loop waits on both our stdin and the exec's readiness fd, so
 * no thread sits blocked on either side.
 *
 *   cc -std=c11 -Iinclude examples/c/interactive.c -Ltarget/release -lmicrosandbox_agent -o interactive
 *   printf 'one\ntwo\n' | ./interactive /path/to/agent.sock
 *   ./interactive /path/to/agent.sock sh -i        # type commands, ^D to end
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "microsandbox_agent.h"

#define TIMEOUT_MS 10000

static int fail(const char *what, msb_error *err) {
    fprintf(stderr, "%s failed: %s\n", what, msb_error_message(err));
    msb_error_free(err);
    return 1;
}

/* Builds the request from argv[2..], or `cat` when no command is given. */
static msb_status build_request(int argc, char **argv, msb_exec_request **req_out, msb_error **err) {
    const char *cmd = argc > 2 ? argv[2] : "cat";
    msb_exec_request *req = NULL;
    msb_status st = msb_exec_request_new(cmd, &req, err);
    for (int i = 3; st == MSB_OK && i < argc; i++) st = msb_exec_request_add_arg(req, argv[i], err);
    if (st != MSB_OK) {
        msb_exec_request_free(req);
        return st;
    }
    *req_out = req;
    return MSB_OK;
}

/*
 * Prints every event queued right now (timeout 0: never blocks). Sets
 * *exit_code and returns MSB_ENDED once the process has exited.
 */
static msb_status drain_events(msb_exec *exec, int *exit_code, msb_error **err) {
    for (;;) {
        msb_exec_event *ev = NULL;
        msb_status st = msb_exec_next_event(exec, 0, &ev, err);
        if (st != MSB_OK) return st;
        size_t len = 0;
        const uint8_t *data = msb_exec_event_data(ev, &len);
        switch (msb_exec_event_kind(ev)) {
        case MSB_EXEC_STDOUT:
            fwrite(data, 1, len, stdout);
            fflush(stdout);
            break;
        case MSB_EXEC_STDERR:
            fwrite(data, 1, len, stderr);
            break;
        case MSB_EXEC_EXITED:
            *exit_code = msb_exec_event_exit_code(ev);
            break;
        default:
            break;
        }
        msb_exec_event_free(ev);
    }
}

/* Forwards one read(2) worth of our stdin; at end of input closes the process's stdin. */
static msb_status forward_stdin(msb_exec *exec, int *stdin_open, msb_error **err) {
    uint8_t buf[4096];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return MSB_OK;
    if (n > 0) return msb_exec_write_stdin(exec, buf, (size_t)n, TIMEOUT_MS, err);
    *stdin_open = 0;
    return msb_exec_close_stdin(exec, TIMEOUT_MS, err);
}

static int run_session(msb_client *client, const msb_exec_request *req) {
    msb_error *err = NULL;
    msb_exec *exec = NULL;
    if (msb_exec_start(client, req, TIMEOUT_MS, &exec, &err) != MSB_OK) return fail("msb_exec_start", err);
    int exec_fd = -1;
    if (msb_exec_readiness_fd(exec, &exec_fd, &err) != MSB_OK) {
        msb_exec_free(exec);
        return fail("msb_exec_readiness_fd", err);
    }

    int stdin_open = 1, exit_code = 0, rc = 0;
    for (;;) {
        struct pollfd fds[2] = {{.fd = exec_fd, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
        if (poll(fds, stdin_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR) continue;
            perror("poll");
            rc = 1;
            break;
        }
        if (fds[0].revents & POLLIN) {
            msb_status st = drain_events(exec, &exit_code, &err);
            if (st == MSB_ENDED) break;
            if (st != MSB_NOTHING_YET) {
                rc = fail("msb_exec_next_event", err);
                break;
            }
        }
        if (stdin_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (forward_stdin(exec, &stdin_open, &err) != MSB_OK) {
                rc = fail("forwarding stdin", err);
                break;
            }
        }
    }
    msb_exec_free(exec);
    if (rc == 0) printf("exit code: %d\n", exit_code);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s RELAY_SOCKET_PATH [CMD [ARGS...]]\n", argv[0]);
        return 2;
    }
    msb_error *err = NULL;
    msb_client *client = NULL;
    if (msb_client_connect(argv[1], NULL, &client, &err) != MSB_OK) return fail("msb_client_connect", err);
    msb_exec_request *req = NULL;
    if (build_request(argc, argv, &req, &err) != MSB_OK) {
        msb_client_free(client);
        return fail("building the exec request", err);
    }
    int rc = run_session(client, req);
    msb_exec_request_free(req);
    msb_client_free(client);
    return rc;
}
