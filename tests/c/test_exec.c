/* Exec: request building, events, stdin, tty, signals, rlimits, run+capture. */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BAD_UTF8 "x\xc3\x28"

static void test_request_builder_errors(void) {
    msb_exec_request *req = NULL, *untouched = (msb_exec_request *)&untouched;
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_new(NULL, &untouched, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_new("true", NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_exec_request_new(BAD_UTF8, &untouched, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_exec_request_new("", &untouched, ERR));
    CHECK(untouched == (msb_exec_request *)&untouched);
    REQUIRE_OK(msb_exec_request_new("true", &req, ERR));

    EXPECT(MSB_OK, msb_exec_request_add_arg(req, "", ERR)); /* an empty argument is legitimate */
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_add_arg(NULL, "a", ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_add_arg(req, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_exec_request_add_arg(req, BAD_UTF8, ERR));

    EXPECT(MSB_OK, msb_exec_request_add_env(req, "K", "", ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_exec_request_add_env(req, "", "v", ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_exec_request_add_env(req, "A=B", "v", ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_add_env(NULL, "K", "v", ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_add_env(req, NULL, "v", ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_add_env(req, "K", NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_exec_request_add_env(req, BAD_UTF8, "v", ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_exec_request_add_env(req, "K", BAD_UTF8, ERR));

    EXPECT(MSB_OK, msb_exec_request_set_cwd(req, "/", ERR));
    EXPECT(MSB_OK, msb_exec_request_set_cwd(req, NULL, ERR)); /* back to the default */
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_set_cwd(NULL, "/", ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_exec_request_set_cwd(req, BAD_UTF8, ERR));

    EXPECT(MSB_OK, msb_exec_request_set_user(req, "nobody", ERR));
    EXPECT(MSB_OK, msb_exec_request_set_user(req, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_set_user(NULL, "nobody", ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_exec_request_set_user(req, BAD_UTF8, ERR));

    EXPECT(MSB_OK, msb_exec_request_set_tty(req, true, 40, 100, ERR));
    EXPECT(MSB_OK, msb_exec_request_set_tty(req, false, 24, 80, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_set_tty(NULL, true, 24, 80, ERR));

    static const char *const resources[] = {"cpu",  "fsize",   "data",  "stack",      "core",     "rss",
                                            "nproc", "nofile", "memlock", "as",       "locks",    "sigpending",
                                            "msgqueue", "nice", "rtprio", "rttime"};
    for (size_t i = 0; i < sizeof resources / sizeof resources[0]; i++)
        EXPECT(MSB_OK, msb_exec_request_add_rlimit(req, resources[i], 1u << 20, 1u << 20, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_exec_request_add_rlimit(req, "bogus", 1, 1, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_exec_request_add_rlimit(req, "NOFILE", 1, 1, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_add_rlimit(req, NULL, 1, 1, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_request_add_rlimit(NULL, "cpu", 1, 1, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_exec_request_add_rlimit(req, BAD_UTF8, 1, 1, ERR));
    msb_exec_request_free(req);
    msb_exec_request_free(NULL);
}

static void test_exec_null_arguments(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("cat", NULL);
    msb_exec *exec = NULL, *untouched = (msb_exec *)&untouched;
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_start(NULL, req, T_MS, &untouched, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_start(c, NULL, T_MS, &untouched, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_start(c, req, T_MS, NULL, ERR));
    CHECK(untouched == (msb_exec *)&untouched);
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));

    msb_exec_event *ev = NULL;
    int fd = -1;
    const uint8_t byte = 'x';
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_next_event(NULL, 0, &ev, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_next_event(exec, 0, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_readiness_fd(NULL, &fd, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_readiness_fd(exec, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_write_stdin(NULL, &byte, 1, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_write_stdin(exec, NULL, 1, T_MS, ERR));
    EXPECT(MSB_OK, msb_exec_write_stdin(exec, NULL, 0, T_MS, ERR)); /* zero length does nothing */
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_close_stdin(NULL, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_signal(NULL, 15, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_resize(NULL, 24, 80, T_MS, ERR));
    CHECK_INT(msb_exec_id(NULL), 0);
    CHECK(ev == NULL && fd == -1);
    msb_exec_free(NULL);

    CHECK_INT(msb_exec_event_kind(NULL), 0);
    CHECK_INT(msb_exec_event_pid(NULL), 0);
    CHECK_INT(msb_exec_event_exit_code(NULL), 0);
    CHECK(msb_exec_event_failure_kind(NULL) == NULL);
    CHECK_INT(msb_exec_event_errno(NULL), 0);
    CHECK(msb_exec_event_message(NULL) == NULL);
    CHECK(msb_exec_event_stage(NULL) == NULL);
    size_t len = 99;
    msb_exec_event_data(NULL, &len);
    CHECK_INT(len, 0);
    msb_bytes *b = NULL;
    CHECK_INT(msb_exec_event_take_data(NULL, &b), MSB_ERR_NULL_POINTER);
    msb_exec_event_free(NULL);

    msb_run_output *out = NULL;
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_run(NULL, req, 16, T_MS, &out, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_run(c, NULL, 16, T_MS, &out, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_exec_run(c, req, 16, T_MS, NULL, ERR));
    CHECK(out == NULL);
    CHECK_INT(msb_run_output_exit_code(NULL), 0);
    CHECK(!msb_run_output_truncated(NULL));
    len = 99;
    msb_run_output_stdout(NULL, &len);
    CHECK_INT(len, 0);
    len = 99;
    msb_run_output_stderr(NULL, &len);
    CHECK_INT(len, 0);
    msb_run_output_free(NULL);

    EXPECT(MSB_OK, msb_exec_close_stdin(exec, T_MS, ERR));
    struct exec_result res = {0};
    collect_exec(exec, T_MS, &res);
    CHECK_INT(res.exit_code, 0);
    exec_result_free(&res);
    msb_exec_free(exec);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_event_order_and_accessors(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("sh", "-c", "echo hi", NULL);
    msb_exec *exec = NULL;
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));
    msb_exec_request_free(req);
    uint32_t start = 0, end = 0;
    CHECK_INT(msb_client_id_range(c, &start, &end), MSB_OK);
    CHECK(msb_exec_id(exec) >= start && msb_exec_id(exec) < end);

    msb_exec_event *ev = NULL;
    REQUIRE_OK(msb_exec_next_event(exec, T_MS, &ev, ERR));
    CHECK_INT(msb_exec_event_kind(ev), MSB_EXEC_STARTED);
    CHECK(msb_exec_event_pid(ev) > 0);
    CHECK_INT(msb_exec_event_exit_code(ev), 0);
    /* The failure accessors on an event of another kind. */
    CHECK_STR(msb_exec_event_failure_kind(ev), "");
    CHECK_INT(msb_exec_event_errno(ev), 0);
    CHECK_STR(msb_exec_event_message(ev), "");
    CHECK(msb_exec_event_stage(ev) == NULL);
    size_t len = 99;
    CHECK(msb_exec_event_data(ev, &len) != NULL);
    CHECK_INT(len, 0);
    /* An event without output hands out an empty buffer. */
    msb_bytes *none = NULL;
    CHECK_INT(msb_exec_event_take_data(ev, &none), MSB_OK);
    CHECK(none && msb_bytes_len(none) == 0 && msb_bytes_data(none) != NULL);
    msb_bytes_free(none);
    msb_exec_event_free(ev);

    REQUIRE_OK(msb_exec_next_event(exec, T_MS, &ev, ERR));
    CHECK_INT(msb_exec_event_kind(ev), MSB_EXEC_STDOUT);
    CHECK_INT(msb_exec_event_pid(ev), 0);
    const uint8_t *data = msb_exec_event_data(ev, &len);
    CHECK_MEM(data, len, "hi\n");
    CHECK(msb_exec_event_data(ev, NULL) == data);
    /* take_data moves the bytes out; the event's own data becomes empty. */
    msb_bytes *taken = NULL;
    CHECK_INT(msb_exec_event_take_data(ev, NULL), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_exec_event_take_data(ev, &taken), MSB_OK);
    CHECK_MEM(msb_bytes_data(taken), msb_bytes_len(taken), "hi\n");
    msb_exec_event_data(ev, &len);
    CHECK_INT(len, 0);
    msb_bytes_free(taken);
    taken = NULL;
    CHECK_INT(msb_exec_event_take_data(ev, &taken), MSB_OK); /* a second take finds nothing */
    CHECK_INT(msb_bytes_len(taken), 0);
    msb_bytes_free(taken);
    msb_exec_event_free(ev);

    REQUIRE_OK(msb_exec_next_event(exec, T_MS, &ev, ERR));
    CHECK_INT(msb_exec_event_kind(ev), MSB_EXEC_EXITED);
    CHECK_INT(msb_exec_event_exit_code(ev), 0);
    CHECK_INT(msb_exec_event_pid(ev), 0);
    msb_exec_event_data(ev, &len);
    CHECK_INT(len, 0);
    msb_exec_event_free(ev);

    msb_exec_event *untouched = (msb_exec_event *)&untouched;
    EXPECT(MSB_ENDED, msb_exec_next_event(exec, 0, &untouched, ERR));
    EXPECT(MSB_ENDED, msb_exec_next_event(exec, T_MS, &untouched, ERR));
    CHECK(untouched == (msb_exec_event *)&untouched);
    msb_exec_free(exec);
    msb_client_free(c);
}

static void test_run_args_env_cwd(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("sh", "-c", "printf '%s|%s|%s|%s' \"$1\" \"$MSB_T\" \"$(pwd)\" \"$#\"", "argv0",
                                         "a b", "", NULL);
    EXPECT(MSB_OK, msb_exec_request_add_env(req, "MSB_T", "v=1 \xc3\xa9", ERR));
    EXPECT(MSB_OK, msb_exec_request_set_cwd(req, "/tmp", ERR));
    msb_run_output *out = NULL;
    if (EXPECT(MSB_OK, msb_exec_run(c, req, 4096, T_MS, &out, ERR))) {
        size_t len = 0;
        const uint8_t *s = msb_run_output_stdout(out, &len);
        CHECK_MEM(s, len, "a b|v=1 \xc3\xa9|/tmp|2");
        CHECK(msb_run_output_stdout(out, NULL) == s); /* len_out optional */
        CHECK(msb_run_output_stderr(out, &len) != NULL);
        CHECK_INT(len, 0);
        CHECK_INT(msb_run_output_exit_code(out), 0);
        CHECK(!msb_run_output_truncated(out));
    }
    msb_run_output_free(out);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_run_as_user(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("id", "-un", NULL);
    EXPECT(MSB_OK, msb_exec_request_set_user(req, "nobody", ERR));
    msb_run_output *out = NULL;
    if (EXPECT(MSB_OK, msb_exec_run(c, req, 256, T_MS, &out, ERR))) {
        size_t len = 0;
        const uint8_t *s = msb_run_output_stdout(out, &len);
        if (geteuid() == 0) {
            /* A root relay switches to the user. */
            CHECK_MEM(s, len, "nobody\n");
            CHECK_INT(msb_run_output_exit_code(out), 0);
        } else {
            /* Otherwise the relay refuses, with a message on stderr. */
            CHECK_INT(msb_run_output_exit_code(out), -1);
            msb_run_output_stderr(out, &len);
            CHECK(len > 0);
        }
    }
    msb_run_output_free(out);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_stderr_and_exit_codes(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    struct {
        const char *script;
        int32_t code;
        const char *out, *err;
    } cases[] = {
        {"echo out; echo err >&2; exit 7", 7, "out\n", "err\n"},
        {"exit 0", 0, "", ""},
        {"exit 255", 255, "", ""},
        {"kill -9 $$", -1, "", ""}, /* killed by a signal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msb_exec_request *req = make_request("sh", "-c", cases[i].script, NULL);
        msb_exec *exec = NULL;
        if (EXPECT(MSB_OK, msb_exec_start(c, req, T_MS, &exec, ERR))) {
            struct exec_result res = {0};
            collect_exec(exec, T_MS, &res);
            CHECK_INT(res.end_status, MSB_ENDED);
            CHECK(res.started && res.started_first && res.pid > 0);
            CHECK(res.exited);
            CHECK_INT(res.exit_code, cases[i].code);
            CHECK_MEM(res.out, res.out_len, cases[i].out);
            CHECK_MEM(res.err, res.err_len, cases[i].err);
            CHECK_INT(res.events_after_exit, 0);
            exec_result_free(&res);
        }
        msb_exec_free(exec);
        msb_exec_request_free(req);
    }
    msb_client_free(c);
}

/* A command that cannot start: agents before 0.4.4 (the 0.3.14 profile)
 * answer exit code -1; later ones answer core.exec.failed, a terminal
 * MSB_EXEC_FAILED event with the kind, errno, message and stage, and
 * msb_exec_run returns MSB_ERR_EXEC_FAILED. Either way nothing started. */
static void test_spawn_failure_without_started(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    bool typed = !msb_client_is_legacy(c);
    msb_exec_request *req = make_request("/nonexistent/msb-no-such-program", NULL);
    msb_exec *exec = NULL;
    if (EXPECT(MSB_OK, msb_exec_start(c, req, T_MS, &exec, ERR))) {
        struct exec_result res = {0};
        collect_exec(exec, T_MS, &res);
        CHECK_INT(res.end_status, MSB_ENDED);
        CHECK(!res.started);
        CHECK_INT(res.events_after_exit, 0);
        if (typed) {
            CHECK(res.failed && !res.exited);
            CHECK_STR(res.failure_kind, "not_found");
            CHECK_INT(res.failure_errno, ENOENT);
            CHECK(res.failure_message && res.failure_message[0] != '\0');
        } else {
            CHECK(res.exited && !res.failed);
            CHECK_INT(res.exit_code, -1);
        }
        exec_result_free(&res);
    }
    msb_exec_free(exec);
    msb_run_output *out = NULL;
    if (typed) {
        msb_error *err = NULL;
        CHECK_INT(msb_exec_run(c, req, 64, T_MS, &out, &err), MSB_ERR_EXEC_FAILED);
        CHECK_INT(msb_error_code(err), MSB_ERR_EXEC_FAILED);
        CHECK(strstr(msb_error_message(err), "not_found") != NULL);
        msb_error_free(err);
        CHECK(out == NULL);
    } else if (EXPECT(MSB_OK, msb_exec_run(c, req, 64, T_MS, &out, ERR))) {
        CHECK_INT(msb_run_output_exit_code(out), -1);
    }
    msb_run_output_free(out);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_stdin_streaming(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("cat", NULL);
    msb_exec *exec = NULL;
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));
    struct exec_result res = {0};
    /* Each line comes back before the next is sent: input really streams. */
    EXPECT(MSB_OK, msb_exec_write_stdin(exec, (const uint8_t *)"line one\n", 9, T_MS, ERR));
    CHECK(read_stdout_until(exec, "line one\n", &res));
    EXPECT(MSB_OK, msb_exec_write_stdin(exec, (const uint8_t *)"line two\n", 9, T_MS, ERR));
    CHECK(read_stdout_until(exec, "line two\n", &res));
    EXPECT(MSB_OK, msb_exec_close_stdin(exec, T_MS, ERR));
    collect_exec(exec, T_MS, &res);
    CHECK_MEM(res.out, res.out_len, "line one\nline two\n");
    CHECK_INT(res.exit_code, 0);
    exec_result_free(&res);
    msb_exec_free(exec);
    msb_exec_request_free(req);

    /* 3 MiB of stdin, more than one frame can hold, arrives whole. */
    req = make_request("wc", "-c", NULL);
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));
    size_t big = 3 << 20;
    uint8_t *buf = malloc(big);
    REQUIRE(buf);
    memset(buf, 'z', big);
    EXPECT(MSB_OK, msb_exec_write_stdin(exec, buf, big, T_MS, ERR));
    free(buf);
    EXPECT(MSB_OK, msb_exec_close_stdin(exec, T_MS, ERR));
    collect_exec(exec, T_MS, &res);
    CHECK(res.out && atol(res.out) == (long)big);
    exec_result_free(&res);
    msb_exec_free(exec);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_tty_and_resize(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("sh", "-c", "stty size; echo to-stderr >&2; read x; stty size", NULL);
    EXPECT(MSB_OK, msb_exec_request_set_tty(req, true, 30, 90, ERR));
    msb_exec *exec = NULL;
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));
    struct exec_result res = {0};
    CHECK(read_stdout_until(exec, "30 90", &res));
    /* With a tty, stderr is merged into stdout. */
    CHECK(read_stdout_until(exec, "to-stderr", &res));
    EXPECT(MSB_OK, msb_exec_resize(exec, 50, 132, T_MS, ERR));
    EXPECT(MSB_OK, msb_exec_write_stdin(exec, (const uint8_t *)"\n", 1, T_MS, ERR));
    CHECK(read_stdout_until(exec, "50 132", &res));
    collect_exec(exec, T_MS, &res);
    CHECK_INT(res.exit_code, 0);
    CHECK_INT(res.err_len, 0);
    exec_result_free(&res);
    msb_exec_free(exec);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_signal_ends_process(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("sleep", "30", NULL);
    msb_exec *exec = NULL;
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));
    msb_exec_event *ev = NULL;
    if (EXPECT(MSB_OK, msb_exec_next_event(exec, T_MS, &ev, ERR)))
        CHECK_INT(msb_exec_event_kind(ev), MSB_EXEC_STARTED);
    msb_exec_event_free(ev);
    int64_t t0 = now_ms();
    EXPECT(MSB_OK, msb_exec_signal(exec, 15, T_MS, ERR));
    struct exec_result res = {0};
    collect_exec(exec, T_MS, &res);
    CHECK(res.exited);
    CHECK_INT(res.exit_code, -1);
    CHECK(now_ms() - t0 < 10000);
    exec_result_free(&res);
    msb_exec_free(exec);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_rlimit_applies(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("sh", "-c", "ulimit -n; ulimit -Hn", NULL);
    EXPECT(MSB_OK, msb_exec_request_add_rlimit(req, "nofile", 37, 41, ERR));
    msb_run_output *out = NULL;
    if (EXPECT(MSB_OK, msb_exec_run(c, req, 64, T_MS, &out, ERR))) {
        size_t len = 0;
        const uint8_t *s = msb_run_output_stdout(out, &len);
        CHECK_MEM(s, len, "37\n41\n");
    }
    msb_run_output_free(out);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_run_timeout(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("sleep", "5", NULL);
    msb_run_output *out = (msb_run_output *)&out;
    int64_t t0 = now_ms();
    EXPECT(MSB_ERR_TIMEOUT, msb_exec_run(c, req, 64, 200, &out, ERR));
    int64_t took = now_ms() - t0;
    CHECK(took >= 150 && took < 4000);
    CHECK(out == (msb_run_output *)&out);

    /* A pull with timeout 0 on a running process: nothing yet, nothing consumed. */
    msb_exec *exec = NULL;
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));
    msb_exec_event *ev = NULL;
    REQUIRE_OK(msb_exec_next_event(exec, T_MS, &ev, ERR));
    msb_exec_event_free(ev);
    ev = (msb_exec_event *)&ev;
    EXPECT(MSB_NOTHING_YET, msb_exec_next_event(exec, 0, &ev, ERR));
    t0 = now_ms();
    EXPECT(MSB_NOTHING_YET, msb_exec_next_event(exec, 100, &ev, ERR));
    CHECK(now_ms() - t0 >= 80);
    CHECK(ev == (msb_exec_event *)&ev);
    msb_exec_free(exec);
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_run_capture_limit(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("sh", "-c", "head -c 100000 /dev/zero; head -c 3000 /dev/zero >&2", NULL);
    struct {
        size_t limit, want_out, want_err;
        bool truncated;
    } cases[] = {
        {1000, 1000, 1000, true},
        {5000, 5000, 3000, true},
        {100000, 100000, 3000, false},
        {0, 0, 0, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msb_run_output *out = NULL;
        if (!EXPECT(MSB_OK, msb_exec_run(c, req, cases[i].limit, T_MS, &out, ERR))) continue;
        size_t len = 0;
        msb_run_output_stdout(out, &len);
        CHECK_INT(len, cases[i].want_out);
        msb_run_output_stderr(out, &len);
        CHECK_INT(len, cases[i].want_err);
        CHECK_INT(msb_run_output_truncated(out), cases[i].truncated);
        CHECK_INT(msb_run_output_exit_code(out), 0);
        msb_run_output_free(out);
    }
    msb_exec_request_free(req);
    msb_client_free(c);
}

static void test_exec_readiness_fd(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_exec_request *req = make_request("cat", NULL);
    msb_exec *exec = NULL;
    REQUIRE_OK(msb_exec_start(c, req, T_MS, &exec, ERR));
    int fd = -1;
    REQUIRE_OK(msb_exec_readiness_fd(exec, &fd, ERR));
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    msb_exec_event *ev = NULL;

    /* STARTED arrives: readable; drained: not readable any more. */
    CHECK(fd_readable(fd, T_MS));
    while (msb_exec_next_event(exec, 0, &ev, NULL) == MSB_OK) msb_exec_event_free(ev);
    CHECK(!fd_readable(fd, 0));
    CHECK(!fd_readable(fd, 100));

    /* Output queued: readable until pulled, then not again. */
    EXPECT(MSB_OK, msb_exec_write_stdin(exec, (const uint8_t *)"ping\n", 5, T_MS, ERR));
    CHECK(fd_readable(fd, T_MS));
    CHECK(fd_readable(fd, 0));
    if (EXPECT(MSB_OK, msb_exec_next_event(exec, 0, &ev, ERR))) CHECK_INT(msb_exec_event_kind(ev), MSB_EXEC_STDOUT);
    msb_exec_event_free(ev);
    CHECK(!fd_readable(fd, 0));
    CHECK_INT(msb_exec_next_event(exec, 0, &ev, NULL), MSB_NOTHING_YET);

    /* Exit: readable; after the exit event, MSB_ENDED keeps it readable. */
    EXPECT(MSB_OK, msb_exec_close_stdin(exec, T_MS, ERR));
    CHECK(fd_readable(fd, T_MS));
    if (EXPECT(MSB_OK, msb_exec_next_event(exec, 0, &ev, ERR))) CHECK_INT(msb_exec_event_kind(ev), MSB_EXEC_EXITED);
    msb_exec_event_free(ev);
    CHECK(fd_readable(fd, 0));
    CHECK_INT(msb_exec_next_event(exec, 0, &ev, NULL), MSB_ENDED);
    msb_exec_free(exec);
    msb_exec_request_free(req);
    msb_client_free(c);
}

const struct test_case exec_tests[] = {
    {"exec request builder errors (NULL, UTF-8, empty, bad env/rlimit)", test_request_builder_errors},
    {"exec calls reject NULL arguments", test_exec_null_arguments},
    {"exec events: started, stdout, exited, ENDED; accessors", test_event_order_and_accessors},
    {"exec_run passes args, env and cwd", test_run_args_env_cwd},
    {"exec as another user (set_user)", test_run_as_user},
    {"stderr and exit codes (incl. -1 when killed)", test_stderr_and_exit_codes},
    {"spawn failure: MSB_EXEC_FAILED (or exit -1 on 0.3.x) without started", test_spawn_failure_without_started},
    {"stdin streams line by line; 3 MiB stdin arrives whole", test_stdin_streaming},
    {"tty: size, merged stderr, resize", test_tty_and_resize},
    {"signal ends the process with -1", test_signal_ends_process},
    {"rlimit soft/hard applied", test_rlimit_applies},
    {"exec_run 200 ms timeout on sleep 5; pull timeouts", test_run_timeout},
    {"exec_run capture_limit truncates each stream", test_run_capture_limit},
    {"exec readiness fd is level-triggered", test_exec_readiness_fd},
    {NULL, NULL},
};
