#include "wire.h"

#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/xalloc.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

double wire_now(void)
{
	return clock_epoch();
}

/* "name":seconds.micros for an epoch time, without printf (a tenth of the
 * per-packet time went to formatting two doubles). Returns the length. */
static size_t format_stamp(char *out, const char *name, double t)
{
	long long us = llround(t * 1e6), secs = us / 1000000;
	long frac = (long)(us % 1000000);
	char digits[24];
	size_t n = 0, d = 0;

	out[n++] = '"';
	while (*name)
		out[n++] = *name++;
	out[n++] = '"';
	out[n++] = ':';
	do {
		digits[d++] = (char)('0' + secs % 10);
		secs /= 10;
	} while (secs > 0);
	while (d > 0)
		out[n++] = digits[--d];
	out[n++] = '.';
	for (int i = 5; i >= 0; i--) {
		out[n + (size_t)i] = (char)('0' + frac % 10);
		frac /= 10;
	}
	return n + 6;
}

size_t wire_stamp_outgoing(char *dst, const char *payload, size_t len, double now)
{
	char member[WIRE_OUTGOING_STAMP_BYTES];
	size_t n = format_stamp(member, "router_outgoing_timestamp", now);

	return packet_add_member_into(dst, payload, len, member, n);
}

static int fail(char *why, size_t whylen, const char *fmt, const char *arg)
{
	snprintf(why, whylen, fmt, arg);
	return -1;
}

/* A timestamp field: a number, or absent/null (NAN). */
static int get_timestamp(json_t *root, const char *key, double *out, char *why,
			 size_t whylen)
{
	json_t *v = json_object_get(root, key);

	*out = NAN;
	if (v == NULL || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return fail(why, whylen, "%s is not a number", key);
	*out = json_number_value(v);
	return 0;
}

static int parse_json(const char *text, size_t len, double now, size_t backend_max,
		      struct wire_packet *out, char *why, size_t whylen)
{
	json_error_t error;
	json_t *root, *type, *subject, *data;
	const char *nul;
	int data_missing, data_null;

	memset(out, 0, sizeof *out);
	/* No JSON text holds a raw NUL byte, but jansson skips one that
	 * follows a token it read a character past (a number, true, false,
	 * null): such a text was accepted and its NUL forwarded as it came. */
	nul = memchr(text, '\0', len);
	if (nul != NULL) {
		snprintf(why, whylen, "not JSON: NUL byte at offset %zu", (size_t)(nul - text));
		return -1;
	}
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &error);
	if (root == NULL) {
		snprintf(why, whylen, "not JSON: %s at line %d column %d", error.text,
			 error.line, error.column);
		return -1;
	}
	out->root = root;
	if (!json_is_object(root))
		return fail(why, whylen, "%s", "not a JSON object");
	type = json_object_get(root, "packet_type");
	subject = json_object_get(root, "subject_id");
	if (!json_is_string(type))
		return fail(why, whylen, "%s", "packet_type missing or not a string");
	if (!json_is_string(subject))
		return fail(why, whylen, "%s", "subject_id missing or not a string");
	out->packet.type = packet_type_parse(json_string_value(type));
	if (out->packet.type == PKT_UNKNOWN)
		return fail(why, whylen, "unknown packet_type '%.64s'",
			    json_string_value(type));
	out->packet.subject_id = json_string_value(subject);
	data = json_object_get(root, "data");
	data_missing = data == NULL;
	data_null = data != NULL && json_is_null(data);
	if (data == NULL || json_is_null(data)) {
		/* The backend requires a data object (PROTOCOL.md, point 10). */
		data = json_object();
		json_object_set_new(root, "data", data);
	} else if (!json_is_object(data)) {
		return fail(why, whylen, "%s", "data is not an object");
	}
	if (get_timestamp(root, "client_timestamp", &out->packet.client_timestamp, why, whylen) < 0 ||
	    get_timestamp(root, "server_timestamp", &out->packet.server_timestamp, why, whylen) < 0)
		return -1;
	switch ((enum packet_type)out->packet.type) {
	case PKT_UPDATE_STATUS: {
		json_t *status = json_object_get(data, "status");
		if (status != NULL && !json_is_string(status))
			return fail(why, whylen, "%s", "data.status is not a string");
		out->packet.status = json_string_value(status);
		break;
	}
	case PKT_AGENT_DETAILS: {
		json_t *id = json_object_get(data, "request_id");
		out->packet.request_id = json_is_string(id) ? json_string_value(id)
						       : out->packet.subject_id;
		break;
	}
	case PKT_HEARTBEAT:
		/* The answer carries the router's own data. */
		json_object_del(root, "data");
		break;
	default:
		break;
	}
	out->packet.router_incoming_timestamp = now;
	if (out->packet.type != PKT_HEARTBEAT && !data_null &&
	    json_object_get(root, "router_incoming_timestamp") == NULL &&
	    json_object_get(root, "router_outgoing_timestamp") == NULL) {
		/* The usual case: the text as it came, with the timestamp (and an
		 * empty data object if it had none) appended; no re-serialising. */
		char member[96];
		size_t n = 0;

		if (data_missing) {
			memcpy(member, "\"data\":{},", 10);
			n = 10;
		}
		n += format_stamp(member + n, "router_incoming_timestamp", now);

		out->payload = xmalloc(len + n + 3);
		out->len = packet_add_member_into(out->payload, text, len, member, n);
		out->payload[out->len] = '\0';
	} else {
		json_object_del(root, "router_outgoing_timestamp");
		json_object_set_new(root, "router_incoming_timestamp", json_real(now));
		out->payload = json_dumps(root, JSON_COMPACT);
		if (out->payload == NULL)
			fatal("out of memory");
		out->len = strlen(out->payload);
	}
	if ((out->packet.type == PKT_MEPHISTO_BOUND_LIVE_UPDATE || out->packet.type == PKT_LOG_ERROR) &&
	    out->len + WIRE_OUTGOING_STAMP_BYTES > backend_max) {
		snprintf(why, whylen, "%zu bytes, more than the backend accepts "
			 "(backend_max_frame_bytes = %zu)", out->len, backend_max);
		return -1;
	}
	return 0;
}

void wire_packet_free(struct wire_packet *p)
{
	free(p->payload);
	json_decref(p->root);
	memset(p, 0, sizeof *p);
}

/* ---- the fast path ----
 *
 * jansson builds a tree, an allocation per value and a hash table per
 * object, and lexes a character at a time through a function pointer:
 * in profiles of mr-load up and down it was the largest single cost of a
 * worker. yajl (a streaming, validating parser: UTF-8 checked, numbers
 * range-checked like jansson's) builds nothing; the callbacks below keep
 * only the fields routing needs. What it changed: BENCHMARKS.md, "What
 * was slow and what changed it" (commit 61a75da).
 *
 * The fast path only ever accepts: anything unusual (an error of any
 * kind, a duplicated key, a \u escape, \u0000, a null or missing field
 * the slow path rewrites, a heartbeat, router timestamps already present,
 * nesting deeper than FAST_MAX_DEPTH) declines, and wire_parse_json()
 * then decides, with its own error messages. So the rules live in one
 * place, and tests/unit/test_wire.c checks that the two agree. */

#define FAST_MAX_DEPTH 64
#define FAST_KEEP_BYTES (1 << 20) /* buffers past these sizes are not kept */
#define FAST_KEEP_SLOTS 65536

enum fast_key {
	FK_OTHER,
	FK_TYPE,
	FK_SUBJECT,
	FK_DATA,
	FK_CLIENT_TS,
	FK_SERVER_TS,
	FK_STATUS,
	FK_REQUEST_ID
};

struct fast_str {
	size_t off, len; /* a copy in F.strings */
	int set;
};

/* Keys seen in this message, for duplicates: (object serial, key) in an
 * open-addressed table whose slots are valid for one generation. */
struct key_slot {
	uint32_t gen, serial, hash, off, len;
};

static struct {
	int depth;
	uint32_t serial, next_serial, data_serial;
	uint32_t serials[FAST_MAX_DEPTH + 1]; /* maps' serials; 0: an array */
	enum fast_key key; /* the key whose value comes next, at depth 1 or in data */
	int key_depth;
	int has_data, has_type;
	struct fast_str subject, status, request_id;
	char type[32];
	double client_ts, server_ts;
	yajl_handle h;
	size_t end; /* bytes up to the top-level object's closing brace */
	struct buf strings; /* this message's strings and keys, each with a NUL */
	struct key_slot *slots;
	uint32_t nslots, nkeys, gen;
} F;

static size_t fast_copy(const unsigned char *s, size_t len)
{
	size_t off = F.strings.len;

	buf_reserve(&F.strings, len + 1);
	memcpy(F.strings.data + off, s, len);
	F.strings.data[off + len] = '\0';
	F.strings.len += len + 1;
	return off;
}

static uint32_t key_hash(uint32_t serial, const unsigned char *s, size_t len)
{
	uint32_t h = 2166136261u ^ serial;

	for (size_t i = 0; i < len; i++)
		h = (h ^ s[i]) * 16777619u;
	return h;
}

static void keys_grow(void)
{
	struct key_slot *old = F.slots;
	uint32_t oldn = F.nslots, n = oldn ? oldn * 2 : 64;

	F.slots = xcalloc(n, sizeof *F.slots);
	F.nslots = n;
	for (uint32_t i = 0; i < oldn; i++) {
		uint32_t j;

		if (old[i].gen != F.gen)
			continue;
		for (j = old[i].hash & (n - 1); F.slots[j].gen == F.gen; j = (j + 1) & (n - 1))
			;
		F.slots[j] = old[i];
	}
	free(old);
}

/* 0 if key is new in the current object, -1 if it was there already. */
static int key_insert(const unsigned char *s, size_t len)
{
	uint32_t h = key_hash(F.serial, s, len), j;

	if ((F.nkeys + 1) * 2 > F.nslots)
		keys_grow();
	for (j = h & (F.nslots - 1); F.slots[j].gen == F.gen; j = (j + 1) & (F.nslots - 1)) {
		struct key_slot *k = &F.slots[j];

		if (k->hash == h && k->serial == F.serial && k->len == len &&
		    memcmp(F.strings.data + k->off, s, len) == 0)
			return -1;
	}
	F.slots[j] = (struct key_slot){ F.gen, F.serial, h, (uint32_t)fast_copy(s, len),
					(uint32_t)len };
	F.nkeys++;
	return 0;
}

/* Where a scalar or container that starts now sits: the value of a
 * top-level key (1), of a key of data (2), or elsewhere (0). */
static int value_slot(void)
{
	if (F.key_depth == 1 && F.depth == 1)
		return 1;
	if (F.key_depth == 2 && F.depth == 2 && F.serial == F.data_serial)
		return 2;
	return 0;
}

static int fast_value_consumed(void)
{
	F.key = FK_OTHER;
	F.key_depth = 0;
	return 1;
}

/* A value at slot 1 or 2 that is not what its key needs: decline, the
 * slow path has the error (or the rewrite). */
static int fast_typed(int is_string)
{
	int slot = value_slot();

	if (slot == 1 && F.key != FK_OTHER)
		return is_string ? 1 : 0;
	if (slot == 2 && F.key == FK_STATUS)
		return is_string ? 1 : 0;
	return 1;
}

static int fast_null(void *ctx)
{
	(void)ctx;
	if (F.depth == 0)
		return 0;
	/* A null timestamp is "absent"; anything else null is the slow
	 * path's (data: null is rewritten, status: null is an error). */
	if (value_slot() == 1 && (F.key == FK_CLIENT_TS || F.key == FK_SERVER_TS))
		return fast_value_consumed();
	if (!fast_typed(0))
		return 0;
	return fast_value_consumed();
}

static int fast_boolean(void *ctx, int v)
{
	(void)ctx;
	(void)v;
	if (F.depth == 0 || !fast_typed(0))
		return 0;
	return fast_value_consumed();
}

static int fast_number(void *ctx, double v)
{
	(void)ctx;
	if (F.depth == 0)
		return 0;
	if (value_slot() == 1 && (F.key == FK_CLIENT_TS || F.key == FK_SERVER_TS)) {
		*(F.key == FK_CLIENT_TS ? &F.client_ts : &F.server_ts) = v;
		return fast_value_consumed();
	}
	if (!fast_typed(0))
		return 0;
	return fast_value_consumed();
}

static int fast_integer(void *ctx, long long v)
{
	return fast_number(ctx, (double)v);
}

static int fast_string(void *ctx, const unsigned char *s, size_t len)
{
	int slot = value_slot();
	struct fast_str *dst = NULL;

	(void)ctx;
	if (F.depth == 0 || memchr(s, '\0', len) != NULL)
		return 0;
	if (slot == 1 && (F.key == FK_CLIENT_TS || F.key == FK_SERVER_TS || F.key == FK_DATA))
		return 0;
	if (slot == 1 && F.key == FK_TYPE) {
		if (len >= sizeof F.type)
			return 0; /* no such type: the slow path names it */
		memcpy(F.type, s, len);
		F.type[len] = '\0';
		F.has_type = 1;
	} else if (slot == 1 && F.key == FK_SUBJECT) {
		dst = &F.subject;
	} else if (slot == 2 && F.key == FK_STATUS) {
		dst = &F.status;
	} else if (slot == 2 && F.key == FK_REQUEST_ID) {
		dst = &F.request_id;
	}
	if (dst != NULL) {
		dst->off = fast_copy(s, len);
		dst->len = len;
		dst->set = 1;
	}
	return fast_value_consumed();
}

static int fast_start(int is_map)
{
	int slot = value_slot();

	if (F.depth == 0 && !is_map)
		return 0; /* not an object: the slow path says so */
	if (F.depth >= FAST_MAX_DEPTH)
		return 0;
	if (slot == 1 && F.key != FK_OTHER && !(is_map && F.key == FK_DATA))
		return 0;
	if (slot == 2 && F.key == FK_STATUS)
		return 0;
	F.depth++;
	F.serial = is_map ? ++F.next_serial : 0;
	F.serials[F.depth] = F.serial;
	if (slot == 1 && F.key == FK_DATA) {
		F.data_serial = F.serial;
		F.has_data = 1;
	}
	F.key = FK_OTHER;
	F.key_depth = 0;
	return 1;
}

static int fast_end(void)
{
	if (--F.depth == 0) /* the message's object ends here */
		F.end = yajl_get_bytes_consumed(F.h);
	F.serial = F.serials[F.depth];
	F.key = FK_OTHER;
	F.key_depth = 0;
	return 1;
}

static int fast_start_map(void *ctx) { (void)ctx; return fast_start(1); }
static int fast_start_array(void *ctx) { (void)ctx; return fast_start(0); }
static int fast_end_container(void *ctx) { (void)ctx; return fast_end(); }

static enum fast_key classify(const unsigned char *s, size_t len, int in_data)
{
#define IS(lit) (len == sizeof(lit) - 1 && memcmp(s, lit, len) == 0)
	if (in_data)
		return IS("status") ? FK_STATUS : IS("request_id") ? FK_REQUEST_ID : FK_OTHER;
	if (IS("packet_type"))
		return FK_TYPE;
	if (IS("subject_id"))
		return FK_SUBJECT;
	if (IS("data"))
		return FK_DATA;
	if (IS("client_timestamp"))
		return FK_CLIENT_TS;
	if (IS("server_timestamp"))
		return FK_SERVER_TS;
	return FK_OTHER;
#undef IS
}

static int fast_map_key(void *ctx, const unsigned char *s, size_t len)
{
	(void)ctx;
	if (memchr(s, '\0', len) != NULL || key_insert(s, len) < 0)
		return 0;
	F.key = FK_OTHER;
	F.key_depth = 0;
	if (F.depth == 1) {
		/* Stamps already there are replaced: the slow path's job. */
		if ((len == 25 && memcmp(s, "router_incoming_timestamp", len) == 0) ||
		    (len == 25 && memcmp(s, "router_outgoing_timestamp", len) == 0))
			return 0;
		F.key = classify(s, len, 0);
		F.key_depth = 1;
	} else if (F.depth == 2 && F.serial == F.data_serial) {
		F.key = classify(s, len, 1);
		F.key_depth = 2;
	}
	return 1;
}

static const yajl_callbacks fast_callbacks = {
	fast_null,     fast_boolean,    fast_integer,       fast_number, NULL,
	fast_string,   fast_start_map,  fast_map_key,       fast_end_container,
	fast_start_array, fast_end_container,
};

/* Text whose reading the two parsers might not agree on: \u escapes
 * (jansson refuses lone surrogates and \u0000), and the UTF-8 that yajl's
 * check lets through but jansson's does not: overlong forms (C0, C1;
 * E0 80-9F; F0 80-8F), encoded surrogates (ED A0-BF) and code points
 * above U+10FFFF (F4 90-BF, F5-F7); and \v or \f between tokens. yajl checks the rest (lead and continuation
 * bytes), so these second-byte ranges are all that is left to look at. */
static int jansson_only(const char *text, size_t len)
{
	const unsigned char *u = (const unsigned char *)text;
	const char *p = text, *end = text + len;

	while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL && p + 1 < end) {
		if (p[1] == 'u')
			return 1;
		p += 2; /* past the escaped character, so \\u is not one */
	}
	/* yajl also takes \v and \f for whitespace between tokens; JSON (and
	 * jansson) does not, and inside strings raw control bytes are refused
	 * by both, so either anywhere means jansson's answer. */
	if (memchr(text, '\v', len) != NULL || memchr(text, '\f', len) != NULL ||
	    memchr(text, '\0', len) != NULL) /* and a NUL byte: an error there */
		return 1;
	for (size_t i = 0; i < len; i++) {
		unsigned c = u[i], d;

		if (c < 0xc0)
			continue;
		d = i + 1 < len ? u[i + 1] : 0;
		if (c < 0xc2 || c > 0xf4 || (c == 0xe0 && d < 0xa0) || (c == 0xed && d >= 0xa0) ||
		    (c == 0xf0 && d < 0x90) || (c == 0xf4 && d >= 0x90))
			return 1;
	}
	return 0;
}

/* 1: parsed into out; 0: declined (out untouched). */
static int wire_parse_fast(const char *text, size_t len, double now, size_t backend_max,
			   struct wire_packet *out)
{
	yajl_handle h;
	yajl_status st;
	enum packet_type type;
	char member[96];
	size_t n = 0, strings;
	char *payload;

	if (jansson_only(text, len))
		return 0;
	if (F.strings.cap > FAST_KEEP_BYTES || F.nslots > FAST_KEEP_SLOTS) {
		/* Grown for a huge message: not kept for the next ones. */
		buf_free(&F.strings);
		free(F.slots);
		F.slots = NULL;
		F.nslots = 0;
	}
	F.depth = 0;
	F.serial = F.next_serial = F.data_serial = 0;
	F.serials[0] = 0;
	F.key = FK_OTHER;
	F.key_depth = 0;
	F.has_data = F.has_type = 0;
	F.subject.set = F.status.set = F.request_id.set = 0;
	F.client_ts = F.server_ts = NAN;
	F.strings.len = 0;
	F.nkeys = 0;
	if (++F.gen == 0) { /* wrapped: forget every slot for real */
		memset(F.slots, 0, (size_t)F.nslots * sizeof *F.slots);
		F.gen = 1;
	}
	h = yajl_alloc(&fast_callbacks, NULL, NULL);
	if (h == NULL)
		fatal("out of memory");
	F.h = h;
	F.end = 0;
	st = yajl_parse(h, (const unsigned char *)text, len);
	if (st == yajl_status_ok)
		st = yajl_complete_parse(h);
	yajl_free(h);
	if (st != yajl_status_ok || !F.has_type || !F.subject.set || F.end == 0)
		return 0;
	/* yajl takes an unfinished string after the object for the start of
	 * more input, not for trailing garbage: only whitespace may follow. */
	for (size_t i = F.end; i < len; i++) {
		if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r')
			return 0;
	}
	type = packet_type_parse(F.type);
	if (type == PKT_UNKNOWN || type == PKT_HEARTBEAT)
		return 0;
	if (!F.has_data) {
		memcpy(member, "\"data\":{},", 10);
		n = 10;
	}
	n += format_stamp(member + n, "router_incoming_timestamp", now);
	/* One allocation: the payload, then the strings routing needs. */
	strings = len + n + 3;
	payload = xmalloc(strings + F.strings.len);
	memcpy(payload + strings, F.strings.data, F.strings.len);
	memset(out, 0, sizeof *out);
	out->payload = payload;
	out->len = packet_add_member_into(payload, text, len, member, n);
	payload[out->len] = '\0';
	out->packet.type = type;
	out->packet.subject_id = payload + strings + F.subject.off;
	if (type == PKT_UPDATE_STATUS && F.status.set)
		out->packet.status = payload + strings + F.status.off;
	if (type == PKT_AGENT_DETAILS)
		out->packet.request_id = F.request_id.set ? payload + strings + F.request_id.off
						     : out->packet.subject_id;
	out->packet.client_timestamp = F.client_ts;
	out->packet.server_timestamp = F.server_ts;
	out->packet.router_incoming_timestamp = now;
	if ((type == PKT_MEPHISTO_BOUND_LIVE_UPDATE || type == PKT_LOG_ERROR) &&
	    out->len + WIRE_OUTGOING_STAMP_BYTES > backend_max) {
		wire_packet_free(out);
		return 0; /* too big for the backend: the slow path says so */
	}
	return 1;
}

int wire_parse_json(const char *text, size_t len, double now, size_t backend_max,
		    struct wire_packet *out, char *why, size_t whylen)
{
	if (parse_json(text, len, now, backend_max, out, why, whylen) < 0)
		return -1;
	out->packet.payload = out->payload;
	out->packet.len = out->len;
	return 0;
}

int wire_parse(const char *text, size_t len, double now, size_t backend_max,
	       struct wire_packet *out, char *why, size_t whylen)
{
	if (wire_parse_fast(text, len, now, backend_max, out)) {
		out->packet.payload = out->payload;
		out->packet.len = out->len;
		return 0;
	}
	return wire_parse_json(text, len, now, backend_max, out, why, whylen);
}

void wire_free_all(void)
{
	buf_free(&F.strings);
	free(F.slots);
	memset(&F, 0, sizeof F);
}
