/* The client handle and the raw message tier: ready data, ids, counters,
 * send / request / subscribe with hand-built CBOR, readiness fds. */
#include "test.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAD_UTF8 "core.\xff\xfe"
#define LEGACY_ID_STEP 268435455u

/* core.fs.request {"op": {"Stat": {"path": "/", "follow_symlink": false}}},
 * encoded by hand: the generation-2 shape, which 0.3.x agents read too
 * (they ignore the extra key and never follow links anyway). */
static const uint8_t stat_root[] = {0xa1, 0x62, 'o', 'p', 0xa1, 0x64, 'S', 't', 'a', 't', 0xa2, 0x64, 'p', 'a', 't', 'h',
                                    0x61, '/',  0x6e, 'f', 'o', 'l', 'l', 'o', 'w', '_', 's', 'y', 'm', 'l', 'i', 'n',
                                    'k',  0xf4};
#define STAT_ROOT_LEN sizeof stat_root

/* The client's id range, [start, end). */
struct id_range {
    uint32_t start, end;
};

static struct id_range id_range_of(const msb_client *c) {
    struct id_range r = {0, 0};
    CHECK_INT(msb_client_id_range(c, &r.start, &r.end), MSB_OK);
    return r;
}

static bool in_range(struct id_range r, uint32_t id) { return r.start <= id && id < r.end; }

/* {data: h''}: a well-formed stdin payload. An agent that cannot decode a
 * payload may exit and take the sandbox (and every test's relay) with it. */
static const uint8_t empty_data[] = {0xa1, 0x64, 'd', 'a', 't', 'a', 0x40};

/* Checks that a core.fs.response to the Stat above reports ok: true. */
static void check_stat_response(const msb_message *m, uint32_t want_id) {
    CHECK_STR(msb_message_type(m), "core.fs.response");
    CHECK(msb_message_flags(m) & MSB_FLAG_TERMINAL);
    if (want_id) CHECK_INT(msb_message_id(m), want_id);
    size_t len = 0;
    const uint8_t *p = msb_message_payload(m, &len);
    bool ok = false;
    CHECK(p && cbor_map_get_bool(p, len, "ok", &ok) && ok);
}

static void test_ready_timings_and_payload(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_ready_timings t;
    memset(&t, 0, sizeof t);
    CHECK_INT(msb_client_ready_timings(c, &t), MSB_OK);
    CHECK_INT(msb_client_ready_timings(NULL, &t), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_client_ready_timings(c, NULL), MSB_ERR_NULL_POINTER);

    /* The raw payload is the {boot_time_ns, init_time_ns, ready_time_ns} map
     * the timings were decoded from. */
    msb_bytes *payload = NULL;
    CHECK_INT(msb_client_ready_payload(c, &payload), MSB_OK);
    CHECK_INT(msb_client_ready_payload(NULL, &payload), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_client_ready_payload(c, NULL), MSB_ERR_NULL_POINTER);
    REQUIRE(payload);
    const uint8_t *p = msb_bytes_data(payload);
    size_t len = msb_bytes_len(payload);
    uint64_t boot = 0, init = 0, ready = 0;
    CHECK(cbor_map_get_uint(p, len, "boot_time_ns", &boot));
    CHECK(cbor_map_get_uint(p, len, "init_time_ns", &init));
    CHECK(cbor_map_get_uint(p, len, "ready_time_ns", &ready));
    CHECK_INT(t.boot_time_ns, boot);
    CHECK_INT(t.init_time_ns, init);
    CHECK_INT(t.ready_time_ns, ready);
    CHECK(t.ready_time_ns > 0);
    msb_bytes_free(payload);
    msb_client_free(c);
}

static void test_id_offset_and_alloc_range(void) {
    msb_client *a = connect_shared();
    msb_client *b = connect_shared();
    REQUIRE(a && b);
    struct id_range ra = id_range_of(a), rb = id_range_of(b);
    uint32_t off_a = msb_client_id_offset(a), off_b = msb_client_id_offset(b);
    CHECK_INT(off_a, ra.start - 1);
    CHECK_INT(off_b, rb.start - 1);
    if (msb_client_is_legacy(a)) {
        /* 16 slots of 268435455 ids; the slot's first id is not usable. */
        CHECK_INT(off_a % LEGACY_ID_STEP, 0);
        CHECK_INT(off_b % LEGACY_ID_STEP, 0);
        CHECK(off_a / LEGACY_ID_STEP < 16 && off_b / LEGACY_ID_STEP < 16);
        CHECK_INT((uint64_t)ra.end - ra.start, LEGACY_ID_STEP - 1);
    } else {
        /* 128 slots of 33554431 ids, from slot * step + 1 up to the next
         * slot's start, exclusive. */
        CHECK_INT(off_a % 33554431u, 0);
        CHECK(off_a / 33554431u < 128 && off_b / 33554431u < 128);
        CHECK_INT((uint64_t)ra.end - ra.start, 33554430u);
    }
    CHECK(off_a != off_b); /* each connection holds its own slot */
    CHECK(ra.end <= rb.start || rb.end <= ra.start);
    CHECK_INT(msb_client_id_offset(NULL), 0);
    CHECK_INT(msb_client_alloc_id(NULL), 0);
    uint32_t s_out = 7, e_out = 7;
    CHECK_INT(msb_client_id_range(NULL, &s_out, &e_out), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_client_id_range(a, NULL, &e_out), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_client_id_range(a, &s_out, NULL), MSB_ERR_NULL_POINTER);
    CHECK(s_out == 7 && e_out == 7);

    /* Allocated ids lie in the range and skip subscribed ones. */
    msb_subscription *subs[8];
    for (int i = 0; i < 8; i++) {
        uint32_t id = msb_client_alloc_id(a);
        CHECK(in_range(ra, id));
        subs[i] = NULL;
        EXPECT(MSB_OK, msb_client_subscribe(a, id, &subs[i], ERR));
        CHECK_INT(msb_subscription_id(subs[i]), id);
        for (int j = 0; j < i; j++) CHECK(msb_subscription_id(subs[j]) != id);
    }
    for (int i = 0; i < 8; i++) msb_subscription_free(subs[i]);
    msb_client_free(a);
    msb_client_free(b);
}

static void test_counters_struct_size(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_counters before = {.struct_size = sizeof(msb_counters)};
    CHECK_INT(msb_client_counters(c, &before), MSB_OK);
    CHECK_INT(before.struct_size, sizeof(msb_counters));
    msb_message *m = NULL;
    EXPECT(MSB_OK, msb_client_request(c, "core.fs.request", stat_root, STAT_ROOT_LEN, T_MS, &m, ERR));
    msb_message_free(m);
    msb_counters after = {.struct_size = sizeof(msb_counters)};
    CHECK_INT(msb_client_counters(c, &after), MSB_OK);
    CHECK(after.frames_received >= before.frames_received + 1);
    CHECK(after.bytes_received > before.bytes_received);
    CHECK_INT(after.bytes_queued, 0); /* the reply was pulled */
    CHECK_INT(after.dropped_out_of_range, 0);

    /* An older caller's smaller struct: only the fields that fit are written. */
    unsigned char raw[sizeof(msb_counters) + 32];
    memset(raw, 0xAB, sizeof raw);
    msb_counters *small = (msb_counters *)raw;
    size_t small_size = offsetof(msb_counters, bytes_received);
    small->struct_size = small_size;
    CHECK_INT(msb_client_counters(c, small), MSB_OK);
    CHECK_INT(small->struct_size, small_size);
    CHECK(small->frames_received >= after.frames_received);
    for (size_t i = small_size; i < sizeof raw; i++)
        if (raw[i] != 0xAB) {
            test_fail(__FILE__, __LINE__, "byte %zu beyond struct_size %zu was written", i, small_size);
            break;
        }

    /* A newer caller's bigger struct: the known part is filled and
     * struct_size reports how much that is. */
    memset(raw, 0xAB, sizeof raw);
    small->struct_size = sizeof raw;
    CHECK_INT(msb_client_counters(c, small), MSB_OK);
    CHECK_INT(small->struct_size, sizeof(msb_counters));
    for (size_t i = sizeof(msb_counters); i < sizeof raw; i++)
        if (raw[i] != 0xAB) {
            test_fail(__FILE__, __LINE__, "byte %zu beyond sizeof(msb_counters) was written", i);
            break;
        }

    msb_counters unset = {.struct_size = 0};
    CHECK_INT(msb_client_counters(c, &unset), MSB_ERR_INVALID_ARGUMENT);
    CHECK_INT(msb_client_counters(NULL, &after), MSB_ERR_NULL_POINTER);
    CHECK_INT(msb_client_counters(c, NULL), MSB_ERR_NULL_POINTER);
    msb_client_free(c);
}

static void test_raw_request_stat(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    msb_message *m = NULL;
    REQUIRE_OK(msb_client_request(c, "core.fs.request", stat_root, STAT_ROOT_LEN, T_MS, &m, ERR));
    check_stat_response(m, 0);
    CHECK(in_range(id_range_of(c), msb_message_id(m)));
    msb_message_free(m);

    msb_message *untouched = (msb_message *)&untouched;
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_request(NULL, "core.fs.request", stat_root, STAT_ROOT_LEN, T_MS, &m, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_request(c, NULL, stat_root, STAT_ROOT_LEN, T_MS, &untouched, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_request(c, "core.fs.request", NULL, 18, T_MS, &untouched, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_request(c, "core.fs.request", stat_root, STAT_ROOT_LEN, T_MS, NULL, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_client_request(c, BAD_UTF8, stat_root, STAT_ROOT_LEN, T_MS, &untouched, ERR));
    CHECK(untouched == (msb_message *)&untouched);

    /* No reply ever comes to a stray stdin frame: the request times out. */
    int64_t t0 = now_ms();
    EXPECT(MSB_ERR_TIMEOUT,
           msb_client_request(c, "core.exec.stdin", empty_data, sizeof empty_data, 200, &untouched, ERR));
    CHECK(now_ms() - t0 >= 150);
    CHECK(untouched == (msb_message *)&untouched);

    /* The message accessors accept NULL. */
    CHECK_INT(msb_message_id(NULL), 0);
    CHECK_INT(msb_message_flags(NULL), 0);
    CHECK_STR(msb_message_type(NULL), "");
    size_t len = 99;
    CHECK(msb_message_payload(NULL, &len) == NULL);
    msb_message_free(NULL);
    msb_client_free(c);
}

static void test_raw_send_subscribe_and_ended(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    uint32_t id = msb_client_alloc_id(c);
    msb_subscription *sub = NULL;
    REQUIRE_OK(msb_client_subscribe(c, id, &sub, ERR));
    msb_message *m = NULL;
    CHECK_INT(msb_subscription_next(sub, 0, &m, NULL), MSB_NOTHING_YET);
    REQUIRE_OK(msb_client_send(c, "core.fs.request", id, stat_root, STAT_ROOT_LEN, T_MS, ERR));
    REQUIRE_OK(msb_subscription_next(sub, T_MS, &m, ERR));
    check_stat_response(m, id);
    size_t len = 0;
    CHECK(msb_message_payload(m, NULL) == msb_message_payload(m, &len)); /* len_out optional */
    msb_message_free(m);
    /* After the terminal message the stream stays ended, blocking or not. */
    msb_message *untouched = (msb_message *)&untouched;
    EXPECT(MSB_ENDED, msb_subscription_next(sub, 0, &untouched, ERR));
    EXPECT(MSB_ENDED, msb_subscription_next(sub, T_MS, &untouched, ERR));
    CHECK(untouched == (msb_message *)&untouched);
    msb_subscription_free(sub);
    msb_client_free(c);
}

static void test_send_errors_and_zero_length(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    uint32_t id = msb_client_alloc_id(c);
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_send(NULL, "core.fs.request", id, stat_root, STAT_ROOT_LEN, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_send(c, NULL, id, stat_root, STAT_ROOT_LEN, T_MS, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_send(c, "core.fs.request", id, NULL, 18, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_UTF8, msb_client_send(c, BAD_UTF8, id, stat_root, STAT_ROOT_LEN, T_MS, ERR));

    size_t big = (size_t)MSB_MAX_FRAME_SIZE + 1;
    uint8_t *payload = calloc(1, big);
    REQUIRE(payload);
    EXPECT(MSB_ERR_TOO_LARGE, msb_client_send(c, "core.exec.stdin", id, payload, big, T_MS, ERR));
    /* Exactly 4 MiB of payload cannot fit with its envelope either. */
    EXPECT(MSB_ERR_TOO_LARGE, msb_client_send(c, "core.exec.stdin", id, payload, big - 1, T_MS, ERR));
    free(payload);

    /* The relay ignores a stray stdin frame and the connection lives on. */
    EXPECT(MSB_OK, msb_client_send(c, "core.exec.stdin", id, empty_data, sizeof empty_data, T_MS, ERR));
    msb_message *m = NULL;
    EXPECT(MSB_OK, msb_client_request(c, "core.fs.request", stat_root, STAT_ROOT_LEN, T_MS, &m, ERR));
    check_stat_response(m, 0);
    msb_message_free(m);

    /* Ids outside the range, and id 0 for anything but core.shutdown, are
     * refused before anything is sent: current relays disconnect on them. */
    struct id_range r = id_range_of(c);
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_send(c, "core.exec.stdin", 0, NULL, 0, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_send(c, "core.exec.stdin", r.end, NULL, 0, T_MS, ERR));
    EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_send(c, "core.exec.stdin", r.start - 1, NULL, 0, T_MS, ERR));
    /* Types only the guest sends are refused on current relays, whose
     * agent would fail on them; a legacy relay passes everything on. */
    if (!msb_client_is_legacy(c)) {
        EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_send(c, "core.ready", id, NULL, 0, T_MS, ERR));
        EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_send(c, "core.exec.exited", id, NULL, 0, T_MS, ERR));
        msb_message *untouched = (msb_message *)&untouched;
        EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_request(c, "core.fs.response", NULL, 0, T_MS, &untouched, ERR));
        CHECK(untouched == (msb_message *)&untouched);
    }
    /* A type above the negotiated generation: MSB_ERR_UNSUPPORTED. */
    if (msb_client_generation(c) < 6)
        EXPECT(MSB_ERR_UNSUPPORTED, msb_client_send(c, "core.ping", id, NULL, 0, T_MS, ERR));
    if (msb_client_generation(c) < 4)
        EXPECT(MSB_ERR_UNSUPPORTED, msb_client_send(c, "core.tcp.connect", id, NULL, 0, T_MS, ERR));

    msb_client_free(c);

    /* A type this library does not know: refused on a current relay, whose
     * agent dies on it; on a legacy relay it goes out as given (flags 0),
     * with (NULL, 0) as an empty payload, and the agent cannot decode it
     * and exits, ending the sandbox: this takes a relay of its own. */
    struct relay own;
    REQUIRE(relay_start(&own, NULL));
    c = NULL;
    if (EXPECT(MSB_OK, msb_client_connect(own.socket, NULL, &c, ERR))) {
        id = msb_client_alloc_id(c);
        if (msb_client_is_legacy(c)) {
            EXPECT(MSB_OK, msb_client_send(c, "test.unknown.type", id, NULL, 0, T_MS, ERR));
            EXPECT(MSB_ERR_CLOSED,
                   msb_client_request(c, "core.fs.request", stat_root, sizeof stat_root, T_MS, &m, ERR));
        } else {
            EXPECT(MSB_ERR_INVALID_ARGUMENT, msb_client_send(c, "test.unknown.type", id, NULL, 0, T_MS, ERR));
        }
    }
    msb_client_free(c);
    relay_stop(&own, SIGKILL);
}

static void test_subscribe_errors(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    struct id_range r = id_range_of(c);
    uint32_t id = msb_client_alloc_id(c);
    msb_subscription *sub = NULL, *untouched = (msb_subscription *)&untouched;
    REQUIRE_OK(msb_client_subscribe(c, id, &sub, ERR));
    EXPECT(MSB_ERR_ID_UNAVAILABLE, msb_client_subscribe(c, id, &untouched, ERR));
    EXPECT(MSB_ERR_ID_UNAVAILABLE, msb_client_subscribe(c, 0, &untouched, ERR));
    EXPECT(MSB_ERR_ID_UNAVAILABLE, msb_client_subscribe(c, r.end + 7, &untouched, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_subscribe(NULL, id + 1, &untouched, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_client_subscribe(c, id + 1, NULL, ERR));
    CHECK(untouched == (msb_subscription *)&untouched);
    msb_subscription_free(sub);
    sub = NULL;
    if (msb_client_is_legacy(c)) {
        /* Freeing releases the id. */
        EXPECT(MSB_OK, msb_client_subscribe(c, id, &sub, ERR));
    } else {
        /* Current relays take each id once per connection: a used id stays
         * used, and an id beyond the allocator's position can be claimed
         * once (the allocator moves past it). */
        EXPECT(MSB_ERR_ID_UNAVAILABLE, msb_client_subscribe(c, id, &untouched, ERR));
        uint32_t ahead = id + 1000;
        EXPECT(MSB_OK, msb_client_subscribe(c, ahead, &sub, ERR));
        CHECK(msb_client_alloc_id(c) > ahead);
    }

    msb_message *m = NULL;
    int fd = -1;
    CHECK_INT(msb_subscription_id(NULL), 0);
    EXPECT(MSB_ERR_NULL_POINTER, msb_subscription_next(NULL, 0, &m, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_subscription_next(sub, 0, NULL, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_subscription_readiness_fd(NULL, &fd, ERR));
    EXPECT(MSB_ERR_NULL_POINTER, msb_subscription_readiness_fd(sub, NULL, ERR));
    CHECK_INT(fd, -1);
    msb_subscription_free(NULL);
    msb_subscription_free(sub);
    msb_client_free(c);
}

/* Appends {"cmd": cmd, "args": [args...]} as a core.exec.request payload. */
static void build_exec_request(struct cbor_buf *b, const char *cmd, const char *const *args, int nargs) {
    b->len = 0;
    cbor_head(b, 5, 2);
    cbor_text(b, "cmd");
    cbor_text(b, cmd);
    cbor_text(b, "args");
    cbor_head(b, 4, (uint64_t)nargs);
    for (int i = 0; i < nargs; i++) cbor_text(b, args[i]);
}

static void test_raw_exec_message_order(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    uint32_t id = msb_client_alloc_id(c);
    msb_subscription *sub = NULL;
    REQUIRE_OK(msb_client_subscribe(c, id, &sub, ERR));
    struct cbor_buf req;
    const char *args[] = {"-c", "echo one; echo two >&2; echo three; exit 5"};
    build_exec_request(&req, "sh", args, 2);
    REQUIRE_OK(msb_client_send(c, "core.exec.request", id, req.data, req.len, T_MS, ERR));

    /* started, then output, then exited (terminal), then ENDED for good. */
    int n = 0;
    bool saw_exit = false;
    char out[64] = "";
    for (;;) {
        msb_message *m = NULL;
        msb_status st = msb_subscription_next(sub, T_MS, &m, NULL);
        if (st != MSB_OK) {
            CHECK_INT(st, MSB_ENDED);
            break;
        }
        const char *type = msb_message_type(m);
        size_t len = 0;
        const uint8_t *p = msb_message_payload(m, &len);
        CHECK(!saw_exit);
        if (n == 0) CHECK_STR(type, "core.exec.started");
        if (!strcmp(type, "core.exec.stdout")) {
            const uint8_t *data;
            size_t dlen;
            if (cbor_map_get_bytes(p, len, "data", &data, &dlen) && strlen(out) + dlen < sizeof out)
                strncat(out, (const char *)data, dlen);
        }
        if (!strcmp(type, "core.exec.exited")) {
            saw_exit = true;
            CHECK(msb_message_flags(m) & MSB_FLAG_TERMINAL);
            uint64_t code = 0;
            CHECK(cbor_map_get_uint(p, len, "code", &code) && code == 5);
        } else {
            CHECK(!(msb_message_flags(m) & MSB_FLAG_TERMINAL));
        }
        CHECK_INT(msb_message_id(m), id);
        msb_message_free(m);
        n++;
    }
    CHECK(saw_exit);
    CHECK_STR(out, "one\nthree\n");
    msb_message *m = NULL;
    CHECK_INT(msb_subscription_next(sub, 0, &m, NULL), MSB_ENDED);
    msb_subscription_free(sub);
    msb_client_free(c);
}

static void test_subscription_readiness_fd(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    uint32_t id = msb_client_alloc_id(c);
    msb_subscription *sub = NULL;
    REQUIRE_OK(msb_client_subscribe(c, id, &sub, ERR));
    int fd = -1;
    REQUIRE_OK(msb_subscription_readiness_fd(sub, &fd, ERR));
    REQUIRE(fd >= 0);
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    int fd_again = -1;
    EXPECT(MSB_OK, msb_subscription_readiness_fd(sub, &fd_again, ERR));
    CHECK_INT(fd_again, fd);

    /* Nothing queued: not readable. */
    CHECK(!fd_readable(fd, 50));
    msb_message *m = NULL;
    CHECK_INT(msb_subscription_next(sub, 0, &m, NULL), MSB_NOTHING_YET);

    /* A message queued: readable, and stays readable until pulled (level). */
    REQUIRE_OK(msb_client_send(c, "core.fs.request", id, stat_root, STAT_ROOT_LEN, T_MS, ERR));
    CHECK(fd_readable(fd, T_MS));
    CHECK(fd_readable(fd, 0));
    EXPECT(MSB_OK, msb_subscription_next(sub, 0, &m, ERR));
    msb_message_free(m);

    /* Ended: next would return MSB_ENDED, not NOTHING_YET, so still readable. */
    CHECK(fd_readable(fd, 0));
    CHECK_INT(msb_subscription_next(sub, 0, &m, NULL), MSB_ENDED);
    CHECK(fd_readable(fd, 0));
    msb_subscription_free(sub);
    msb_client_free(c);
}

static void test_peer_generation_and_supports(void) {
    msb_client *c = connect_shared();
    REQUIRE(c);
    uint32_t gen = msb_client_generation(c), peer = msb_client_peer_generation(c);
    bool legacy = msb_client_is_legacy(c);
    const char *version = msb_client_agent_version(c);
    REQUIRE(version != NULL);
    CHECK(peer >= 1);
    if (legacy) {
        CHECK_INT(gen, 1);
        CHECK_STR(version, ""); /* 0.3/0.4 agents do not say */
    } else {
        CHECK_INT(gen, peer < 10 ? peer : 10);
        if (gen >= 4) CHECK(version[0] != '\0');
    }
    /* The same pointer until the client is freed. */
    CHECK(msb_client_agent_version(c) == version);

    CHECK(msb_client_supports(c, "core.exec.request"));
    CHECK(msb_client_supports(c, "core.exec.failed"));
    /* Legacy relays get the filesystem in its 0.3.14 shapes. */
    CHECK_INT(msb_client_supports(c, "core.fs.request"), legacy || gen >= 2);
    CHECK_INT(msb_client_supports(c, "core.tcp.connect"), !legacy && gen >= 4);
    CHECK_INT(msb_client_supports(c, "core.error"), !legacy && gen >= 5);
    CHECK_INT(msb_client_supports(c, "core.ping"), !legacy && gen >= 6);
    CHECK_INT(msb_client_supports(c, "core.exec.output.ack"), !legacy && gen >= 10);
    CHECK(!msb_client_supports(c, "core.no.such.type"));
    CHECK(!msb_client_supports(c, ""));
    CHECK(!msb_client_supports(c, BAD_UTF8));
    CHECK(!msb_client_supports(c, NULL));
    CHECK(!msb_client_supports(NULL, "core.exec.request"));

    CHECK_INT(msb_client_generation(NULL), 0);
    CHECK_INT(msb_client_peer_generation(NULL), 0);
    CHECK(!msb_client_is_legacy(NULL));
    CHECK_STR(msb_client_agent_version(NULL), "");
    msb_client_free(c);
}

const struct test_case client_tests[] = {
    {"generations, agent version and supported types", test_peer_generation_and_supports},
    {"ready timings match the raw core.ready payload", test_ready_timings_and_payload},
    {"id offset is a slot boundary; alloc_id stays in range", test_id_offset_and_alloc_range},
    {"counters honour struct_size (smaller, bigger, unset)", test_counters_struct_size},
    {"raw request: hand-built Stat gets core.fs.response", test_raw_request_stat},
    {"raw send + subscribe: reply, then ENDED", test_raw_send_subscribe_and_ended},
    {"send errors: NULL, UTF-8, > 4 MiB; zero-length payloads", test_send_errors_and_zero_length},
    {"subscribe errors and subscription NULL arguments", test_subscribe_errors},
    {"raw exec messages arrive in order and end after terminal", test_raw_exec_message_order},
    {"subscription readiness fd is level-triggered", test_subscription_readiness_fd},
    {NULL, NULL},
};
