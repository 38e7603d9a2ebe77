/* Unit tests of the IPC codec: every message round trip; truncated,
 * oversized and garbage input. (The socket end: test_peer.c.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/ipc.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char err[512];

/* Pack with fn into a fresh buffer. */
#define PACK(sbuf, call)                                                       \
	do {                                                                   \
		msgpack_packer pk;                                             \
		msgpack_sbuffer_init(&(sbuf));                                 \
		msgpack_packer_init(&pk, &(sbuf), msgpack_sbuffer_write);      \
		assert_int_equal((call), 0);                                   \
	} while (0)

static void feed(struct ipc_reader *r, const void *data, size_t len)
{
	memcpy(ipc_reader_buffer(r, len), data, len);
	ipc_reader_consumed(r, len);
}

/* Decode exactly one message out of buf. */
static void decode_one(const msgpack_sbuffer *buf, struct ipc_message *m,
		       struct ipc_reader **keep)
{
	struct ipc_reader *r = ipc_reader_new(1 << 20);

	feed(r, buf->data, buf->size);
	assert_int_equal(ipc_reader_next(r, m, err, sizeof err), 1);
	*keep = r;
}

/* Pack one message into a fresh buffer. */
#define PACKM(sbuf, msg) PACK(sbuf, ipc_pack(&pk, &(msg)))

static struct ipc_message ws_send(uint64_t conn, uint64_t seq, const char *data, size_t len)
{
	struct ipc_message m = { .type = IPC_WS_SEND };

	m.ws_send.conn = conn;
	m.ws_send.seq = seq;
	m.ws_send.packet = data;
	m.ws_send.len = len;
	return m;
}

/* Pack `in`, decode it into *out (valid until the reader is freed). */
static struct ipc_reader *round_trip(const struct ipc_message *in, struct ipc_message *out)
{
	msgpack_sbuffer b;
	struct ipc_reader *r;

	PACK(b, ipc_pack(&pk, in));
	decode_one(&b, out, &r);
	msgpack_sbuffer_destroy(&b);
	assert_int_equal(out->type, in->type);
	return r;
}

static void test_round_trip_every_message(void **state)
{
	struct ipc_message in, m;
	struct ipc_reader *r;
	const char payload[] = "{\"packet_type\": \"heartbeat\"}";

	(void)state;
	in = (struct ipc_message){ .type = IPC_HELLO_WORKER, .hello_worker = { 0, 3, 4242 } };
	r = round_trip(&in, &m);
	assert_int_equal(m.hello_worker.version, IPC_PROTOCOL_VERSION); /* always ours */
	assert_int_equal(m.hello_worker.slot, 3);
	assert_int_equal(m.hello_worker.pid, 4242);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_HELLO_SUPERVISOR,
				   .hello_supervisor = { 0, 7, "port = 1\n", 9 } };
	r = round_trip(&in, &m);
	assert_int_equal(m.hello_supervisor.version, IPC_PROTOCOL_VERSION);
	assert_int_equal(m.hello_supervisor.slot, 7);
	assert_int_equal(m.hello_supervisor.config_len, 9);
	assert_memory_equal(m.hello_supervisor.config, "port = 1\n", 9);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_WS_OPENED, .ws_conn = { UINT64_MAX } };
	r = round_trip(&in, &m);
	assert_true(m.ws_conn.conn == UINT64_MAX);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_WS_CLOSED, .ws_conn = { 0 } };
	r = round_trip(&in, &m);
	assert_true(m.ws_conn.conn == 0);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_WS_PACKET };
	in.ws_packet.conn = (1ULL << 32) | 5;
	in.ws_packet.packet = (struct packet){
		.type = PKT_SUBMIT_ONBOARDING, .subject_id = "agent-1", .status = NULL,
		.request_id = "req-9", .client_timestamp = 1.5, .server_timestamp = NAN,
		.router_incoming_timestamp = 1e9 + 0.25, .payload = payload,
		.len = sizeof payload - 1,
	};
	r = round_trip(&in, &m);
	assert_true(m.ws_packet.conn == ((1ULL << 32) | 5));
	assert_int_equal(m.ws_packet.packet.type, PKT_SUBMIT_ONBOARDING);
	assert_string_equal(m.ws_packet.packet.subject_id, "agent-1");
	assert_null(m.ws_packet.packet.status);
	assert_string_equal(m.ws_packet.packet.request_id, "req-9");
	assert_true(m.ws_packet.packet.client_timestamp == 1.5);
	assert_true(isnan(m.ws_packet.packet.server_timestamp));
	assert_true(m.ws_packet.packet.router_incoming_timestamp == 1e9 + 0.25);
	assert_int_equal(m.ws_packet.packet.len, sizeof payload - 1);
	assert_memory_equal(m.ws_packet.packet.payload, payload, sizeof payload - 1);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_WS_UNSENT, .ws_written = { 42, 77 } };
	r = round_trip(&in, &m);
	assert_true(m.ws_written.conn == 42 && m.ws_written.seq == 77);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_WS_SENT, .ws_written = { 43, UINT64_MAX } };
	r = round_trip(&in, &m);
	assert_true(m.ws_written.conn == 43 && m.ws_written.seq == UINT64_MAX);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_HTTP_REQUEST,
				   .http_request = { 12, 3, NULL, "uuid-1", payload, 4 } };
	r = round_trip(&in, &m);
	assert_true(m.http_request.req == 12);
	assert_int_equal(m.http_request.flags, 3);
	assert_null(m.http_request.agent_id);
	assert_string_equal(m.http_request.request_id, "uuid-1");
	assert_int_equal(m.http_request.len, 4);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_VERSION_MISMATCH,
				   .version_mismatch = { "2.0.3", "{}", 2 } };
	r = round_trip(&in, &m);
	assert_string_equal(m.version_mismatch.version, "2.0.3");
	assert_memory_equal(m.version_mismatch.packet, "{}", 2);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_UPLOAD_STORED,
				   .upload_stored = { "mr-1", "a.txt", "file", NULL, 5, 6, 7 } };
	r = round_trip(&in, &m);
	assert_string_equal(m.upload_stored.stored, "mr-1");
	assert_string_equal(m.upload_stored.original, "a.txt");
	assert_string_equal(m.upload_stored.field, "file");
	assert_null(m.upload_stored.agent_id);
	assert_true(m.upload_stored.size == 5 && m.upload_stored.dev == 6 &&
		    m.upload_stored.ino == 7);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_DOWNLOAD_CHECK, .download_check = { 8, "mr-2" } };
	r = round_trip(&in, &m);
	assert_true(m.download_check.req == 8);
	assert_string_equal(m.download_check.stored, "mr-2");
	ipc_reader_free(r);

	{
		struct worker_stats stats = { .packets_in = 99 }, got;

		stats.latency[IPC_EP_STATIC][3] = 4;
		stats.heartbeat_sum = 0.5;
		in = (struct ipc_message){ .type = IPC_STATS, .stats = { &stats } };
		r = round_trip(&in, &m);
		memcpy(&got, m.stats.bytes, sizeof got); /* the bytes may be unaligned */
		assert_memory_equal(&got, &stats, sizeof stats);
		ipc_reader_free(r);
	}

	in = (struct ipc_message){ .type = IPC_METRICS_REQUEST, .metrics_request = { 13 } };
	r = round_trip(&in, &m);
	assert_true(m.metrics_request.req == 13);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_METRICS, .metrics = { 14, "a 1\n", 4 } };
	r = round_trip(&in, &m);
	assert_true(m.metrics.req == 14);
	assert_memory_equal(m.metrics.text, "a 1\n", 4);
	ipc_reader_free(r);

	in = ws_send(9, 0, "", 0);
	in.ws_send.answers = 1795000000.25;
	r = round_trip(&in, &m);
	assert_true(m.ws_send.conn == 9);
	assert_true(m.ws_send.answers == 1795000000.25);
	assert_int_equal(m.ws_send.len, 0);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_HTTP_ANSWER,
				   .http_answer = { 5, 408, "{\"error\":1}", 11 } };
	r = round_trip(&in, &m);
	assert_true(m.http_answer.req == 5);
	assert_int_equal(m.http_answer.status, 408);
	assert_int_equal(m.http_answer.len, 11);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_HTTP_ANSWER, .http_answer = { 6, 200, NULL, 0 } };
	r = round_trip(&in, &m);
	assert_null(m.http_answer.body);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_DOWNLOAD_INFO, .download_info = { 15, 1, 16, 17 } };
	r = round_trip(&in, &m);
	assert_true(m.download_info.req == 15 && m.download_info.found == 1 &&
		    m.download_info.dev == 16 && m.download_info.ino == 17);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_WS_CLOSE, .ws_close = { 11, 1009 } };
	r = round_trip(&in, &m);
	assert_true(m.ws_close.conn == 11);
	assert_int_equal(m.ws_close.code, 1009);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_DRAIN };
	r = round_trip(&in, &m);
	ipc_reader_free(r);

	in = (struct ipc_message){ .type = IPC_CONFIG, .config = { "workers = 4\n", 12 } };
	r = round_trip(&in, &m);
	assert_memory_equal(m.config.text, "workers = 4\n", 12);
	ipc_reader_free(r);
}

/* A stream of several messages fed one byte at a time. */
static void test_stream_byte_by_byte(void **state)
{
	msgpack_sbuffer b;
	msgpack_packer pk;
	struct ipc_reader *r = ipc_reader_new(1 << 20);
	struct ipc_message m;
	int got = 0;

	(void)state;
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	for (uint64_t i = 0; i < 100; i++) {
		struct ipc_message one = ws_send(i, i, "abcdef", (size_t)(i % 7));

		ipc_pack(&pk, &one);
	}
	for (size_t i = 0; i < b.size; i++) {
		int rc;
		feed(r, b.data + i, 1);
		while ((rc = ipc_reader_next(r, &m, err, sizeof err)) == 1) {
			assert_int_equal(m.type, IPC_WS_SEND);
			assert_true(m.ws_send.conn == (uint64_t)got);
			assert_true(m.ws_send.seq == (uint64_t)got && m.ws_send.answers == 0);
			assert_int_equal(m.ws_send.len, got % 7);
			got++;
		}
		assert_int_equal(rc, 0);
	}
	assert_int_equal(got, 100);
	ipc_reader_free(r);
	msgpack_sbuffer_destroy(&b);
}

static void test_truncated(void **state)
{
	msgpack_sbuffer b;
	struct ipc_reader *r;
	struct ipc_message m;

	(void)state;
	struct ipc_message hello = ws_send(1, 2, "hello world", 11);

	PACKM(b, hello);
	for (size_t cut = 0; cut < b.size; cut++) {
		r = ipc_reader_new(1 << 20);
		feed(r, b.data, cut);
		assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), 0);
		feed(r, b.data + cut, b.size - cut);
		assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), 1);
		assert_memory_equal(m.ws_send.packet, "hello world", 11);
		ipc_reader_free(r);
	}
	msgpack_sbuffer_destroy(&b);
}

static void test_oversized(void **state)
{
	msgpack_sbuffer b;
	struct ipc_reader *r;
	struct ipc_message m;
	size_t big = 64 * 1024;
	char *payload = calloc(1, big);
	struct ipc_message one = ws_send(1, 1, payload, big);

	(void)state;
	PACKM(b, one);
	/* Complete but over the bound. */
	r = ipc_reader_new(big / 2);
	feed(r, b.data, b.size);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), -1);
	assert_non_null(strstr(err, "exceeds the bound"));
	ipc_reader_free(r);
	/* Incomplete and already over the bound: refused before the rest. */
	r = ipc_reader_new(big / 2);
	feed(r, b.data, big / 2 + 100);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), -1);
	assert_non_null(strstr(err, "exceeds the bound"));
	ipc_reader_free(r);
	/* At the bound: accepted. */
	r = ipc_reader_new(big + IPC_MESSAGE_OVERHEAD);
	feed(r, b.data, b.size);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), 1);
	ipc_reader_free(r);
	msgpack_sbuffer_destroy(&b);
	free(payload);
}

static void expect_garbage(const void *bytes, size_t len, const char *fragment)
{
	struct ipc_reader *r = ipc_reader_new(1 << 20);
	struct ipc_message m;

	feed(r, bytes, len);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), -1);
	if (strstr(err, fragment) == NULL)
		fail_msg("error '%s' does not contain '%s'", err, fragment);
	ipc_reader_free(r);
}

static void test_garbage(void **state)
{
	msgpack_sbuffer b;
	msgpack_packer pk;

	(void)state;
	/* 0xc1 is never valid msgpack */
	expect_garbage("\xc1", 1, "parse error");
	/* a bare integer, an empty array, a map */
	expect_garbage("\x05", 1, "not a non-empty array");
	expect_garbage("\x90", 1, "not a non-empty array");
	expect_garbage("\x81\x01\x02", 3, "not a non-empty array");
	/* [ "x" ]: type not an integer */
	expect_garbage("\x91\xa1" "x", 3, "type is not an integer");
	/* [ 999 ]: unknown type */
	expect_garbage("\x91\xcd\x03\xe7", 4, "unknown message type 999");
	/* [ WS_OPENED ] without its conn */
	expect_garbage("\x91\x64", 2, "WS_OPENED: field 1: missing");
	/* [ WS_OPENED, -1 ] */
	expect_garbage("\x92\x64\xff", 3, "expected an unsigned integer");
	/* [ WS_OPENED, 1, 2 ]: extra field */
	expect_garbage("\x93\x64\x01\x02", 4, "unexpected extra field");
	/* [ WS_SEND, 1, 2, nil, "str" ]: str where bin is expected */
	expect_garbage("\x95\xcc\xc8\x01\x02\xc0\xa1" "x", 8, "expected bin");
	/* [ WS_SEND, 1, 2, "t", bin ]: str where the answered time is expected */
	expect_garbage("\x95\xcc\xc8\x01\x02\xa1" "t\xc4\x00", 9, "expected a float or nil");
	/* [ VERSION_MISMATCH, "2" (no NUL), bin ] */
	expect_garbage("\x93\x69\xa1" "2\xc4\x00", 6, "NUL-terminated");
	/* [ HTTP_ANSWER, 1, 999, nil ]: status out of range */
	expect_garbage("\x94\xcc\xcc\x01\xcd\x03\xe7\xc0", 8, "HTTP status out of range");
	/* [ HELLO_WORKER, 1, 2^40, 0 ]: slot out of uint32 range */
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint32(&pk, IPC_HELLO_WORKER);
	msgpack_pack_uint32(&pk, 1);
	msgpack_pack_uint64(&pk, 1ULL << 40);
	msgpack_pack_int64(&pk, 0);
	expect_garbage(b.data, b.size, "in range");
	msgpack_sbuffer_destroy(&b);
	/* WS_CLOSE with a code outside 1000..4999 */
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	ipc_pack(&pk, &(struct ipc_message){ .type = IPC_WS_CLOSE, .ws_close = { 1, 42 } });
	expect_garbage(b.data, b.size, "close code out of range");
	msgpack_sbuffer_destroy(&b);
}

/* A container header claims more elements than the bound allows bytes
 * for (each element is at least one byte): msgpack-c's unpacker would
 * allocate count * sizeof(msgpack_object) when it meets the header, before
 * any element arrived (0xdd 05 00 00 00: 84 million elements, 2 GB). The
 * reader refuses it from the header alone, with its bound in the error. */
static void expect_refused_header(const void *bytes, size_t len, size_t max,
				  const char *fragment)
{
	struct ipc_reader *r = ipc_reader_new(max);
	struct ipc_message m;

	feed(r, bytes, len);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), -1);
	if (strstr(err, fragment) == NULL)
		fail_msg("error '%s' does not contain '%s'", err, fragment);
	ipc_reader_free(r);
}

static void test_huge_container_headers(void **state)
{
	const size_t max = IPC_MAX_MESSAGE(1 << 20);
	unsigned char big[4096];

	(void)state;
	/* array 32 of 84 million, of 2^32 - 1; map 32 (two values an entry) */
	expect_refused_header("\xdd\x05\x00\x00\x00", 5, max, "exceeds the bound");
	expect_refused_header("\xdd\xff\xff\xff\xff", 5, max, "exceeds the bound");
	expect_refused_header("\xdf\x00\x10\x00\x00", 5, max, "exceeds the bound");
	/* nested inside a valid start: [WS_SEND, [ 2^32 - 1 elements ] */
	expect_refused_header("\x95\xcc\xc8\xdd\xff\xff\xff\xff", 8, max, "exceeds the bound");
	/* str 32 and bin 32 bodies longer than the bound, before the bytes */
	expect_refused_header("\x92\xcc\xcb\xdb\x7f\xff\xff\xff", 8, max, "exceeds the bound");
	expect_refused_header("\x95\xcc\xc8\x01\xa2" "d\0\x02\xc6\x00\x40\x00\x00", 13, max,
			      "exceeds the bound");
	/* ext 32 of 2^32 - 1 bytes */
	expect_refused_header("\xc9\xff\xff\xff\xff\x01", 6, max, "exceeds the bound");
	/* Within the byte bound but more values than any IPC message has:
	 * array 16 of 60,000 (60 KB of elements would be 1.4 MB of objects). */
	expect_refused_header("\xdc\xea\x60", 3, max, "values");
	/* ... also when every element is there */
	big[0] = 0xdc;
	big[1] = (unsigned char)((sizeof big - 3) >> 8);
	big[2] = (unsigned char)((sizeof big - 3) & 0xff);
	memset(big + 3, 0xc0, sizeof big - 3);
	expect_refused_header(big, sizeof big, max, "values");
	/* an element count only just over what the bytes of the bound allow */
	expect_refused_header("\xdd\x00\x00\x01\x00", 5, 200, "exceeds the bound");
}

/* The check counts what is declared, not what has arrived: a message is
 * refused as soon as its declared sizes exceed the bound, whatever the
 * chunking, and one that fits is still read one byte at a time. */
static void test_bound_counts_declared_sizes(void **state)
{
	msgpack_sbuffer b;
	struct ipc_reader *r;
	struct ipc_message m;
	char payload[300];
	size_t at;
	int rc = 0;

	(void)state;
	memset(payload, 'x', sizeof payload);
	struct ipc_message one = ws_send(1, 2, payload, sizeof payload);

	PACKM(b, one);
	/* 300 bytes of payload, a bound of 200: refused once the bin header
	 * is in, long before the payload */
	r = ipc_reader_new(200);
	for (at = 0; at < b.size; at++) {
		feed(r, b.data + at, 1);
		rc = ipc_reader_next(r, &m, err, sizeof err);
		if (rc != 0)
			break;
	}
	assert_int_equal(rc, -1);
	assert_true(at < b.size - sizeof payload);
	assert_non_null(strstr(err, "exceeds the bound"));
	ipc_reader_free(r);
	/* the same message under a bound it fits */
	r = ipc_reader_new(sizeof payload + IPC_MESSAGE_OVERHEAD);
	for (size_t i = 0; i < b.size; i++) {
		feed(r, b.data + i, 1);
		rc = ipc_reader_next(r, &m, err, sizeof err);
		assert_int_equal(rc, i + 1 < b.size ? 0 : 1);
	}
	assert_int_equal(m.ws_send.len, sizeof payload);
	ipc_reader_free(r);
	msgpack_sbuffer_destroy(&b);
}

/* A str or bin of no bytes is present: its pointer is not NULL, which
 * would read as nil (HTTP_ANSWER: no body) and makes memcpy(dst, NULL, 0)
 * in the receiver. msgpack-c gives a zero-length fixstr whatever pointer
 * its parser last had, NULL at the start of a message. Found by
 * tests/fuzz/fuzz_ipc (a HELLO_SUPERVISOR packed again decoded apart). */
static void test_empty_bytes_are_not_nil(void **state)
{
	struct ipc_reader *r;
	struct ipc_message m;

	(void)state;
	/* [HELLO_SUPERVISOR, 2, 1, ""]: the config an empty fixstr, after
	 * fixints only (so msgpack-c has no pointer yet) */
	r = ipc_reader_new(1 << 20);
	feed(r, "\x94\x02\x02\x01\xa0", 5);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), 1);
	assert_int_equal(m.type, IPC_HELLO_SUPERVISOR);
	assert_int_equal(m.hello_supervisor.config_len, 0);
	assert_non_null(m.hello_supervisor.config);
	ipc_reader_free(r);
	/* [HTTP_ANSWER, 1, 200, bin8 ""] is an empty body, not nil's none */
	r = ipc_reader_new(1 << 20);
	feed(r, "\x94\xcc\xcc\x01\xcc\xc8\xc4\x00" "\x94\xcc\xcc\x01\xcc\xc8\xc0", 15);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), 1);
	assert_int_equal(m.http_answer.len, 0);
	assert_non_null(m.http_answer.body);
	assert_int_equal(ipc_reader_next(r, &m, err, sizeof err), 1);
	assert_null(m.http_answer.body);
	ipc_reader_free(r);
}

/* Random bytes never crash the reader, and it ends in a defined state. */
static void test_random_bytes(void **state)
{
	unsigned int seed = 12345;

	(void)state;
	for (int round = 0; round < 2000; round++) {
		struct ipc_reader *r = ipc_reader_new(4096);
		unsigned char bytes[64];
		struct ipc_message m;
		int rc;

		for (size_t i = 0; i < sizeof bytes; i++)
			bytes[i] = (unsigned char)rand_r(&seed);
		feed(r, bytes, (size_t)(rand_r(&seed) % (int)sizeof bytes) + 1);
		while ((rc = ipc_reader_next(r, &m, err, sizeof err)) == 1)
			assert_true(m.type != 0);
		assert_true(rc == 0 || rc == -1);
		ipc_reader_free(r);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_every_message),
		cmocka_unit_test(test_stream_byte_by_byte),
		cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_oversized),
		cmocka_unit_test(test_garbage),
		cmocka_unit_test(test_huge_container_headers),
		cmocka_unit_test(test_bound_counts_declared_sizes),
		cmocka_unit_test(test_empty_bytes_are_not_nil),
		cmocka_unit_test(test_random_bytes),
	};
	return cmocka_run_group_tests_name("ipc", tests, NULL, NULL);
}
