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
 * - what decodes packs back (ipc_pack) to bytes that decode to the same
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

/* A decoded message, as its fields packed again (ipc_pack is lossless
 * for what ipc_decode produces). with_version: the HELLOs' version (the
 * encoder always writes this build's). */
static void log_msg(struct log *l, const struct ipc_message *m, int with_version)
{
	msgpack_sbuffer sbuf;
	msgpack_packer pk;

	log_u64(l, (uint64_t)m->type);
	if (with_version && m->type == IPC_HELLO_WORKER)
		log_u64(l, m->hello_worker.version);
	if (with_version && m->type == IPC_HELLO_SUPERVISOR)
		log_u64(l, m->hello_supervisor.version);
	msgpack_sbuffer_init(&sbuf);
	msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
	if (ipc_pack(&pk, m) < 0)
		abort();
	log_u64(l, sbuf.size);
	log_add(l, sbuf.data, sbuf.size);
	msgpack_sbuffer_destroy(&sbuf);
}

static void fail(const char *what, const char *err)
{
	fprintf(stderr, "fuzz_ipc: %s%s%s\n", what, err ? ": " : "", err ? err : "");
	abort();
}

static void check_round_trip(const struct ipc_message *m, size_t max)
{
	msgpack_sbuffer sbuf;
	msgpack_packer pk;
	struct ipc_reader *r = ipc_reader_new(max);
	struct ipc_message again;
	struct log a = { 0 }, b = { 0 };
	char err[256];
	int rc;

	msgpack_sbuffer_init(&sbuf);
	msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
	if (ipc_pack(&pk, m) < 0)
		fail("a decoded message does not pack", ipc_type_name(m->type));
	memcpy(ipc_reader_buffer(r, sbuf.size), sbuf.data, sbuf.size);
	ipc_reader_consumed(r, sbuf.size);
	rc = ipc_reader_next(r, &again, err, sizeof err);
	if (rc != 1)
		fail("a message packed again does not decode", rc < 0 ? err : "incomplete");
	log_msg(&a, m, 0);
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
	struct ipc_message m;
	char err[256];
	size_t off = 0;
	int rc = 0;

	while (off < size && rc >= 0) {
		size_t n = chunk_size(seed, size - off);

		memcpy(ipc_reader_buffer(r, n), data + off, n);
		ipc_reader_consumed(r, n);
		off += n;
		while ((rc = ipc_reader_next(r, &m, err, sizeof err)) == 1) {
			if (ipc_payload_len(&m) + IPC_MESSAGE_OVERHEAD > max)
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
