/* libFuzzer harness: the IPC reader and decoder (core/ipc.c) on arbitrary
 * bytes, as the supervisor and the workers read each other's stream.
 *
 * Each input is read as one stream several times, with readers bounded as
 * a router with the default max_message_bytes bounds them
 * (IPC_MAX_MESSAGE(1 MiB)) and with a small bound that inputs of a fuzzer's
 * size can break: in one piece, and in pieces of sizes drawn from a
 * generator seeded by the input (one byte, a few bytes, kilobytes; so a
 * crash reproduces from its input alone). Properties:
 * - the sanitizers, and libFuzzer's allocation limit: a reader must never
 *   allocate far beyond its bound, whatever the bytes claim;
 * - the chunking does not matter: the same messages, then the same end
 *   (waiting for more, or the same error);
 * - what decodes packs back (ipc_pack_*) to bytes that decode to the same
 *   message;
 * - the reader never reports its own disagreement with msgpack. */
#include "../../core/ipc.h"

#include <math.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A growing log of what a reader produced, compared between chunkings. */
struct log {
	unsigned char *buf;
	size_t len, cap;
};

static void log_add(struct log *l, const void *p, size_t n)
{
	if (l->len + n > l->cap) {
		size_t cap = l->cap ? l->cap : 1024;

		while (cap < l->len + n)
			cap *= 2;
		l->buf = realloc(l->buf, cap);
		if (l->buf == NULL)
			abort();
		l->cap = cap;
	}
	if (n > 0)
		memcpy(l->buf + l->len, p, n);
	l->len += n;
}

static void log_u64(struct log *l, uint64_t v)
{
	log_add(l, &v, sizeof v);
}

static void log_str(struct log *l, const char *s)
{
	log_u64(l, s != NULL);
	if (s != NULL)
		log_add(l, s, strlen(s) + 1);
}

static void log_double(struct log *l, double d)
{
	if (isnan(d))
		d = NAN; /* one NaN: nil and any NaN read the same */
	log_add(l, &d, sizeof d);
}

/* Every field of a decoded message. with_version: the HELLOs' version
 * (their encoders always write this build's). */
static void log_msg(struct log *l, const struct ipc_msg *m, int with_version)
{
	log_u64(l, (uint64_t)m->type);
	log_u64(l, with_version ? m->version : 0);
	log_u64(l, m->slot);
	log_u64(l, (uint64_t)m->pid);
	log_u64(l, m->conn);
	log_u64(l, m->code);
	log_u64(l, m->seq);
	log_str(l, m->str1);
	log_str(l, m->str2);
	log_str(l, m->str3);
	for (int i = 0; i < 3; i++)
		log_double(l, m->ts[i]);
	log_u64(l, m->data != NULL);
	log_u64(l, m->len);
	if (m->data != NULL)
		log_add(l, m->data, m->len);
}

static void fail(const char *what, const char *err)
{
	fprintf(stderr, "fuzz_ipc: %s%s%s\n", what, err ? ": " : "", err ? err : "");
	abort();
}

/* Pack m again with its type's encoder. Returns 0, or 1 for a type this
 * harness does not know yet (not checked). */
static int repack(msgpack_packer *pk, const struct ipc_msg *m)
{
	struct ipc_packet_fields f;
	int rc = -1;

	switch (m->type) {
	case IPC_HELLO_WORKER: rc = ipc_pack_hello_worker(pk, m->slot, m->pid); break;
	case IPC_HELLO_SUPERVISOR:
		rc = ipc_pack_hello_supervisor(pk, m->slot, m->data, m->len);
		break;
	case IPC_WS_OPENED: rc = ipc_pack_ws_opened(pk, m->conn); break;
	case IPC_WS_CLOSED: rc = ipc_pack_ws_closed(pk, m->conn); break;
	case IPC_WS_PACKET:
		f.type = m->code;
		f.subject_id = m->str1;
		f.status = m->str2;
		f.request_id = m->str3;
		f.client_timestamp = m->ts[0];
		f.server_timestamp = m->ts[1];
		f.router_incoming_timestamp = m->ts[2];
		rc = ipc_pack_ws_packet(pk, m->conn, &f, m->data, m->len);
		break;
	case IPC_WS_UNSENT: rc = ipc_pack_ws_unsent(pk, m->conn, m->seq); break;
	case IPC_WS_SENT: rc = ipc_pack_ws_sent(pk, m->conn, m->seq); break;
	case IPC_HTTP_REQUEST:
		rc = ipc_pack_http_request(pk, m->conn, m->code, m->str1, m->str2, m->data,
					   m->len);
		break;
	case IPC_VERSION_MISMATCH:
		rc = ipc_pack_version_mismatch(pk, m->str1, m->data, m->len);
		break;
	case IPC_WS_SEND: rc = ipc_pack_ws_send(pk, m->conn, m->seq, m->ts[0], m->data, m->len); break;
	case IPC_HTTP_ANSWER:
		rc = ipc_pack_http_answer(pk, m->conn, m->code, m->data, m->len);
		break;
	case IPC_WS_CLOSE: rc = ipc_pack_ws_close(pk, m->conn, m->code); break;
	case IPC_DRAIN: rc = ipc_pack_drain(pk); break;
	case IPC_CONFIG: rc = ipc_pack_config(pk, m->data, m->len); break;
	case IPC_UPLOAD_STORED:
		rc = ipc_pack_upload_stored(pk, m->str1, m->str2, m->str3, m->data,
					    (uint64_t)m->pid, m->conn, m->seq);
		break;
	case IPC_DOWNLOAD_CHECK: rc = ipc_pack_download_check(pk, m->conn, m->str1); break;
	case IPC_DOWNLOAD_INFO:
		rc = ipc_pack_download_info(pk, m->conn, m->code != 0, m->seq,
					    (uint64_t)m->pid);
		break;
	default: /* a message newer than this harness */
		return 1;
	}
	if (rc < 0)
		fail("a decoded message does not pack", ipc_type_name(m->type));
	return 0;
}

static void check_round_trip(const struct ipc_msg *m, size_t max)
{
	msgpack_sbuffer sbuf;
	msgpack_packer pk;
	struct ipc_reader *r = ipc_reader_new(max);
	struct ipc_msg again;
	struct log a = { 0 }, b = { 0 };
	char err[256];
	int rc;

	msgpack_sbuffer_init(&sbuf);
	msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
	if (repack(&pk, m) != 0) {
		ipc_reader_free(r);
		msgpack_sbuffer_destroy(&sbuf);
		return;
	}
	memcpy(ipc_reader_buffer(r, sbuf.size), sbuf.data, sbuf.size);
	ipc_reader_consumed(r, sbuf.size);
	rc = ipc_reader_next(r, &again, err, sizeof err);
	if (rc != 1)
		fail("a message packed again does not decode", rc < 0 ? err : "incomplete");
	if (m->type == IPC_DOWNLOAD_INFO) { /* "found" is a flag: 5 packs as 1 */
		struct ipc_msg flag = *m;

		flag.code = m->code != 0;
		log_msg(&a, &flag, 0);
	} else {
		log_msg(&a, m, 0);
	}
	log_msg(&b, &again, 0);
	if (a.len != b.len || memcmp(a.buf, b.buf, a.len) != 0)
		fail("a message packed again decodes differently", ipc_type_name(m->type));
	if (ipc_reader_next(r, &again, err, sizeof err) != 0)
		fail("a message packed again is followed by more", err);
	free(a.buf);
	free(b.buf);
	ipc_reader_free(r);
	msgpack_sbuffer_destroy(&sbuf);
}

/* xorshift64*, seeded by the input */
static uint64_t next_random(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static size_t chunk_size(uint64_t *seed, size_t left)
{
	uint64_t r;
	size_t n;

	if (seed == NULL)
		return left;
	r = next_random(seed);
	switch (r & 3) {
	case 0: n = 1; break;
	case 1: n = 1 + (size_t)(r >> 8) % 8; break;
	case 2: n = 1 + (size_t)(r >> 8) % 300; break;
	default: n = 1 + (size_t)(r >> 8) % 8192; break;
	}
	return n < left ? n : left;
}

/* Read the whole input as one stream and log every message and the end. */
static void read_stream(const uint8_t *data, size_t size, size_t max, uint64_t *seed,
			struct log *l, int round_trip)
{
	struct ipc_reader *r = ipc_reader_new(max);
	struct ipc_msg m;
	char err[256];
	size_t off = 0;
	int rc = 0;

	while (off < size && rc >= 0) {
		size_t n = chunk_size(seed, size - off);

		memcpy(ipc_reader_buffer(r, n), data + off, n);
		ipc_reader_consumed(r, n);
		off += n;
		while ((rc = ipc_reader_next(r, &m, err, sizeof err)) == 1) {
			if (m.len + IPC_MESSAGE_OVERHEAD > max)
				fail("a message over the bound was returned", ipc_type_name(m.type));
			log_msg(l, &m, 1);
			if (round_trip)
				check_round_trip(&m, max);
		}
	}
	log_u64(l, (uint64_t)(int64_t)rc);
	if (rc < 0) {
		if (strstr(err, "msgpack wants more") != NULL ||
		    strstr(err, "msgpack read") != NULL)
			fail("the reader and msgpack disagree on a message's length", err);
		log_add(l, err, strlen(err) + 1);
	}
	ipc_reader_free(r);
}

static void compare(const struct log *a, const struct log *b, size_t max)
{
	if (a->len != b->len || memcmp(a->buf, b->buf, a->len) != 0) {
		fprintf(stderr, "fuzz_ipc: bound %zu: the stream reads differently in "
			"pieces than in one piece\n", max);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t bounds[] = { IPC_MAX_MESSAGE(1 << 20), 300 };
	uint64_t seed = 0x9e3779b97f4a7c15ULL;

	for (size_t i = 0; i < size; i++) /* FNV-1a of the input */
		seed = (seed ^ data[i]) * 0x100000001b3ULL;
	if (seed == 0)
		seed = 1;
	for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
		struct log whole = { 0 }, pieces = { 0 };

		read_stream(data, size, bounds[b], NULL, &whole, b == 0);
		read_stream(data, size, bounds[b], &seed, &pieces, 0);
		compare(&whole, &pieces, bounds[b]);
		free(whole.buf);
		free(pieces.buf);
	}
	return 0;
}
