/*
 * Generation-2 filesystem calls: stat following links, realpath, readlink,
 * symlink, set-stat, remove-dir with or without recursion, the extra entry
 * metadata, and files open through a guest handle. On a relay below
 * generation 2 (the 0.3.14 profile) every one of them must be refused with
 * MSB_ERR_UNSUPPORTED before anything is sent.
 */
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool has_handles(msb_client *c) { return msb_client_generation(c) >= 2; }

/* Checks `call` failed with `want` and the guest errno `errno_want`. */
#define EXPECT_ERRNO(want, errno_want, call)                                                       \
    do {                                                                                           \
        msb_error *e_ = NULL;                                                                      \
        CHECK_INT((call), want);                                                                   \
        CHECK(e_ != NULL);                                                                         \
        if (e_) {                                                                                  \
            CHECK_INT(msb_error_code(e_), want);                                                   \
            CHECK_INT(msb_error_errno(e_), errno_want);                                            \
        }                                                                                          \
        msb_error_free(e_);                                                                        \
    } while (0)

static void write_host(const char *guest_path, const char *text) {
    char p[512];
    host_path(p, sizeof p, guest_path);
    FILE *f = fopen(p, "wb");
    if (!f) {
        test_fail(__FILE__, __LINE__, "cannot create %s", p);
        return;
    }
    fputs(text, f);
    fclose(f);
}

static bool host_stat(const char *guest_path, struct stat *st) {
    char p[512];
    host_path(p, sizeof p, guest_path);
    return lstat(p, st) == 0;
}

static void test_unsupported_below_generation_two(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (has_handles(c)) {
        /* Nothing to refuse on this relay; the other tests run instead. */
        msb_client_free(c);
        return;
    }
    msb_fs_entry *e = (msb_fs_entry *)&e;
    msb_bytes *b = (msb_bytes *)&b;
    msb_file *f = (msb_file *)&f;
    msb_fs_set_attrs *a = NULL;
    REQUIRE_OK(msb_fs_set_attrs_new(&a, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_fs_stat_follow(c, "/", T_MS, &e, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_fs_realpath(c, "/", T_MS, &b, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_fs_readlink(c, "/x", T_MS, &b, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_fs_symlink(c, "/a", "/b", T_MS, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_fs_set_stat(c, "/x", false, a, T_MS, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_fs_remove_dir_ex(c, "/x", false, T_MS, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_fs_remove_dir_ex(c, "/x", true, T_MS, ERR));
    EXPECT(MSB_ERR_UNSUPPORTED, msb_file_open(c, "/x", MSB_FILE_READ, -1, T_MS, &f, ERR));
    CHECK(e == (msb_fs_entry *)&e && b == (msb_bytes *)&b && f == (msb_file *)&f);
    /* The message names what is missing and the generations. */
    msb_error *err = NULL;
    msb_fs_stat_follow(c, "/", T_MS, &e, &err);
    CHECK(err && strstr(msb_error_message(err), "generation 2") != NULL);
    msb_error_free(err);
    /* The connection is untouched: today's calls still work. */
    msb_fs_entry *root = NULL;
    if (EXPECT(MSB_OK, msb_fs_stat(c, "/", T_MS, &root, ERR))) {
        CHECK_INT(msb_fs_entry_kind(root), MSB_FS_KIND_DIR);
        CHECK_INT(msb_fs_entry_uid(root), 0);
        int64_t t = -1;
        CHECK(!msb_fs_entry_atime(root, &t));
        CHECK_INT(t, -1);
    }
    msb_fs_entry_free(root);
    CHECK_INT(msb_client_open_files(c), 0);
    msb_fs_set_attrs_free(a);
    msb_client_free(c);
}

static void test_links_and_paths(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_handles(c)) {
        msb_client_free(c);
        return;
    }
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/h1/dir", T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_write_file(c, "/h1/dir/target.txt", (const uint8_t *)"12345", 5, 0640, T_MS, ERR));

    /* symlink, and a second one at the same place is MSB_ERR_EXISTS (EEXIST). */
    EXPECT(MSB_OK, msb_fs_symlink(c, "dir/target.txt", "/h1/link", T_MS, ERR));
    EXPECT_ERRNO(MSB_ERR_EXISTS, 17, msb_fs_symlink(c, "dir/target.txt", "/h1/link", T_MS, &e_));
    struct stat st;
    CHECK(host_stat("/h1/link", &st) && S_ISLNK(st.st_mode));

    /* stat describes the link, stat_follow what it points at. */
    msb_fs_entry *e = NULL;
    if (EXPECT(MSB_OK, msb_fs_stat(c, "/h1/link", T_MS, &e, ERR)))
        CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_SYMLINK);
    msb_fs_entry_free(e);
    e = NULL;
    if (EXPECT(MSB_OK, msb_fs_stat_follow(c, "/h1/link", T_MS, &e, ERR))) {
        CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_FILE);
        CHECK_INT(msb_fs_entry_size(e), 5);
        CHECK_INT(msb_fs_entry_mode(e) & 07777, 0640);
        CHECK(host_stat("/h1/dir/target.txt", &st));
        CHECK_INT(msb_fs_entry_uid(e), st.st_uid);
        CHECK_INT(msb_fs_entry_gid(e), st.st_gid);
        int64_t atime = -1, mtime = -1;
        CHECK(msb_fs_entry_atime(e, &atime));
        CHECK_INT(atime, st.st_atime);
        CHECK(msb_fs_entry_mtime(e, &mtime));
        CHECK_INT(mtime, st.st_mtime);
        CHECK(!msb_fs_entry_atime(e, NULL));
    }
    msb_fs_entry_free(e);

    /* readlink gives the stored text, realpath the resolved guest path. */
    msb_bytes *p = NULL;
    if (EXPECT(MSB_OK, msb_fs_readlink(c, "/h1/link", T_MS, &p, ERR))) {
        CHECK_MEM(msb_bytes_data(p), msb_bytes_len(p), "dir/target.txt");
        CHECK_STR((const char *)msb_bytes_data(p), "dir/target.txt");
    }
    msb_bytes_free(p);
    p = NULL;
    if (EXPECT(MSB_OK, msb_fs_realpath(c, "/h1/./link", T_MS, &p, ERR)))
        CHECK_STR((const char *)msb_bytes_data(p), "/h1/dir/target.txt");
    msb_bytes_free(p);

    /* Errors carry the guest errno: a missing path, a link that dangles,
     * readlink of a regular file (EINVAL). */
    p = (msb_bytes *)&p;
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 2, msb_fs_realpath(c, "/h1/missing", T_MS, &p, &e_));
    EXPECT(MSB_OK, msb_fs_symlink(c, "/h1/nowhere", "/h1/dangling", T_MS, ERR));
    e = (msb_fs_entry *)&e;
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 2, msb_fs_stat_follow(c, "/h1/dangling", T_MS, &e, &e_));
    EXPECT_ERRNO(MSB_ERR_GUEST, 22, msb_fs_readlink(c, "/h1/dir/target.txt", T_MS, &p, &e_));
    CHECK(p == (msb_bytes *)&p && e == (msb_fs_entry *)&e);

    /* Argument errors. */
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_stat_follow(NULL, "/", T_MS, &e, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_stat_follow(c, NULL, T_MS, &e, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_stat_follow(c, "/", T_MS, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_realpath(c, "/", T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_fs_readlink(c, "/bad\x80", T_MS, &p, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_symlink(c, NULL, "/h1/x", T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_symlink(c, "/a", NULL, T_MS, ERR));
    CHECK_INT(msb_fs_entry_uid(NULL), 0);
    CHECK_INT(msb_fs_entry_gid(NULL), 0);
    CHECK(!msb_fs_entry_atime(NULL, NULL));
    msb_client_free(c);
}

static void test_set_stat(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_handles(c)) {
        msb_client_free(c);
        return;
    }
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/h2", T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_write_file(c, "/h2/f", (const uint8_t *)"0123456789", 10, 0644, T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_symlink(c, "f", "/h2/l", T_MS, ERR));

    msb_fs_set_attrs *a = NULL;
    REQUIRE_OK(msb_fs_set_attrs_new(&a, ERR));
    EXPECT(MSB_OK, msb_fs_set_attrs_mode(a, 0600, ERR));
    EXPECT(MSB_OK, msb_fs_set_attrs_size(a, 4, ERR));
    EXPECT(MSB_OK, msb_fs_set_attrs_atime(a, 1000000000, ERR));
    EXPECT(MSB_OK, msb_fs_set_attrs_mtime(a, 1200000000, ERR));
    /* Root may give the file away, which shows the ids were sent; others
     * can only name their own. */
    uid_t uid = getuid() == 0 ? 1234 : getuid();
    gid_t gid = getuid() == 0 ? 4321 : getgid();
    EXPECT(MSB_OK, msb_fs_set_attrs_uid(a, uid, ERR));
    EXPECT(MSB_OK, msb_fs_set_attrs_gid(a, gid, ERR));
    /* Through the link, following it: the file changes. */
    EXPECT(MSB_OK, msb_fs_set_stat(c, "/h2/l", true, a, T_MS, ERR));
    struct stat st;
    if (host_stat("/h2/f", &st)) {
        CHECK_INT(st.st_mode & 07777, 0600);
        CHECK_INT(st.st_size, 4);
        CHECK_INT(st.st_atime, 1000000000);
        CHECK_INT(st.st_mtime, 1200000000);
        CHECK_INT(st.st_uid, uid);
        CHECK_INT(st.st_gid, gid);
    } else {
        CHECK(!"host stat of /h2/f");
    }
    /* The guest reports the new owner and times on its entries. */
    msb_fs_entry *e = NULL;
    if (EXPECT(MSB_OK, msb_fs_stat(c, "/h2/f", T_MS, &e, ERR))) {
        CHECK_INT(msb_fs_entry_uid(e), uid);
        CHECK_INT(msb_fs_entry_gid(e), gid);
        int64_t t = 0;
        CHECK(msb_fs_entry_atime(e, &t) && t == 1000000000);
        CHECK(msb_fs_entry_mtime(e, &t) && t == 1200000000);
    }
    msb_fs_entry_free(e);

    /* An empty builder changes nothing; only the fields set are sent. */
    msb_fs_set_attrs *only_mode = NULL;
    REQUIRE_OK(msb_fs_set_attrs_new(&only_mode, ERR));
    EXPECT(MSB_OK, msb_fs_set_stat(c, "/h2/f", false, only_mode, T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_set_attrs_mode(only_mode, 0640, ERR));
    EXPECT(MSB_OK, msb_fs_set_stat(c, "/h2/f", false, only_mode, T_MS, ERR));
    if (host_stat("/h2/f", &st)) {
        CHECK_INT(st.st_mode & 07777, 0640);
        CHECK_INT(st.st_size, 4);
        CHECK_INT(st.st_mtime, 1200000000);
    }

    /* Builder errors. */
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_fs_set_attrs_mode(a, 010000, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_attrs_mode(NULL, 0600, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_attrs_size(NULL, 1, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_attrs_atime(NULL, 1, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_attrs_mtime(NULL, 1, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_attrs_uid(NULL, 1, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_attrs_gid(NULL, 1, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_attrs_new(NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_set_stat(c, "/h2/f", false, NULL, T_MS, ERR));
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 2, msb_fs_set_stat(c, "/h2/missing", false, a, T_MS, &e_));
    msb_fs_set_attrs_free(only_mode);
    msb_fs_set_attrs_free(a);
    msb_fs_set_attrs_free(NULL);
    msb_client_free(c);
}

static void test_remove_dir_ex(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_handles(c)) {
        msb_client_free(c);
        return;
    }
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/h3/full/sub", T_MS, ERR));
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/h3/empty", T_MS, ERR));
    /* Not recursive: a directory with entries stays (ENOTEMPTY, 39). */
    EXPECT_ERRNO(MSB_ERR_GUEST, 39, msb_fs_remove_dir_ex(c, "/h3/full", false, T_MS, &e_));
    struct stat st;
    CHECK(host_stat("/h3/full/sub", &st));
    EXPECT(MSB_OK, msb_fs_remove_dir_ex(c, "/h3/empty", false, T_MS, ERR));
    CHECK(!host_stat("/h3/empty", &st));
    EXPECT(MSB_OK, msb_fs_remove_dir_ex(c, "/h3/full", true, T_MS, ERR));
    CHECK(!host_stat("/h3/full", &st));
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 2, msb_fs_remove_dir_ex(c, "/h3/full", true, T_MS, &e_));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_remove_dir_ex(c, NULL, true, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_fs_remove_dir_ex(NULL, "/h3", true, T_MS, ERR));
    msb_client_free(c);
}

static void test_file_handles(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_handles(c)) {
        msb_client_free(c);
        return;
    }
    EXPECT(MSB_OK, msb_fs_mkdir(c, "/h4", T_MS, ERR));
    msb_file *f = (msb_file *)&f;
    /* Missing without CREATE; bad flags and modes. */
    EXPECT_ERRNO(MSB_ERR_NOT_FOUND, 2, msb_file_open(c, "/h4/new", MSB_FILE_READ, -1, T_MS, &f, &e_));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_file_open(c, "/h4/new", 0, -1, T_MS, &f, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_file_open(c, "/h4/new", MSB_FILE_CREATE, -1, T_MS, &f, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_file_open(c, "/h4/new", MSB_FILE_READ | 0x100, -1, T_MS, &f, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_file_open(c, "/h4/new", MSB_FILE_WRITE, 010000, T_MS, &f, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_open(c, "/h4/new", MSB_FILE_READ, -1, T_MS, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_open(NULL, "/h4/new", MSB_FILE_READ, -1, T_MS, &f, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_open(c, NULL, MSB_FILE_READ, -1, T_MS, &f, ERR));
    CHECK(f == (msb_file *)&f);
    CHECK_INT(msb_client_open_files(c), 0);

    f = NULL;
    REQUIRE_OK(msb_file_open(c, "/h4/new", MSB_FILE_READ | MSB_FILE_WRITE | MSB_FILE_CREATE, 0600, T_MS, &f, ERR));
    CHECK_INT(msb_client_open_files(c), 1);
    struct stat st;
    CHECK(host_stat("/h4/new", &st) && (st.st_mode & 07777) == 0600);

    /* Writes at offsets, a hole in between reads as zeros. */
    EXPECT(MSB_OK, msb_file_write_at(f, 0, (const uint8_t *)"hello", 5, T_MS, ERR));
    EXPECT(MSB_OK, msb_file_write_at(f, 8, (const uint8_t *)"world", 5, T_MS, ERR));
    EXPECT(MSB_OK, msb_file_write_at(f, 1, (const uint8_t *)"E", 1, T_MS, ERR));
    EXPECT(MSB_OK, msb_file_write_at(f, 3, NULL, 0, T_MS, ERR));
    msb_bytes *b = NULL;
    if (EXPECT(MSB_OK, msb_file_read_at(f, 0, 100, T_MS, &b, ERR)))
        CHECK(msb_bytes_len(b) == 13 && memcmp(msb_bytes_data(b), "hEllo\0\0\0world", 13) == 0);
    msb_bytes_free(b);
    b = NULL;
    if (EXPECT(MSB_OK, msb_file_read_at(f, 8, 3, T_MS, &b, ERR)))
        CHECK_MEM(msb_bytes_data(b), msb_bytes_len(b), "wor");
    msb_bytes_free(b);
    /* At and past the end: zero bytes, still MSB_OK. */
    b = NULL;
    if (EXPECT(MSB_OK, msb_file_read_at(f, 13, 10, T_MS, &b, ERR))) CHECK_INT(msb_bytes_len(b), 0);
    msb_bytes_free(b);
    b = NULL;
    if (EXPECT(MSB_OK, msb_file_read_at(f, 1000, 10, T_MS, &b, ERR))) CHECK_INT(msb_bytes_len(b), 0);
    msb_bytes_free(b);
    b = (msb_bytes *)&b;
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_file_read_at(f, 0, (uint64_t)1 << 40, T_MS, &b, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_read_at(f, 0, 1, T_MS, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_read_at(NULL, 0, 1, T_MS, &b, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_write_at(f, 0, NULL, 3, T_MS, ERR));
    CHECK(b == (msb_bytes *)&b);

    /* A write larger than one 3 MiB chunk arrives whole. */
    size_t big = 7 * 1024 * 1024 + 123;
    uint8_t *content = malloc(big);
    REQUIRE(content);
    for (size_t i = 0; i < big; i++) content[i] = (uint8_t)(i * 31 + 7);
    EXPECT(MSB_OK, msb_file_write_at(f, 100, content, big, T_MS, ERR));
    b = NULL;
    if (EXPECT(MSB_OK, msb_file_read_at(f, 100, big, T_MS, &b, ERR)))
        CHECK(msb_bytes_len(b) == big && memcmp(msb_bytes_data(b), content, big) == 0);
    msb_bytes_free(b);
    free(content);

    /* fstat and fset_stat through the handle. */
    msb_fs_entry *e = NULL;
    if (EXPECT(MSB_OK, msb_file_fstat(f, T_MS, &e, ERR))) {
        CHECK_INT(msb_fs_entry_size(e), 100 + big);
        CHECK_INT(msb_fs_entry_kind(e), MSB_FS_KIND_FILE);
    }
    msb_fs_entry_free(e);
    msb_fs_set_attrs *a = NULL;
    REQUIRE_OK(msb_fs_set_attrs_new(&a, ERR));
    EXPECT(MSB_OK, msb_fs_set_attrs_size(a, 5, ERR));
    EXPECT(MSB_OK, msb_file_set_stat(f, a, T_MS, ERR));
    CHECK(host_stat("/h4/new", &st) && st.st_size == 5);
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_set_stat(f, NULL, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_fstat(f, T_MS, NULL, ERR));

    /* Close: confirmed; after it everything is MSB_ERR_WRONG_STATE. */
    EXPECT(MSB_OK, msb_file_close(f, T_MS, ERR));
    CHECK_INT(msb_client_open_files(c), 0);
    b = (msb_bytes *)&b;
    EXPECT(MSB_ERR_WRONG_STATE, msb_file_read_at(f, 0, 1, T_MS, &b, ERR));
    EXPECT(MSB_ERR_WRONG_STATE, msb_file_write_at(f, 0, (const uint8_t *)"x", 1, T_MS, ERR));
    EXPECT(MSB_ERR_WRONG_STATE, msb_file_fstat(f, T_MS, &e, ERR));
    EXPECT(MSB_ERR_WRONG_STATE, msb_file_set_stat(f, a, T_MS, ERR));
    EXPECT(MSB_ERR_WRONG_STATE, msb_file_close(f, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_file_close(NULL, T_MS, ERR));
    msb_file_free(f);
    msb_fs_set_attrs_free(a);

    /* Read-only handles refuse writes (guest error), write-only refuse reads. */
    write_host("/h4/ro", "read only");
    f = NULL;
    if (EXPECT(MSB_OK, msb_file_open(c, "/h4/ro", MSB_FILE_READ, -1, T_MS, &f, ERR))) {
        msb_status st2 = msb_file_write_at(f, 0, (const uint8_t *)"x", 1, T_MS, NULL);
        CHECK(st2 != MSB_OK);
        b = NULL;
        if (EXPECT(MSB_OK, msb_file_read_at(f, 5, 100, T_MS, &b, ERR)))
            CHECK_MEM(msb_bytes_data(b), msb_bytes_len(b), "only");
        msb_bytes_free(b);
    }
    /* Freed while open: closed without waiting; the count drops at once. */
    msb_file_free(f);
    CHECK_INT(msb_client_open_files(c), 0);
    f = NULL;
    if (EXPECT(MSB_OK, msb_file_open(c, "/h4/ro", MSB_FILE_APPEND, -1, T_MS, &f, ERR))) {
        EXPECT(MSB_OK, msb_file_write_at(f, 0, (const uint8_t *)"!", 1, T_MS, ERR));
        b = (msb_bytes *)&b;
        CHECK(msb_file_read_at(f, 0, 1, T_MS, &b, NULL) != MSB_OK);
        CHECK(b == (msb_bytes *)&b);
        EXPECT(MSB_OK, msb_file_close(f, T_MS, ERR));
    }
    msb_file_free(f);
    CHECK(host_stat("/h4/ro", &st) && st.st_size == 10);

    /* CREATE_NEW on an existing file: EEXIST. */
    f = (msb_file *)&f;
    EXPECT_ERRNO(MSB_ERR_EXISTS, 17,
                 msb_file_open(c, "/h4/ro", MSB_FILE_WRITE | MSB_FILE_CREATE_NEW, -1, T_MS, &f, &e_));
    CHECK(f == (msb_file *)&f);
    msb_file_free(NULL);
    CHECK_INT(msb_client_open_files(NULL), 0);
    msb_client_free(c);
}

/* Handles are per connection: another client cannot use them, and they
 * are gone with the connection that opened them. */
static void test_handles_belong_to_their_connection(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_handles(c)) {
        msb_client_free(c);
        return;
    }
    msb_file *f = NULL;
    write_host("/h5", "x");
    if (EXPECT(MSB_OK, msb_file_open(c, "/h5", MSB_FILE_READ, -1, T_MS, &f, ERR))) {
        /* Closing the client makes the file's calls fail, not hang. */
        msb_client_close(c);
        msb_bytes *b = (msb_bytes *)&b;
        EXPECT(MSB_ERR_CLOSED, msb_file_read_at(f, 0, 1, T_MS, &b, ERR));
        EXPECT(MSB_ERR_CLOSED, msb_file_close(f, T_MS, ERR));
    }
    msb_file_free(f);
    msb_client_free(c);
}

/* The guest allows 1024 open handles per connection: the refusal of the
 * next names the limit, and closing one makes room again. */
static void test_handle_limit(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    if (!has_handles(c)) {
        msb_client_free(c);
        return;
    }
    CHECK_INT(MSB_FILE_HANDLE_LIMIT, 1024);
    write_host("/h6", "x");
    msb_file **files = calloc(MSB_FILE_HANDLE_LIMIT, sizeof *files);
    REQUIRE(files);
    size_t opened = 0;
    for (; opened < MSB_FILE_HANDLE_LIMIT; opened++)
        if (msb_file_open(c, "/h6", MSB_FILE_READ, -1, T_MS, &files[opened], NULL) != MSB_OK) break;
    CHECK_INT(opened, MSB_FILE_HANDLE_LIMIT);
    CHECK_INT(msb_client_open_files(c), opened);
    msb_file *extra = NULL;
    msb_error *err = NULL;
    CHECK_INT(msb_file_open(c, "/h6", MSB_FILE_READ, -1, T_MS, &extra, &err), MSB_ERR_GUEST);
    CHECK(err && strstr(msb_error_message(err), "1024") != NULL);
    CHECK(err && strstr(msb_error_message(err), "close files") != NULL);
    msb_error_free(err);
    CHECK_INT(msb_client_open_files(c), opened);
    if (opened > 0) {
        EXPECT(MSB_OK, msb_file_close(files[0], T_MS, ERR));
        if (EXPECT(MSB_OK, msb_file_open(c, "/h6", MSB_FILE_READ, -1, T_MS, &extra, ERR)))
            EXPECT(MSB_OK, msb_file_close(extra, T_MS, ERR));
        msb_file_free(extra);
    }
    for (size_t i = 0; i < opened; i++) msb_file_free(files[i]);
    free(files);
    CHECK_INT(msb_client_open_files(c), 0);
    msb_client_free(c);
}

const struct test_case handles_tests[] = {
    {"generation-2 fs calls are MSB_ERR_UNSUPPORTED below generation 2", test_unsupported_below_generation_two},
    {"symlink, readlink, realpath, stat_follow, uid/gid/atime", test_links_and_paths},
    {"set_stat through the attrs builder", test_set_stat},
    {"remove_dir_ex: empty only, or recursive", test_remove_dir_ex},
    {"file handles: open flags, read_at/write_at, fstat, close, free", test_file_handles},
    {"file handles die with their connection", test_handles_belong_to_their_connection},
    {"file handles: the guest's 1024 limit is named", test_handle_limit},
    {NULL, NULL},
};
