/*
 * Streams a large file into the sandbox and back out with msb_file_writer /
 * msb_file_reader, never holding the guest's copy in one buffer, and checks
 * that every byte survived the round trip.
 *
 *   cc -std=c11 -Iinclude examples/c/bigfile.c -Ltarget/release -lmicrosandbox_agent -o bigfile
 *   ./bigfile /path/to/agent.sock [MEBIBYTES]      # default 20
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "microsandbox_agent.h"

#define TIMEOUT_MS 30000
#define GUEST_PATH "/msb-bigfile.bin"
/* Written in pieces that do not line up with the library's 3 MiB chunks, to
 * show that the caller's piece size is free. */
#define WRITE_PIECE (1000 * 1000)

static int fail(const char *what, msb_error *err) {
    fprintf(stderr, "%s failed: %s\n", what, msb_error_message(err));
    msb_error_free(err);
    return 1;
}

/* Deterministic, position-dependent content, so a misplaced or repeated
 * chunk cannot compare equal. */
static void fill_pattern(uint8_t *buf, size_t len) {
    uint64_t state = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < len; i++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        buf[i] = (uint8_t)(state >> 24);
    }
}

static int write_file(msb_client *client, const uint8_t *content, size_t size) {
    msb_error *err = NULL;
    msb_file_writer *w = NULL;
    if (msb_file_writer_open(client, GUEST_PATH, 0600, TIMEOUT_MS, &w, &err) != MSB_OK)
        return fail("msb_file_writer_open", err);
    for (size_t off = 0; off < size; off += WRITE_PIECE) {
        size_t n = size - off < WRITE_PIECE ? size - off : WRITE_PIECE;
        if (msb_file_writer_write(w, content + off, n, TIMEOUT_MS, &err) != MSB_OK) {
            msb_file_writer_free(w);
            return fail("msb_file_writer_write", err);
        }
    }
    msb_status st = msb_file_writer_finish(w, TIMEOUT_MS, &err);
    msb_file_writer_free(w);
    if (st != MSB_OK) return fail("msb_file_writer_finish", err);
    printf("wrote %zu bytes to %s\n", size, GUEST_PATH);
    return 0;
}

/* Reads the file back chunk by chunk and compares each chunk in place. */
static int read_and_compare(msb_client *client, const uint8_t *expected, size_t size) {
    msb_error *err = NULL;
    msb_file_reader *r = NULL;
    if (msb_file_reader_open(client, GUEST_PATH, TIMEOUT_MS, &r, &err) != MSB_OK)
        return fail("msb_file_reader_open", err);
    size_t received = 0, chunks = 0;
    int rc = 0;
    for (;;) {
        msb_bytes *chunk = NULL;
        msb_status st = msb_file_reader_next(r, TIMEOUT_MS, &chunk, &err);
        if (st == MSB_ENDED) break;
        if (st != MSB_OK) {
            if (st == MSB_NOTHING_YET) {
                fprintf(stderr, "no chunk arrived within %d ms\n", TIMEOUT_MS);
                rc = 1;
            } else {
                rc = fail("msb_file_reader_next", err);
            }
            break;
        }
        size_t len = msb_bytes_len(chunk);
        if (len > size - received || memcmp(msb_bytes_data(chunk), expected + received, len) != 0) {
            fprintf(stderr, "content differs in the chunk at offset %zu (%zu bytes)\n", received, len);
            msb_bytes_free(chunk);
            rc = 1;
            break;
        }
        received += len;
        chunks++;
        msb_bytes_free(chunk);
    }
    msb_file_reader_free(r);
    if (rc == 0 && received != size) {
        fprintf(stderr, "read back %zu bytes, expected %zu\n", received, size);
        rc = 1;
    }
    if (rc == 0) printf("read back %zu bytes in %zu chunks: identical\n", received, chunks);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s RELAY_SOCKET_PATH [MEBIBYTES]\n", argv[0]);
        return 2;
    }
    size_t size = (size_t)(argc == 3 ? strtoul(argv[2], NULL, 10) : 20) << 20;
    uint8_t *content = malloc(size ? size : 1);
    if (!content) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    fill_pattern(content, size);

    msb_error *err = NULL;
    msb_client *client = NULL;
    if (msb_client_connect(argv[1], NULL, &client, &err) != MSB_OK) {
        free(content);
        return fail("msb_client_connect", err);
    }
    int rc = write_file(client, content, size);
    if (rc == 0) rc = read_and_compare(client, content, size);
    if (rc == 0 && msb_fs_remove(client, GUEST_PATH, TIMEOUT_MS, &err) != MSB_OK) rc = fail("msb_fs_remove", err);
    msb_client_free(client);
    free(content);
    return rc;
}
