/* Filesystem calls, checked against the relay's root on the host. */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BAD_UTF8 "/\xed\xa0\x80" /* an encoded surrogate */

/* Reads a host file into a malloc'd buffer. */
static uint8_t *slurp_host(const char *guest_path, size_t *len) {
    char p[512];
    host_path(p, sizeof p, guest_path);
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 4096;
            buf = realloc(buf, cap);
            if (!buf) abort();
        }
        size_t n = fread(buf + *len, 1, cap - *len, f);
        if (n == 0) break;
        *len += n;
    }
    fclose(f);
    return buf;
}

static bool host_exists(const char *guest_path, mode_t *mode) {
    char p[512];
    host_path(p, sizeof p, guest_path);
    struct stat st;
    if (lstat(p, &st) != 0) return false;
    if (mode) *mode = st.st_mode;
    return true;
}

static void fill_pattern(uint8_t *buf, size_t len, uint32_t seed) {
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (uint8_t)(seed >> 16);
    }
}

static void test_write_read_stat(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/fs1/deep/er", T_MS, ERR));
    mode_t mode = 0;
    CHECK(host_exists("/fs1/deep/er", &mode) && S_ISDIR(mode));
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/fs1", T_MS, ERR)); /* existing: fine */

    const char *text = "hello, fs\n";
    REQUIRE_OK(msb_fs_write_file(c, "/fs1/a.txt", (const uint8_t *)text, strlen(text), 0640, T_MS, ERR));
    size_t len = 0;
    uint8_t *on_host = slurp_host("/fs1/a.txt", &len);
    CHECK_MEM(on_host, len, text);
    free(on_host);
    CHECK(host_exists("/fs1/a.txt", &mode) && (mode & 07777) == 0640);

    msb_bytes *data = NULL;
    if (EXPECT(MSB_OK, msb_fs_read_file(c, "/fs1/a.txt", T_MS, &data, ERR)))
        CHECK_MEM(msb_bytes_data(data), msb_bytes_len(data), text);
    msb_bytes_free(data);

    msb_fs_entry *e = NULL;
    if (EXPECT(MSB_OK, msb_fs_stat(c, "/fs1/a.txt", T_MS, &e, ERR))) {
        CHECK_STR(msb_fs_entry_path(e), "/fs1/a.txt");
        CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_FILE);
        CHECK_INT(msb_fs_entry_size(e), strlen(text));
        CHECK_INT(msb_fs_entry_mode(e), 0100640);
        int64_t mtime = 0;
        CHECK(msb_fs_entry_mtime(e, &mtime));
        int64_t now = (int64_t)time(NULL);
        CHECK(mtime > now - 600 && mtime <= now + 5);
        CHECK(!msb_fs_entry_mtime(e, NULL));
    }
    msb_fs_entry_free(e);
    e = NULL;
    if (EXPECT(MSB_OK, msb_fs_stat(c, "/fs1/deep", T_MS, &e, ERR))) CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_DIR);
    msb_fs_entry_free(e);

    /* Zero length: (NULL, 0) writes an empty file; reading it gives a live,
     * empty buffer. Mode -1 leaves the default. */
    EXPECT(MSB_OK, msb_fs_write_file(c, "/fs1/empty", NULL, 0, -1, T_MS, ERR));
    CHECK(host_exists("/fs1/empty", &mode) && S_ISREG(mode));
    data = NULL;
    if (EXPECT(MSB_OK, msb_fs_read_file(c, "/fs1/empty", T_MS, &data, ERR))) {
        CHECK_INT(msb_bytes_len(data), 0);
        CHECK(msb_bytes_data(data) != NULL);
    }
    msb_bytes_free(data);

    /* Overwrite truncates. */
    EXPECT(MSB_OK, msb_fs_write_file(c, "/fs1/a.txt", (const uint8_t *)"x", 1, 0644, T_MS, ERR));
    on_host = slurp_host("/fs1/a.txt", &len);
    CHECK_MEM(on_host, len, "x");
    free(on_host);
    EXPECT(MSB_OK, msb_fs_remove_dir(c, "/fs1", T_MS, ERR));
    CHECK(!host_exists("/fs1", NULL));
    msb_client_free(c);
}

static void test_list_and_symlink(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/fs2/sub", T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_write_file(c, "/fs2/one", (const uint8_t *)"1", 1, 0600, T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_write_file(c, "/fs2/three", (const uint8_t *)"333", 3, 0600, T_MS, ERR));
    char link_path[512];
    host_path(link_path, sizeof link_path, "/fs2/link");
    CHECK(symlink("one", link_path) == 0);

    msb_fs_entries *list = NULL;
    REQUIRE_OK(msb_fs_list(c, "/fs2", T_MS, &list, ERR));
    CHECK_INT(msb_fs_entries_len(list), 4);
    int seen = 0;
    for (size_t i = 0; i < msb_fs_entries_len(list); i++) {
        const msb_fs_entry *e = msb_fs_entries_get(list, i);
        REQUIRE(e);
        const char *p = msb_fs_entry_path(e);
        if (!strcmp(p, "/fs2/sub")) {
            seen |= 1;
            CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_DIR);
        } else if (!strcmp(p, "/fs2/one")) {
            seen |= 2;
            CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_FILE);
            CHECK_INT(msb_fs_entry_size(e), 1);
            CHECK_INT(msb_fs_entry_mode(e), 0100600);
        } else if (!strcmp(p, "/fs2/three")) {
            seen |= 4;
            CHECK_INT(msb_fs_entry_size(e), 3);
        } else if (!strcmp(p, "/fs2/link")) {
            seen |= 8;
            CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_SYMLINK);
        } else {
            test_fail(__FILE__, __LINE__, "unexpected entry %s", p);
        }
    }
    CHECK_INT(seen, 15);
    CHECK(msb_fs_entries_get(list, msb_fs_entries_len(list)) == NULL);
    CHECK(msb_fs_entries_get(list, (size_t)-1) == NULL);
    msb_fs_entries_free(list);

    /* Stat does not follow symlinks. */
    msb_fs_entry *e = NULL;
    if (EXPECT(MSB_OK, msb_fs_stat(c, "/fs2/link", T_MS, &e, ERR)))
        CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_SYMLINK);
    msb_fs_entry_free(e);

    /* An empty directory lists as zero entries. */
    list = NULL;
    if (EXPECT(MSB_OK, msb_fs_list(c, "/fs2/sub", T_MS, &list, ERR))) CHECK_INT(msb_fs_entries_len(list), 0);
    msb_fs_entries_free(list);
    EXPECT(MSB_OK, msb_fs_remove_dir(c, "/fs2", T_MS, ERR));
    msb_client_free(c);
}

static void test_copy_rename_remove(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/fs3/d", T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_write_file(c, "/fs3/a", (const uint8_t *)"abc", 3, 0644, T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_copy(c, "/fs3/a", "/fs3/b", T_MS, ERR));
    size_t len = 0;
    uint8_t *got = slurp_host("/fs3/b", &len);
    CHECK_MEM(got, len, "abc");
    free(got);
    CHECK(host_exists("/fs3/a", NULL));

    EXPECT(MSB_OK, msb_fs_rename(c, "/fs3/b", "/fs3/d/c", T_MS, ERR));
    CHECK(!host_exists("/fs3/b", NULL));
    got = slurp_host("/fs3/d/c", &len);
    CHECK_MEM(got, len, "abc");
    free(got);

    EXPECT(MSB_OK, msb_fs_remove(c, "/fs3/a", T_MS, ERR));
    CHECK(!host_exists("/fs3/a", NULL));
    EXPECT(MSB_OK, msb_fs_remove_dir(c, "/fs3", T_MS, ERR)); /* recursive */
    CHECK(!host_exists("/fs3", NULL));
    msb_client_free(c);
}

/* A guest failure whose text carries no errno: MSB_ERR_GUEST with the
 * guest's text. A missing path is MSB_ERR_NOT_FOUND (ENOENT, see
 * test_paths.c for the errno mapping). */
#define EXPECT_GUEST(call) EXPECT(MSB_ERR_GUEST, call)
#define EXPECT_MISSING(call) EXPECT(MSB_ERR_NOT_FOUND, call)

static void test_guest_errors(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    EXPECT(MSB_OK, msb_fs_write_file(c, "/fs4-file", (const uint8_t *)"f", 1, 0644, T_MS, ERR));
    msb_bytes *data = (msb_bytes *)&data;
    msb_fs_entry *e = (msb_fs_entry *)&e;
    msb_fs_entries *list = (msb_fs_entries *)&list;

    /* The message is the guest's own text: it names the missing path. */
    msb_error *err = NULL;
    CHECK_INT(msb_fs_read_file(c, "/fs4-missing", T_MS, &data, &err), MSB_ERR_NOT_FOUND);
    CHECK_INT(msb_error_code(err), MSB_ERR_NOT_FOUND);
    CHECK_INT(msb_error_errno(err), 2);
    CHECK(strstr(msb_error_message(err), "fs4-missing") != NULL);
    msb_error_free(err);

    EXPECT_MISSING(msb_fs_stat(c, "/fs4-missing", T_MS, &e, ERR));
    EXPECT_MISSING(msb_fs_list(c, "/fs4-missing", T_MS, &list, ERR));
    EXPECT_GUEST(msb_fs_list(c, "/fs4-file", T_MS, &list, ERR));
    EXPECT_MISSING(msb_fs_remove(c, "/fs4-missing", T_MS, ERR));
    EXPECT_MISSING(msb_fs_remove_dir(c, "/fs4-missing", T_MS, ERR));
    EXPECT_MISSING(msb_fs_copy(c, "/fs4-missing", "/fs4-x", T_MS, ERR));
    EXPECT_MISSING(msb_fs_rename(c, "/fs4-missing", "/fs4-x", T_MS, ERR));
    EXPECT_GUEST(msb_fs_mkdir(c, "/fs4-file/sub", T_MS, ERR));
    EXPECT_GUEST(msb_fs_write_file(c, "/fs4-file/sub", (const uint8_t *)"x", 1, 0644, T_MS, ERR));
    /* The relay refuses paths that leave its root. */
    EXPECT_GUEST(msb_fs_read_file(c, "/../../../etc/hostname", T_MS, &data, ERR));
    CHECK(data == (msb_bytes *)&data && e == (msb_fs_entry *)&e && list == (msb_fs_entries *)&list);
    EXPECT(MSB_OK, msb_fs_remove(c, "/fs4-file", T_MS, ERR));
    msb_client_free(c);
}

static void test_fs_null_and_utf8_arguments(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_bytes *data = NULL;
    msb_fs_entry *e = NULL;
    msb_fs_entries *list = NULL;
    msb_file_reader *r = NULL;
    msb_file_writer *w = NULL;
    const uint8_t byte = 'x';

    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_read_file(NULL, "/", T_MS, &data, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_read_file(c, NULL, T_MS, &data, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_read_file(c, "/x", T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_read_file(c, BAD_UTF8, T_MS, &data, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_write_file(NULL, "/x", &byte, 1, -1, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_write_file(c, NULL, &byte, 1, -1, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_write_file(c, "/x", NULL, 1, -1, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_write_file(c, BAD_UTF8, &byte, 1, -1, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_mkdir(NULL, "/x", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_mkdir(c, NULL, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_mkdir(c, BAD_UTF8, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_remove(NULL, "/x", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_remove(c, NULL, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_remove(c, BAD_UTF8, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_remove_dir(NULL, "/x", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_remove_dir(c, NULL, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_remove_dir(c, BAD_UTF8, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_copy(NULL, "/a", "/b", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_copy(c, NULL, "/b", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_copy(c, "/a", NULL, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_copy(c, BAD_UTF8, "/b", T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_copy(c, "/a", BAD_UTF8, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_rename(NULL, "/a", "/b", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_rename(c, NULL, "/b", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_rename(c, "/a", NULL, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_rename(c, BAD_UTF8, "/b", T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_rename(c, "/a", BAD_UTF8, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_stat(NULL, "/", T_MS, &e, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_stat(c, NULL, T_MS, &e, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_stat(c, "/", T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_stat(c, BAD_UTF8, T_MS, &e, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_list(NULL, "/", T_MS, &list, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_list(c, NULL, T_MS, &list, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_list(c, "/", T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_list(c, BAD_UTF8, T_MS, &list, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_reader_open(NULL, "/x", T_MS, &r, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_reader_open(c, NULL, T_MS, &r, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_reader_open(c, "/x", T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_file_reader_open(c, BAD_UTF8, T_MS, &r, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_writer_open(NULL, "/x", 0644, T_MS, &w, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_writer_open(c, NULL, 0644, T_MS, &w, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_writer_open(c, "/x", 0644, T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_file_writer_open(c, BAD_UTF8, 0644, T_MS, &w, ERR));
    CHECK(!data && !e && !list && !r && !w);

    msb_bytes *chunk = NULL;
    int fd = -1;
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_reader_next(NULL, 0, &chunk, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_reader_readiness_fd(NULL, &fd, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_writer_write(NULL, &byte, 1, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_writer_finish(NULL, T_MS, ERR));
    msb_file_reader_free(NULL);
    msb_file_writer_free(NULL);

    CHECK_STR(msb_fs_entry_path(NULL), "");
    CHECK_INT(msb_fs_entry_kind(NULL), MSB_FS_KIND_OTHER);
    CHECK_INT(msb_fs_entry_size(NULL), 0);
    CHECK_INT(msb_fs_entry_mode(NULL), 0);
    int64_t mtime = 42;
    CHECK(!msb_fs_entry_mtime(NULL, &mtime));
    CHECK_INT(mtime, 42);
    msb_fs_entry_free(NULL);
    CHECK_INT(msb_fs_entries_len(NULL), 0);
    CHECK(msb_fs_entries_get(NULL, 0) == NULL);
    msb_fs_entries_free(NULL);
    msb_client_free(c);
}

static void test_whole_file_larger_than_a_chunk(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    size_t size = (5 << 20) + 123; /* spans two 3 MiB chunks, unaligned */
    uint8_t *content = malloc(size);
    REQUIRE(content);
    fill_pattern(content, size, 7);
    if (EXPECT(MSB_OK, msb_fs_write_file(c, "/fs5.bin", content, size, 0600, T_MS, ERR))) {
        msb_bytes *back = NULL;
        if (EXPECT(MSB_OK, msb_fs_read_file(c, "/fs5.bin", T_MS, &back, ERR))) {
            CHECK_INT(msb_bytes_len(back), size);
            CHECK(msb_bytes_len(back) == size && memcmp(msb_bytes_data(back), content, size) == 0);
        }
        msb_bytes_free(back);
        EXPECT(MSB_OK, msb_fs_remove(c, "/fs5.bin", T_MS, ERR));
    }
    free(content);
    msb_client_free(c);
}

static void test_file_reader_streams_chunks(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    size_t size = 7 << 20;
    uint8_t *content = malloc(size);
    REQUIRE(content);
    fill_pattern(content, size, 11);
    char p[512];
    host_path(p, sizeof p, "/fs6.bin");
    FILE *f = fopen(p, "wb");
    REQUIRE(f);
    CHECK(fwrite(content, 1, size, f) == size);
    fclose(f);

    msb_file_reader *r = NULL;
    REQUIRE_OK(msb_file_reader_open(c, "/fs6.bin", T_MS, &r, ERR));
    int fd = -1;
    EXPECT(MSB_OK, msb_file_reader_readiness_fd(r, &fd, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_reader_readiness_fd(r, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_reader_next(r, 0, NULL, ERR));
    size_t got = 0, chunks = 0;
    bool same = true;
    for (;;) {
        /* Driven by the readiness fd, pulling without blocking. */
        CHECK(fd_readable(fd, T_MS));
        msb_bytes *chunk = NULL;
        msb_status st = msb_file_reader_next(r, 0, &chunk, NULL);
        if (st == MSB_ENDED) break;
        if (st == MSB_NOTHING_YET) {
            test_fail(__FILE__, __LINE__, "readiness fd was readable but next returned NOTHING_YET");
            break;
        }
        if (st != MSB_OK) {
            test_fail(__FILE__, __LINE__, "msb_file_reader_next returned %d", st);
            break;
        }
        size_t n = msb_bytes_len(chunk);
        CHECK(n > 0 && n <= 3 << 20);
        if (got + n > size || memcmp(msb_bytes_data(chunk), content + got, n) != 0) same = false;
        got += n;
        chunks++;
        msb_bytes_free(chunk);
    }
    CHECK_INT(got, size);
    CHECK(same);
    CHECK(chunks >= 3);
    msb_bytes *chunk = (msb_bytes *)&chunk;
    EXPECT(MSB_ENDED, msb_file_reader_next(r, 0, &chunk, ERR));
    CHECK(chunk == (msb_bytes *)&chunk);
    msb_file_reader_free(r);

    /* A missing file: on legacy relays the open is only the request and
     * the failure arrives as the guest's error on the first pull; from
     * generation 2 on, opening the handle already fails. */
    r = NULL;
    if (msb_client_generation(c) < 2) {
        if (EXPECT(MSB_OK, msb_file_reader_open(c, "/fs6-missing", T_MS, &r, ERR)))
            EXPECT(MSB_ERR_NOT_FOUND, msb_file_reader_next(r, T_MS, &chunk, ERR));
    } else {
        EXPECT(MSB_ERR_NOT_FOUND, msb_file_reader_open(c, "/fs6-missing", T_MS, &r, ERR));
    }
    msb_file_reader_free(r);

    /* Abandoning a reader half way leaves the client usable. */
    r = NULL;
    if (EXPECT(MSB_OK, msb_file_reader_open(c, "/fs6.bin", T_MS, &r, ERR))) {
        chunk = NULL;
        EXPECT(MSB_OK, msb_file_reader_next(r, T_MS, &chunk, ERR));
        msb_bytes_free(chunk);
    }
    msb_file_reader_free(r);
    EXPECT(MSB_OK, msb_fs_remove(c, "/fs6.bin", T_MS, ERR));
    free(content);
    msb_client_free(c);
}

static void test_file_writer_streams_and_finishes(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_file_writer *w = NULL;
    REQUIRE_OK(msb_file_writer_open(c, "/fs7.txt", 0600, T_MS, &w, ERR));
    EXPECT(MSB_OK, msb_file_writer_write(w, (const uint8_t *)"first ", 6, T_MS, ERR));
    EXPECT(MSB_OK, msb_file_writer_write(w, NULL, 0, T_MS, ERR)); /* zero length: nothing */
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_writer_write(w, NULL, 3, T_MS, ERR));
    EXPECT(MSB_OK, msb_file_writer_write(w, (const uint8_t *)"second", 6, T_MS, ERR));
    EXPECT(MSB_OK, msb_file_writer_finish(w, T_MS, ERR));
    EXPECT(MSB_ERR_WRONG_STATE, msb_file_writer_write(w, (const uint8_t *)"late", 4, T_MS, ERR));
    EXPECT(MSB_ERR_WRONG_STATE, msb_file_writer_finish(w, T_MS, ERR));
    msb_file_writer_free(w);
    size_t len = 0;
    uint8_t *got = slurp_host("/fs7.txt", &len);
    CHECK_MEM(got, len, "first second");
    free(got);
    mode_t mode = 0;
    CHECK(host_exists("/fs7.txt", &mode) && (mode & 07777) == 0600);

    /* A large file through many writes, crossing chunk boundaries. */
    size_t size = 4 << 20;
    uint8_t *content = malloc(size);
    REQUIRE(content);
    fill_pattern(content, size, 3);
    w = NULL;
    if (EXPECT(MSB_OK, msb_file_writer_open(c, "/fs7.bin", -1, T_MS, &w, ERR))) {
        for (size_t off = 0; off < size; off += 700001)
            EXPECT(MSB_OK, msb_file_writer_write(w, content + off, size - off < 700001 ? size - off : 700001,
                                                 T_MS, ERR));
        EXPECT(MSB_OK, msb_file_writer_finish(w, T_MS, ERR));
    }
    msb_file_writer_free(w);
    got = slurp_host("/fs7.bin", &len);
    CHECK(got && len == size && memcmp(got, content, size) == 0);
    free(got);
    free(content);

    /* Writing where the guest cannot create the file fails at finish at
     * the latest, with the guest's message. */
    w = NULL;
    msb_error *err = NULL;
    msb_status st = msb_file_writer_open(c, "/fs7-no-dir/x", 0644, T_MS, &w, &err);
    if (st == MSB_OK) {
        st = msb_file_writer_write(w, (const uint8_t *)"x", 1, T_MS, NULL);
        st = msb_file_writer_finish(w, T_MS, &err);
    }
    CHECK_INT(st, MSB_ERR_NOT_FOUND);
    CHECK(err && msb_error_code(err) == MSB_ERR_NOT_FOUND);
    msb_error_free(err);
    msb_file_writer_free(w);

    /* Freeing without finishing abandons the write; the client goes on. */
    w = NULL;
    if (EXPECT(MSB_OK, msb_file_writer_open(c, "/fs7-abandoned", 0644, T_MS, &w, ERR)))
        EXPECT(MSB_OK, msb_file_writer_write(w, (const uint8_t *)"part", 4, T_MS, ERR));
    msb_file_writer_free(w);
    EXPECT(MSB_OK, msb_fs_remove(c, "/fs7.txt", T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_remove(c, "/fs7.bin", T_MS, ERR));
    msb_client_free(c);
}

const struct test_case fs_tests[] = {
    {"fs write, read, stat, mkdir, empty file, overwrite", test_write_read_stat},
    {"fs list with kinds, sizes, modes; symlinks not followed", test_list_and_symlink},
    {"fs copy, rename, remove, recursive remove_dir", test_copy_rename_remove},
    {"fs failures carry the guest's message; missing paths are MSB_ERR_NOT_FOUND", test_guest_errors},
    {"fs calls reject NULL and invalid UTF-8", test_fs_null_and_utf8_arguments},
    {"fs whole-file write/read of 5 MiB", test_whole_file_larger_than_a_chunk},
    {"file reader streams 7 MiB via readiness fd; missing file", test_file_reader_streams_chunks},
    {"file writer streams; write after finish is WRONG_STATE", test_file_writer_streams_and_finishes},
    {NULL, NULL},
};
