/* libFuzzer harness: worker/wire.c, the parser of every packet a browser
 * or the backend sends on a WebSocket.
 *
 * wire_parse() tries a yajl fast path and falls back to jansson
 * (wire_parse_json()) for anything the fast path declines; the fast path
 * may decline anything, but what it accepts must come out exactly as
 * jansson has it (wire.c, "the fast path"). So each input goes through
 * both, and they must agree: the same answer, the same error, the same
 * routing fields and the same payload bytes, as tests/unit/test_wire.c
 * checks for its hand-picked cases. A packet that parses must also make a
 * payload the backend can read: a JSON object, no duplicated key, with a
 * data object (heartbeats excepted) and the router's timestamp, and still
 * JSON once the sending worker stamps router_outgoing_timestamp on it.
 *
 * Each input is parsed with two backend_max_frame_bytes: no limit, and
 * one just around the input's own size, where the "too big for the
 * backend" rule switches. */
#include "../../worker/wire.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW 1764087000.5

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void disagree(const char *what, const char *a, const char *b,
		     const char *text, size_t len)
{
	fprintf(stderr, "fuzz_wire: %s differs: fast path/wire_parse '%s', jansson '%s'\n"
		"input (%zu bytes): %.*s\n", what, a ? a : "(null)", b ? b : "(null)",
		len, (int)(len > 2000 ? 2000 : len), text);
	abort();
}

static void same_str(const char *what, const char *a, const char *b, const char *text,
		     size_t len)
{
	if ((a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0))
		disagree(what, a, b, text, len);
}

static void same_num(const char *what, double a, double b, const char *text, size_t len)
{
	char sa[40], sb[40];

	if (isnan(a) == isnan(b) && (isnan(a) || a == b))
		return;
	snprintf(sa, sizeof sa, "%.17g", a);
	snprintf(sb, sizeof sb, "%.17g", b);
	disagree(what, sa, sb, text, len);
}

/* What the backend will be handed must be a JSON object it can read. */
static void check_payload(const struct wire_packet *p, const char *text, size_t len)
{
	json_error_t error;
	json_t *root, *data;
	char *stamped;
	size_t n;

	if (p->payload == NULL || strlen(p->payload) != p->len)
		disagree("payload length", "", "", text, len);
	root = json_loadb(p->payload, p->len, JSON_REJECT_DUPLICATES, &error);
	if (root == NULL || !json_is_object(root))
		disagree("payload is not a JSON object", p->payload, error.text, text, len);
	data = json_object_get(root, "data");
	if (p->packet.type == PKT_HEARTBEAT ? data != NULL : !json_is_object(data))
		disagree("payload's data member", p->payload, "", text, len);
	if (!json_is_number(json_object_get(root, "router_incoming_timestamp")) ||
	    json_object_get(root, "router_outgoing_timestamp") != NULL)
		disagree("payload's router timestamps", p->payload, "", text, len);
	json_decref(root);
	/* the sending worker's stamp (ws.c) */
	stamped = malloc(p->len + WIRE_OUTGOING_STAMP_BYTES);
	if (stamped == NULL)
		abort();
	n = wire_stamp_outgoing(stamped, p->payload, p->len, NOW + 1);
	if (n > p->len + WIRE_OUTGOING_STAMP_BYTES)
		abort();
	root = json_loadb(stamped, n, JSON_REJECT_DUPLICATES, &error);
	if (root == NULL || !json_is_number(json_object_get(root, "router_outgoing_timestamp")))
		disagree("stamped payload", p->payload, error.text, text, len);
	json_decref(root);
	free(stamped);
}

static void check_one(const char *text, size_t len, size_t backend_max)
{
	struct wire_packet fast, slow;
	char fast_why[256], slow_why[256];
	int fast_rc, slow_rc;

	fast_why[0] = slow_why[0] = '\0';
	fast_rc = wire_parse(text, len, NOW, backend_max, &fast, fast_why, sizeof fast_why);
	slow_rc = wire_parse_json(text, len, NOW, backend_max, &slow, slow_why, sizeof slow_why);
	if (fast_rc != slow_rc)
		disagree("the answer", fast_rc < 0 ? fast_why : "accepted",
			 slow_rc < 0 ? slow_why : "accepted", text, len);
	if (fast_rc < 0) {
		same_str("the error", fast_why, slow_why, text, len);
	} else {
		if (fast.packet.type != slow.packet.type)
			disagree("packet_type", packet_type_name(fast.packet.type),
				 packet_type_name(slow.packet.type), text, len);
		same_str("subject_id", fast.packet.subject_id, slow.packet.subject_id, text, len);
		same_str("status", fast.packet.status, slow.packet.status, text, len);
		same_str("request_id", fast.packet.request_id, slow.packet.request_id, text, len);
		same_num("client_timestamp", fast.packet.client_timestamp,
			 slow.packet.client_timestamp, text, len);
		same_num("server_timestamp", fast.packet.server_timestamp,
			 slow.packet.server_timestamp, text, len);
		same_num("router_incoming_timestamp", fast.packet.router_incoming_timestamp,
			 slow.packet.router_incoming_timestamp, text, len);
		if (fast.len != slow.len || memcmp(fast.payload, slow.payload, slow.len) != 0)
			disagree("payload", fast.payload, slow.payload, text, len);
		if (fast.packet.subject_id == NULL)
			disagree("subject_id present", "", "", text, len);
		check_payload(&slow, text, len);
	}
	wire_packet_free(&fast);
	wire_packet_free(&slow);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* ws.c hands wire_parse() the message's bytes as they came, not
	 * NUL-terminated: a copy of exactly size bytes lets ASan see any
	 * read past them */
	char *text = malloc(size ? size : 1);

	if (text == NULL)
		abort();
	memcpy(text, data, size);
	check_one(text, size, (size_t)-1);
	check_one(text, size, size + 96);
	free(text);
	return 0;
}
