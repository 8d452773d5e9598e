/*
 * Several processes at once from one thread: start them all, then wait on
 * all their readiness fds with poll(2) and pull with timeout 0 whichever is
 * readable, until every process has exited. This is how an existing event
 * loop (libuv, epoll, a game loop) drives the library without a thread per
 * stream.
 *
 *   cc -std=c11 -Iinclude examples/c/poll_loop.c -Ltarget/release -lmicrosandbox_agent -o poll_loop
 *   ./poll_loop /path/to/agent.sock
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "microsandbox_agent.h"

#define TIMEOUT_MS 10000
#define TASKS 4

struct task {
    msb_exec *exec;
    int fd;
    int exited;
    int exit_code;
    char expected[64];
    char output[256];
    size_t output_len;
};

static int fail(const char *what, msb_error *err) {
    fprintf(stderr, "%s failed: %s\n", what, msb_error_message(err));
    msb_error_free(err);
    return 1;
}

/* Task i sleeps a different time so that the processes finish out of order. */
static msb_status start_task(msb_client *client, int i, struct task *t, msb_error **err) {
    char script[128];
    snprintf(script, sizeof script, "sleep 0.%d; echo task %d done", (TASKS - i) * 2, i);
    snprintf(t->expected, sizeof t->expected, "task %d done\n", i);
    msb_exec_request *req = NULL;
    msb_status st = msb_exec_request_new("sh", &req, err);
    if (st == MSB_OK) st = msb_exec_request_add_arg(req, "-c", err);
    if (st == MSB_OK) st = msb_exec_request_add_arg(req, script, err);
    if (st == MSB_OK) st = msb_exec_start(client, req, TIMEOUT_MS, &t->exec, err);
    msb_exec_request_free(req);
    if (st == MSB_OK) st = msb_exec_readiness_fd(t->exec, &t->fd, err);
    return st;
}

/* Pulls everything queued for one task without blocking. */
static msb_status pull_ready(int i, struct task *t, msb_error **err) {
    for (;;) {
        msb_exec_event *ev = NULL;
        msb_status st = msb_exec_next_event(t->exec, 0, &ev, err);
        if (st == MSB_NOTHING_YET) return MSB_OK;
        if (st == MSB_ENDED) {
            t->exited = 1;
            return MSB_OK;
        }
        if (st != MSB_OK) return st;
        size_t len = 0;
        const uint8_t *data = msb_exec_event_data(ev, &len);
        switch (msb_exec_event_kind(ev)) {
        case MSB_EXEC_STARTED:
            printf("[%d] started, pid %u\n", i, (unsigned)msb_exec_event_pid(ev));
            break;
        case MSB_EXEC_STDOUT:
            printf("[%d] stdout: %.*s", i, (int)len, (const char *)data);
            if (len > sizeof t->output - t->output_len) len = sizeof t->output - t->output_len;
            memcpy(t->output + t->output_len, data, len);
            t->output_len += len;
            break;
        case MSB_EXEC_STDERR:
            printf("[%d] stderr: %.*s", i, (int)len, (const char *)data);
            break;
        case MSB_EXEC_EXITED:
            t->exit_code = msb_exec_event_exit_code(ev);
            printf("[%d] exited with %d\n", i, t->exit_code);
            break;
        }
        msb_exec_event_free(ev);
    }
}

static int run_loop(struct task *tasks) {
    msb_error *err = NULL;
    int running = TASKS;
    while (running > 0) {
        struct pollfd fds[TASKS];
        int index_of[TASKS], nfds = 0;
        for (int i = 0; i < TASKS; i++) {
            if (tasks[i].exited) continue;
            fds[nfds] = (struct pollfd){.fd = tasks[i].fd, .events = POLLIN};
            index_of[nfds++] = i;
        }
        int n = poll(fds, (nfds_t)nfds, TIMEOUT_MS);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            perror("poll");
            return 1;
        }
        if (n == 0) {
            fprintf(stderr, "no process made progress in %d ms\n", TIMEOUT_MS);
            return 1;
        }
        for (int k = 0; k < nfds; k++) {
            if (!(fds[k].revents & POLLIN)) continue;
            struct task *t = &tasks[index_of[k]];
            if (pull_ready(index_of[k], t, &err) != MSB_OK) return fail("msb_exec_next_event", err);
            if (t->exited) running--;
        }
    }
    return 0;
}

static int check_results(const struct task *tasks) {
    int rc = 0;
    for (int i = 0; i < TASKS; i++) {
        const struct task *t = &tasks[i];
        size_t want = strlen(t->expected);
        if (t->exit_code != 0 || t->output_len != want || memcmp(t->output, t->expected, want) != 0) {
            fprintf(stderr, "task %d: exit %d, output \"%.*s\", expected \"%s\"\n", i, t->exit_code,
                    (int)t->output_len, t->output, t->expected);
            rc = 1;
        }
    }
    if (rc == 0) printf("all %d processes finished as expected\n", TASKS);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s RELAY_SOCKET_PATH\n", argv[0]);
        return 2;
    }
    msb_error *err = NULL;
    msb_client *client = NULL;
    if (msb_client_connect(argv[1], NULL, &client, &err) != MSB_OK) return fail("msb_client_connect", err);

    struct task tasks[TASKS];
    memset(tasks, 0, sizeof tasks);
    int rc = 0;
    for (int i = 0; i < TASKS && rc == 0; i++)
        if (start_task(client, i, &tasks[i], &err) != MSB_OK) rc = fail("starting a process", err);
    if (rc == 0) rc = run_loop(tasks);
    if (rc == 0) rc = check_results(tasks);

    for (int i = 0; i < TASKS; i++) msb_exec_free(tasks[i].exec);
    msb_client_free(client);
    return rc;
}
