#include "wire.h"

#include "../core/log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

double wire_now(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
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

int wire_parse(const char *text, size_t len, double now, size_t backend_max,
	       struct wire_packet *out, char *why, size_t whylen)
{
	json_error_t error;
	json_t *root, *type, *subject, *data;
	int data_missing, data_null;

	memset(out, 0, sizeof *out);
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
	out->f.type = (uint32_t)packet_type_parse(json_string_value(type));
	if (out->f.type == PKT_UNKNOWN)
		return fail(why, whylen, "unknown packet_type '%.64s'",
			    json_string_value(type));
	out->f.subject_id = json_string_value(subject);
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
	if (get_timestamp(root, "client_timestamp", &out->f.client_timestamp, why, whylen) < 0 ||
	    get_timestamp(root, "server_timestamp", &out->f.server_timestamp, why, whylen) < 0)
		return -1;
	switch ((enum packet_type)out->f.type) {
	case PKT_UPDATE_STATUS: {
		json_t *status = json_object_get(data, "status");
		if (status != NULL && !json_is_string(status))
			return fail(why, whylen, "%s", "data.status is not a string");
		out->f.status = json_string_value(status);
		break;
	}
	case PKT_AGENT_DETAILS: {
		json_t *id = json_object_get(data, "request_id");
		out->f.request_id = json_is_string(id) ? json_string_value(id)
						       : out->f.subject_id;
		break;
	}
	case PKT_HEARTBEAT:
		/* The answer carries the router's own data. */
		json_object_del(root, "data");
		break;
	default:
		break;
	}
	out->f.router_incoming_timestamp = now;
	if (out->f.type != PKT_HEARTBEAT && !data_null &&
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

		out->payload = malloc(len + n + 3);
		if (out->payload == NULL)
			fatal("out of memory");
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
	if ((out->f.type == PKT_MEPHISTO_BOUND_LIVE_UPDATE || out->f.type == PKT_LOG_ERROR) &&
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
