/*
 * Starting and stopping a development relay from a C test program: one
 * msb-devrelay per call, on a socket in a fresh temporary directory. Shared
 * by tests/c and tests/hostile; header-only (static functions) so that each
 * suite simply compiles it in. Needs POSIX.1-2008 (mkdtemp).
 */
#ifndef MSB_TEST_DEVRELAY_H
#define MSB_TEST_DEVRELAY_H

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct relay {
    pid_t pid;
    char dir[64];
    char socket[128];
    char root[128];
};

static inline int64_t relay_clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Removes `path` and everything below it, without following symlinks. */
static inline void relay_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d != NULL) {
            for (struct dirent *e; (e = readdir(d)) != NULL;) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
                char child[1024];
                int len = snprintf(child, sizeof child, "%s/%s", path, e->d_name);
                if (len > 0 && (size_t)len < sizeof child) relay_remove_tree(child);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* Sends `sig` to the relay (0: only reap it), waits for it to exit and
 * removes its directory. Returns the exit status as waitpid reports it, -1
 * if there was no relay. Safe to call on a relay that failed to start. */
static inline int relay_stop(struct relay *r, int sig) {
    int status = -1;
    if (r->pid > 0) {
        if (sig) kill(r->pid, sig);
        while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR) {
        }
        r->pid = 0;
    }
    if (r->dir[0] != '\0') relay_remove_tree(r->dir);
    r->dir[0] = '\0';
    return status;
}

/* The release the relay imitates: $MSB_DEVRELAY_PROFILE, default 0.7.13
 * (the devrelay's own default). */
static inline const char *relay_profile(void) {
    const char *profile = getenv("MSB_DEVRELAY_PROFILE");
    return (profile == NULL || *profile == '\0') ? "0.7.13" : profile;
}

/*
 * Starts target/release/msb-devrelay (or $MSB_DEVRELAY) with --profile
 * ($MSB_DEVRELAY_PROFILE, default 0.7.13), --socket, --root and --quiet in
 * a new directory named after `dir_template` (a
 * mkdtemp template), plus `extra_args` (NULL-terminated, at most 8; NULL for
 * none), and waits up to `wait_ms` for the line it prints once it listens.
 * Returns 0 on success. On failure, returns -1 with the reason in `why`, and
 * the relay (if it was forked) is already stopped and its directory removed.
 */
static inline int relay_spawn(struct relay *r, const char *dir_template, const char *const *extra_args,
                              int wait_ms, char *why, size_t why_len) {
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", dir_template);
    if (mkdtemp(r->dir) == NULL) {
        snprintf(why, why_len, "mkdtemp %s: %s", dir_template, strerror(errno));
        r->dir[0] = '\0';
        return -1;
    }
    snprintf(r->socket, sizeof r->socket, "%s/agent.sock", r->dir);
    snprintf(r->root, sizeof r->root, "%s/root", r->dir);
    const char *relay_path = getenv("MSB_DEVRELAY");
    if (relay_path == NULL || *relay_path == '\0') relay_path = "target/release/msb-devrelay";
    const char *profile = relay_profile();

    /* Everything the child needs is prepared before fork: between fork and
     * exec only async-signal-safe calls are allowed (the library's threads
     * may hold locks). */
    const char *argv[18];
    int n = 0;
    argv[n++] = relay_path;
    argv[n++] = "--profile";
    argv[n++] = profile;
    argv[n++] = "--socket";
    argv[n++] = r->socket;
    argv[n++] = "--root";
    argv[n++] = r->root;
    argv[n++] = "--quiet";
    for (int i = 0; extra_args != NULL && extra_args[i] != NULL; i++) {
        if (n == 16) {
            snprintf(why, why_len, "too many relay arguments");
            relay_stop(r, 0);
            return -1;
        }
        argv[n++] = extra_args[i];
    }
    argv[n] = NULL;

    int out[2];
    if (pipe(out) != 0) {
        snprintf(why, why_len, "pipe: %s", strerror(errno));
        relay_stop(r, 0);
        return -1;
    }
    /* Other threads of the test may fork too: keep the pipe out of them. */
    fcntl(out[0], F_SETFD, FD_CLOEXEC);
    fcntl(out[1], F_SETFD, FD_CLOEXEC);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, why_len, "fork: %s", strerror(errno));
        close(out[0]);
        close(out[1]);
        relay_stop(r, 0);
        return -1;
    }
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        /* execv's argv is not const-qualified; it does not modify it. */
        execv(relay_path, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    close(out[1]);
    r->pid = pid;

    /* The relay prints one line once it listens; EOF first means it died. */
    char line[256];
    size_t have = 0;
    line[0] = '\0';
    int64_t deadline = relay_clock_ms() + wait_ms;
    while (strstr(line, "listening") == NULL && have < sizeof line - 1) {
        int64_t left = deadline - relay_clock_ms();
        if (left <= 0) break;
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        int ready = poll(&p, 1, (int)left);
        if (ready < 0 && errno == EINTR) continue;
        if (ready != 1) break;
        ssize_t got = read(out[0], line + have, sizeof line - 1 - have);
        if (got <= 0) break;
        have += (size_t)got;
        line[have] = '\0';
    }
    close(out[0]);
    if (strstr(line, "listening") == NULL) {
        snprintf(why, why_len, "relay %s did not start (printed \"%s\")", relay_path, line);
        relay_stop(r, SIGKILL);
        return -1;
    }
    return 0;
}

#endif /* MSB_TEST_DEVRELAY_H */
