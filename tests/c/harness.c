/*
 * Test runner: runs every registered test (or those whose name contains
 * argv[1]), prints "ok - NAME" / "not ok - NAME" per test and finally
 * "N passed, M failed"; exits 1 if anything failed.
 *
 * Each test runs under an alarm so that a call that never returns shows up
 * as a named failure instead of a hung run. MSB_TEST_TIMEOUT_S overrides
 * the limit (valgrind needs more).
 */
#include "test.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Thread_local msb_error *test_err_;
_Thread_local msb_status test_status_;

static const char *current_test = "";
static int failures_in_test;
static int passed, failed;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

void test_fail(const char *file, int line, const char *fmt, ...) {
    pthread_mutex_lock(&report_lock);
    failures_in_test++;
    fprintf(stdout, "#   %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&report_lock);
}

int test_failures_so_far(void) {
    pthread_mutex_lock(&report_lock);
    int n = failures_in_test;
    pthread_mutex_unlock(&report_lock);
    return n;
}

bool test_check_status(const char *file, int line, const char *expr, msb_status got, msb_status want,
                       msb_error *err) {
    bool ok = got == want;
    if (!ok) {
        test_fail(file, line, "%s returned %d (%s), expected %d (%s)%s%s", expr, got, msb_status_str(got), want,
                  msb_status_str(want), err ? ": " : "", err ? msb_error_message(err) : "");
    } else if (want < 0) {
        /* A failure must come with an error object describing it. */
        if (!err) {
            test_fail(file, line, "%s returned %d but left err_out NULL", expr, got);
            ok = false;
        } else if (msb_error_code(err) != want || msb_error_message(err)[0] == '\0') {
            test_fail(file, line, "%s: error object has code %d and message \"%s\"", expr, msb_error_code(err),
                      msb_error_message(err));
            ok = false;
        }
    } else if (err) {
        test_fail(file, line, "%s returned %d but also set an error: %s", expr, got, msb_error_message(err));
        ok = false;
    }
    msb_error_free(err);
    return ok;
}

static void on_alarm(int sig) {
    (void)sig;
    /* Not async-signal-safe formatting, but the process ends right here and
     * the line names the test that hung, which is all that matters. */
    printf("#   timed out\nnot ok - %s\n%d passed, %d failed\n", current_test, passed, failed + 1);
    fflush(stdout);
    _exit(1);
}

static const struct test_case *const groups[] = {basics_tests, client_tests, exec_tests, fs_tests,
                                                 lifecycle_tests, paths_tests, handles_tests, tcp_tests};

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    const char *limit_env = getenv("MSB_TEST_TIMEOUT_S");
    unsigned limit_s = limit_env ? (unsigned)atoi(limit_env) : 30;
    signal(SIGALRM, on_alarm);
    /* A relay we started and killed must not take us down through a write
     * to its closed socket. */
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        for (const struct test_case *t = groups[g]; t->name; t++) {
            if (filter && !strstr(t->name, filter)) continue;
            current_test = t->name;
            failures_in_test = 0;
            alarm(limit_s);
            t->run();
            alarm(0);
            if (test_failures_so_far() == 0) {
                passed++;
                printf("ok - %s\n", t->name);
            } else {
                failed++;
                printf("not ok - %s\n", t->name);
            }
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
