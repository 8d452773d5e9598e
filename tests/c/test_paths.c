/*
 * Socket paths of sandboxes by name (msb_sandbox_socket_path, and
 * msb_client_connect_sandbox through it), and the guest errno carried by
 * filesystem errors (msb_error_errno, MSB_ERR_PERMISSION, MSB_ERR_EXISTS).
 */
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Points $MSB_HOME at a fresh temporary directory for one test. */
struct home {
    char dir[64];
    char *saved;
};

static void home_enter(struct home *h) {
    snprintf(h->dir, sizeof h->dir, "/tmp/msb-ctest-paths.XXXXXX");
    if (!mkdtemp(h->dir)) abort();
    const char *old = getenv("MSB_HOME");
    h->saved = old ? strdup(old) : NULL;
    setenv("MSB_HOME", h->dir, 1);
}

static void home_leave(struct home *h) {
    relay_remove_tree(h->dir);
    if (h->saved) setenv("MSB_HOME", h->saved, 1);
    else unsetenv("MSB_HOME");
    free(h->saved);
}

/* Checks msb_sandbox_socket_path(name) is $MSB_HOME/`rel`. */
static void check_resolves(const struct home *h, const char *name, const char *rel) {
    msb_bytes *p = NULL;
    if (!EXPECT(MSB_OK, msb_sandbox_socket_path(name, &p, ERR))) return;
    char want[512];
    snprintf(want, sizeof want, "%s/%s", h->dir, rel);
    CHECK_MEM(msb_bytes_data(p), msb_bytes_len(p), want);
    /* The NUL after the bytes makes the data a C string too. */
    CHECK_STR((const char *)msb_bytes_data(p), want);
    msb_bytes_free(p);
}

/* Creates the directories of $MSB_HOME/`rel` and a symlink there to the shared relay. */
static void link_relay_at(const struct home *h, const char *rel) {
    char path[512], cmd[600];
    snprintf(path, sizeof path, "%s/%s", h->dir, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    CHECK(system(cmd) == 0);
    *slash = '/';
    CHECK(symlink(env_socket(), path) == 0);
}

#define CANONICAL "run/sandboxes/87eba76e7f3164534045ba92/agent.sock"
#define FLAT "run/agent/87eba76e7f3164534045ba922e7770fb.sock"
#define LEGACY "sandboxes/worker/runtime/agent.sock"

static void test_layouts_in_order(void) {
    struct home h;
    home_enter(&h);
    /* Nothing there: the layout of the newest line. */
    check_resolves(&h, "worker", CANONICAL);
    msb_client *c = NULL;
    EXPECT(MSB_ERR_NOT_FOUND, msb_client_connect_sandbox("worker", NULL, &c, ERR));

    /* Only the legacy socket: it is found, and connecting goes there. */
    link_relay_at(&h, LEGACY);
    check_resolves(&h, "worker", LEGACY);
    /* A flat socket beats it, a canonical one beats both. */
    link_relay_at(&h, FLAT);
    check_resolves(&h, "worker", FLAT);
    link_relay_at(&h, CANONICAL);
    check_resolves(&h, "worker", CANONICAL);
    if (EXPECT(MSB_OK, msb_client_connect_sandbox("worker", NULL, &c, ERR))) {
        msb_client_free(c);
    }
    c = NULL;
    /* Other names hash elsewhere. */
    check_resolves(&h, "abc", "run/sandboxes/ba7816bf8f01cfea414140de/agent.sock");
    home_leave(&h);
}

static void test_long_home_skips_layouts_that_do_not_fit(void) {
    struct home h;
    home_enter(&h);
    /* A home so deep that run/sandboxes/<24>/control.sock overflows the
     * 107 usable bytes of sun_path but run/agent/<32>.sock still fits. */
    size_t canonical_tail = strlen("/run/sandboxes/87eba76e7f3164534045ba92/control.sock");
    size_t flat_tail = strlen("/" FLAT);
    char deep[256];
    snprintf(deep, sizeof deep, "%s/", h.dir);
    while (strlen(deep) + canonical_tail <= 107) strcat(deep, "d");
    REQUIRE(strlen(deep) + flat_tail <= 107);
    setenv("MSB_HOME", deep, 1);
    msb_bytes *p = NULL;
    if (EXPECT(MSB_OK, msb_sandbox_socket_path("worker", &p, ERR))) {
        char want[512];
        snprintf(want, sizeof want, "%s/%s", deep, FLAT);
        CHECK_STR((const char *)msb_bytes_data(p), want);
    }
    msb_bytes_free(p);

    /* Nothing fits at all. */
    char huge[300];
    memset(huge, 'h', sizeof huge);
    huge[0] = '/';
    huge[sizeof huge - 1] = '\0';
    setenv("MSB_HOME", huge, 1);
    p = (msb_bytes *)&p;
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_sandbox_socket_path("worker", &p, ERR));
    CHECK(p == (msb_bytes *)&p);
    setenv("MSB_HOME", h.dir, 1);
    home_leave(&h);
}

static void test_bad_names_and_arguments(void) {
    struct home h;
    home_enter(&h);
    msb_bytes *p = (msb_bytes *)&p;
    EXPECT(MSB_ERR_NULL_POINTER, msb_sandbox_socket_path(NULL, &p, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_sandbox_socket_path("worker", NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_sandbox_socket_path("bad\x80", &p, ERR));
    const char *bad[] = {"", ".", "..", "a/b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_sandbox_socket_path(bad[i], &p, ERR));
    char long_name[300];
    memset(long_name, 'n', sizeof long_name);
    long_name[256] = '\0';
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_sandbox_socket_path(long_name, &p, ERR));
    CHECK(p == (msb_bytes *)&p);
    long_name[255] = '\0';
    p = NULL;
    EXPECT(MSB_OK, msb_sandbox_socket_path(long_name, &p, ERR));
    msb_bytes_free(p);
    home_leave(&h);
}

/* ---------------------------------------------------------------- errno */

static void test_new_status_codes(void) {
    CHECK_INT(MSB_ERR_PERMISSION, -20);
    CHECK_INT(MSB_ERR_EXISTS, -21);
    CHECK(strcmp(msb_status_str(MSB_ERR_PERMISSION), msb_status_str(-9999)) != 0);
    CHECK(strcmp(msb_status_str(MSB_ERR_EXISTS), msb_status_str(-9999)) != 0);
    CHECK_INT(msb_error_errno(NULL), 0);
}

/* Checks `call` failed with `want` and the guest errno `errno_want`. */
#define EXPECT_ERRNO(want, errno_want, call)                                                       \
    do {                                                                                           \
        msb_error *e_ = NULL;                                                                      \
        msb_status s_ = (call);                                                                    \
        CHECK_INT(s_, want);                                                                       \
        CHECK(e_ != NULL || s_ == MSB_OK);                                                         \
        if (e_) {                                                                                  \
            CHECK_INT(msb_error_code(e_), want);                                                   \
            CHECK_INT(msb_error_errno(e_), errno_want);                                            \
        }                                                                                          \
        msb_error_free(e_);                                                                        \
    } while (0)

static void test_fs_errors_carry_the_guest_errno(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_bytes *data = NULL;
    msb_fs_entry *e = NULL;
    /* ENOENT (2) */
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 2, msb_fs_read_file(c, "/errno-missing", T_MS, &data, &e_));
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 2, msb_fs_remove(c, "/errno-missing", T_MS, &e_));

    /* A failure whose text has no errno stays MSB_ERR_GUEST with errno 0:
     * the devrelay refuses ".." in its own words. */
    EXPECT_ERRNO(MSB_ERR_GUEST, 0, msb_fs_stat(c, "/../x", T_MS, &e, &e_));

    /* EACCES (13): a directory the guest may not enter. Root ignores mode
     * bits, so only when not running as root. */
    if (geteuid() != 0) {
        char host[512];
        EXPECT(MSB_OK, msb_fs_mkdir(c, "/errno-locked", T_MS, ERR));
        host_path(host, sizeof host, "/errno-locked");
        CHECK(chmod(host, 0) == 0);
        EXPECT_ERRNO(MSB_ERR_PERMISSION, 13, msb_fs_stat(c, "/errno-locked/x", T_MS, &e, &e_));
        CHECK(chmod(host, 0755) == 0);
    }
    msb_client_free(c);
}

/* A command the guest cannot start carries the errno of the failed spawn
 * where the sandbox reports it (core.exec.failed, not on 0.3.14). */
static void test_exec_failure_errno(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("/nonexistent/msb-errno-test", NULL);
    msb_run_output *out = NULL;
    msb_error *e_ = NULL;
    msb_status st = msb_exec_run(c, req, 64, T_MS, &out, &e_);
    if (st == MSB_ERR_EXEC_FAILED) {
        CHECK_INT(msb_error_errno(e_), 2);
    } else {
        /* Legacy agents report exit code -1 instead. */
        CHECK_INT(st, MSB_OK);
        CHECK_INT(msb_run_output_exit_code(out), -1);
        CHECK(msb_client_is_legacy(c));
    }
    msb_error_free(e_);
    msb_run_output_free(out);
    msb_exec_request_free(req);
    msb_client_free(c);
}

/* A connect failure is not a guest error: errno 0. */
static void test_connect_errors_have_no_guest_errno(void) {
    msb_client *c = NULL;
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 0, msb_client_connect("/nonexistent/msb/agent.sock", NULL, &c, &e_));
}

const struct test_case paths_tests[] = {
    {"sandbox socket paths: canonical, flat, legacy, first existing wins", test_layouts_in_order},
    {"sandbox socket paths: layouts too long for sun_path are skipped", test_long_home_skips_layouts_that_do_not_fit},
    {"sandbox socket paths: bad names and arguments", test_bad_names_and_arguments},
    {"errno: new status codes and msb_error_errno(NULL)", test_new_status_codes},
    {"errno: filesystem errors carry the guest errno and map it", test_fs_errors_carry_the_guest_errno},
    {"errno: connect errors carry no guest errno", test_connect_errors_have_no_guest_errno},
    {"errno: a command the guest cannot start carries the spawn errno", test_exec_failure_errno},
    {NULL, NULL},
};
