/*
 * Quickstart: connect to a relay, run a command, write and read a file,
 * list a directory.
 *
 *   cc -Iinclude examples/c/quickstart.c -Ltarget/release -lmicrosandbox_agent -o quickstart
 *   ./quickstart /path/to/agent.sock
 */
#include <stdio.h>
#include <string.h>

#include "microsandbox_agent.h"

#define TIMEOUT_MS 10000

/* Prints the error, releases it, and returns 1 (the process exit code). */
static int fail(const char *what, msb_error *err) {
    fprintf(stderr, "%s failed: %s\n", what, msb_error_message(err));
    msb_error_free(err);
    return 1;
}

static int run_echo(msb_client *client) {
    msb_error *err = NULL;
    msb_exec_request *req = NULL;
    if (msb_exec_request_new("echo", &req, &err) != MSB_OK) return fail("msb_exec_request_new", err);
    if (msb_exec_request_add_arg(req, "hello from the sandbox", &err) != MSB_OK) {
        msb_exec_request_free(req);
        return fail("msb_exec_request_add_arg", err);
    }
    msb_run_output *out = NULL;
    msb_status st = msb_exec_run(client, req, 1 << 20, TIMEOUT_MS, &out, &err);
    msb_exec_request_free(req);
    if (st != MSB_OK) return fail("msb_exec_run", err);
    size_t len = 0;
    const uint8_t *text = msb_run_output_stdout(out, &len);
    printf("exec: %.*s", (int)len, (const char *)text);
    printf("exit code: %d\n", msb_run_output_exit_code(out));
    msb_run_output_free(out);
    return 0;
}

static int file_round_trip(msb_client *client) {
    msb_error *err = NULL;
    const char *path = "/tmp/msb-quickstart.txt";
    const char *content = "written through libmicrosandbox_agent\n";
    if (msb_fs_mkdir(client, "/tmp", TIMEOUT_MS, &err) != MSB_OK) return fail("msb_fs_mkdir", err);
    if (msb_fs_write_file(client, path, (const uint8_t *)content, strlen(content), 0644, TIMEOUT_MS,
                          &err) != MSB_OK)
        return fail("msb_fs_write_file", err);
    msb_bytes *data = NULL;
    if (msb_fs_read_file(client, path, TIMEOUT_MS, &data, &err) != MSB_OK) return fail("msb_fs_read_file", err);
    printf("read back %zu bytes: %.*s", msb_bytes_len(data), (int)msb_bytes_len(data),
           (const char *)msb_bytes_data(data));
    msb_bytes_free(data);

    msb_fs_entries *entries = NULL;
    if (msb_fs_list(client, "/tmp", TIMEOUT_MS, &entries, &err) != MSB_OK) return fail("msb_fs_list", err);
    printf("/tmp holds %zu entries:\n", msb_fs_entries_len(entries));
    for (size_t i = 0; i < msb_fs_entries_len(entries); i++) {
        const msb_fs_entry_view *e = msb_fs_entries_get(entries, i);
        printf("  %-40s %10llu bytes  mode %o\n", msb_fs_entry_path(e),
               (unsigned long long)msb_fs_entry_size(e), (unsigned)msb_fs_entry_mode(e));
    }
    msb_fs_entries_free(entries);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s RELAY_SOCKET_PATH\n", argv[0]);
        return 2;
    }
    printf("libmicrosandbox_agent %s\n", msb_version());

    msb_client *client = NULL;
    msb_error *err = NULL;
    if (msb_client_connect(argv[1], NULL, &client, &err) != MSB_OK) return fail("msb_client_connect", err);

    msb_ready_timings t;
    if (msb_client_ready_timings(client, &t) == MSB_OK)
        printf("ready: boot %llu ns, init %llu ns, ready %llu ns\n", (unsigned long long)t.boot_time_ns,
               (unsigned long long)t.init_time_ns, (unsigned long long)t.ready_time_ns);

    int rc = run_echo(client);
    if (rc == 0) rc = file_round_trip(client);
    msb_client_free(client);
    return rc;
}
