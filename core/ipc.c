#include "ipc.h"

#include "log.h"
#include "xalloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ipc_type_name(enum ipc_type type)
{
	switch (type) {
	case IPC_HELLO_WORKER: return "HELLO_WORKER";
	case IPC_HELLO_SUPERVISOR: return "HELLO_SUPERVISOR";
	case IPC_WS_OPENED: return "WS_OPENED";
	case IPC_WS_CLOSED: return "WS_CLOSED";
	case IPC_WS_PACKET: return "WS_PACKET";
	case IPC_WS_UNSENT: return "WS_UNSENT";
	case IPC_WS_SENT: return "WS_SENT";
	case IPC_UPLOAD_STORED: return "UPLOAD_STORED";
	case IPC_DOWNLOAD_CHECK: return "DOWNLOAD_CHECK";
	case IPC_DOWNLOAD_INFO: return "DOWNLOAD_INFO";
	case IPC_STATS: return "STATS";
	case IPC_METRICS_REQUEST: return "METRICS_REQUEST";
	case IPC_METRICS: return "METRICS";
	case IPC_HTTP_REQUEST: return "HTTP_REQUEST";
	case IPC_VERSION_MISMATCH: return "VERSION_MISMATCH";
	case IPC_HTTP_ANSWER: return "HTTP_ANSWER";
	case IPC_WS_SEND: return "WS_SEND";
	case IPC_WS_CLOSE: return "WS_CLOSE";
	case IPC_DRAIN: return "DRAIN";
	case IPC_CONFIG: return "CONFIG";
	}
	return "unknown";
}

/* ---- encoding ---- */

static int pack_head(msgpack_packer *pk, enum ipc_type type, size_t fields)
{
	if (msgpack_pack_array(pk, fields + 1) < 0)
		return -1;
	return msgpack_pack_uint32(pk, (uint32_t)type);
}

static int pack_bin(msgpack_packer *pk, const void *data, size_t len)
{
	if (msgpack_pack_bin(pk, len) < 0)
		return -1;
	return msgpack_pack_bin_body(pk, data, len);
}

/* A C string (with its NUL) or nil. */
static int pack_cstr(msgpack_packer *pk, const char *s)
{
	size_t len;

	if (s == NULL)
		return msgpack_pack_nil(pk);
	len = strlen(s) + 1;
	if (msgpack_pack_str(pk, len) < 0)
		return -1;
	return msgpack_pack_str_body(pk, s, len);
}

static int pack_str(msgpack_packer *pk, const char *s, size_t len)
{
	if (msgpack_pack_str(pk, len) < 0)
		return -1;
	return msgpack_pack_str_body(pk, s, len);
}

static int pack_double(msgpack_packer *pk, double v)
{
	return isnan(v) ? msgpack_pack_nil(pk) : msgpack_pack_double(pk, v);
}

static int pack_bin_or_nil(msgpack_packer *pk, const void *data, size_t len)
{
	return data == NULL ? msgpack_pack_nil(pk) : pack_bin(pk, data, len);
}

/* The fields of each message, in order (ipc_decode reads them so). */
static int pack_fields(msgpack_packer *pk, const struct ipc_message *m)
{
	switch (m->type) {
	case IPC_HELLO_WORKER:
		return msgpack_pack_uint32(pk, IPC_PROTOCOL_VERSION) < 0 ||
		       msgpack_pack_uint32(pk, m->hello_worker.slot) < 0 ||
		       msgpack_pack_int64(pk, m->hello_worker.pid) < 0 ? -1 : 0;
	case IPC_HELLO_SUPERVISOR:
		return msgpack_pack_uint32(pk, IPC_PROTOCOL_VERSION) < 0 ||
		       msgpack_pack_uint32(pk, m->hello_supervisor.slot) < 0 ||
		       pack_str(pk, m->hello_supervisor.config, m->hello_supervisor.config_len) < 0 ? -1 : 0;
	case IPC_WS_OPENED:
	case IPC_WS_CLOSED:
		return msgpack_pack_uint64(pk, m->ws_conn.conn);
	case IPC_WS_PACKET: {
		const struct packet *p = &m->ws_packet.packet;

		return msgpack_pack_uint64(pk, m->ws_packet.conn) < 0 ||
		       msgpack_pack_uint32(pk, (uint32_t)p->type) < 0 ||
		       pack_cstr(pk, p->subject_id) < 0 ||
		       pack_cstr(pk, p->status) < 0 ||
		       pack_cstr(pk, p->request_id) < 0 ||
		       pack_double(pk, p->client_timestamp) < 0 ||
		       pack_double(pk, p->server_timestamp) < 0 ||
		       pack_double(pk, p->router_incoming_timestamp) < 0 ||
		       pack_bin(pk, p->payload, p->len) < 0 ? -1 : 0;
	}
	case IPC_WS_UNSENT:
	case IPC_WS_SENT:
		return msgpack_pack_uint64(pk, m->ws_written.conn) < 0 ||
		       msgpack_pack_uint64(pk, m->ws_written.seq) < 0 ? -1 : 0;
	case IPC_HTTP_REQUEST:
		return msgpack_pack_uint64(pk, m->http_request.req) < 0 ||
		       msgpack_pack_uint32(pk, m->http_request.flags) < 0 ||
		       pack_cstr(pk, m->http_request.agent_id) < 0 ||
		       pack_cstr(pk, m->http_request.request_id) < 0 ||
		       pack_bin(pk, m->http_request.packet, m->http_request.len) < 0 ? -1 : 0;
	case IPC_VERSION_MISMATCH:
		return pack_cstr(pk, m->version_mismatch.version) < 0 ||
		       pack_bin(pk, m->version_mismatch.packet, m->version_mismatch.len) < 0 ? -1 : 0;
	case IPC_UPLOAD_STORED:
		return pack_cstr(pk, m->upload_stored.stored) < 0 ||
		       pack_cstr(pk, m->upload_stored.original) < 0 ||
		       pack_cstr(pk, m->upload_stored.field) < 0 ||
		       pack_cstr(pk, m->upload_stored.agent_id) < 0 ||
		       msgpack_pack_uint64(pk, m->upload_stored.size) < 0 ||
		       msgpack_pack_uint64(pk, m->upload_stored.dev) < 0 ||
		       msgpack_pack_uint64(pk, m->upload_stored.ino) < 0 ? -1 : 0;
	case IPC_DOWNLOAD_CHECK:
		return msgpack_pack_uint64(pk, m->download_check.req) < 0 ||
		       pack_cstr(pk, m->download_check.stored) < 0 ? -1 : 0;
	case IPC_STATS:
		return pack_bin(pk, m->stats.bytes, sizeof(struct worker_stats));
	case IPC_METRICS_REQUEST:
		return msgpack_pack_uint64(pk, m->metrics_request.req);
	case IPC_METRICS:
		return msgpack_pack_uint64(pk, m->metrics.req) < 0 ||
		       pack_bin(pk, m->metrics.text, m->metrics.len) < 0 ? -1 : 0;
	case IPC_WS_SEND:
		return msgpack_pack_uint64(pk, m->ws_send.conn) < 0 ||
		       msgpack_pack_uint64(pk, m->ws_send.seq) < 0 ||
		       pack_double(pk, m->ws_send.answers) < 0 ||
		       pack_bin(pk, m->ws_send.packet, m->ws_send.len) < 0 ? -1 : 0;
	case IPC_WS_CLOSE:
		return msgpack_pack_uint64(pk, m->ws_close.conn) < 0 ||
		       msgpack_pack_uint32(pk, m->ws_close.code) < 0 ? -1 : 0;
	case IPC_DRAIN:
		return 0;
	case IPC_CONFIG:
		return pack_str(pk, m->config.text, m->config.len);
	case IPC_HTTP_ANSWER:
		return msgpack_pack_uint64(pk, m->http_answer.req) < 0 ||
		       msgpack_pack_uint32(pk, m->http_answer.status) < 0 ||
		       pack_bin_or_nil(pk, m->http_answer.body, m->http_answer.len) < 0 ? -1 : 0;
	case IPC_DOWNLOAD_INFO:
		return msgpack_pack_uint64(pk, m->download_info.req) < 0 ||
		       msgpack_pack_uint32(pk, m->download_info.found ? 1 : 0) < 0 ||
		       msgpack_pack_uint64(pk, m->download_info.dev) < 0 ||
		       msgpack_pack_uint64(pk, m->download_info.ino) < 0 ? -1 : 0;
	}
	return -1;
}

/* Fields per message type, after the type itself. */
static int field_count(enum ipc_type type)
{
	switch (type) {
	case IPC_DRAIN: return 0;
	case IPC_WS_OPENED: case IPC_WS_CLOSED: case IPC_STATS: case IPC_METRICS_REQUEST:
	case IPC_CONFIG: return 1;
	case IPC_WS_UNSENT: case IPC_WS_SENT: case IPC_VERSION_MISMATCH:
	case IPC_DOWNLOAD_CHECK: case IPC_METRICS: case IPC_WS_CLOSE: return 2;
	case IPC_HELLO_WORKER: case IPC_HELLO_SUPERVISOR: case IPC_HTTP_ANSWER: return 3;
	case IPC_WS_SEND: case IPC_DOWNLOAD_INFO: return 4;
	case IPC_HTTP_REQUEST: return 5;
	case IPC_UPLOAD_STORED: return 7;
	case IPC_WS_PACKET: return 9;
	}
	return -1;
}

int ipc_pack(msgpack_packer *pk, const struct ipc_message *m)
{
	int n = field_count(m->type);

	if (n < 0 || pack_head(pk, m->type, (size_t)n) < 0)
		return -1;
	return pack_fields(pk, m);
}

/* ---- decoding: checked getters over the message's array ---- */

struct fields {
	const msgpack_object *item;
	uint32_t count;
	uint32_t next;
	char *err;
	size_t errlen;
	enum ipc_type type;
};

static int field_fail(struct fields *f, const char *what)
{
	snprintf(f->err, f->errlen, "%s: field %u: %s", ipc_type_name(f->type),
		 f->next, what);
	return -1;
}

static const msgpack_object *field_next(struct fields *f)
{
	if (f->next >= f->count)
		return NULL;
	return &f->item[f->next++];
}

static int get_u64(struct fields *f, uint64_t max, uint64_t *out)
{
	const msgpack_object *o = field_next(f);

	if (o == NULL)
		return field_fail(f, "missing");
	if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max)
		return field_fail(f, "expected an unsigned integer in range");
	*out = o->via.u64;
	return 0;
}

static int get_u32(struct fields *f, uint32_t *out)
{
	uint64_t v = 0;

	if (get_u64(f, UINT32_MAX, &v) < 0)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int get_i64(struct fields *f, int64_t *out)
{
	const msgpack_object *o = field_next(f);

	if (o == NULL)
		return field_fail(f, "missing");
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
		*out = (int64_t)o->via.u64;
	else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		*out = o->via.i64;
	else
		return field_fail(f, "expected an integer");
	return 0;
}

static int get_bytes(struct fields *f, msgpack_object_type type,
		     const char **data, size_t *len)
{
	const msgpack_object *o = field_next(f);

	if (o == NULL)
		return field_fail(f, "missing");
	if (o->type != type)
		return field_fail(f, type == MSGPACK_OBJECT_BIN ? "expected bin"
								: "expected str");
	if (type == MSGPACK_OBJECT_BIN) {
		*data = o->via.bin.ptr;
		*len = o->via.bin.size;
	} else {
		*data = o->via.str.ptr;
		*len = o->via.str.size;
	}
	/* msgpack-c leaves an empty one whatever pointer its parser had, NULL
	 * at the start of a message: present and empty is not nil's NULL */
	if (*len == 0)
		*data = "";
	return 0;
}

/* A C string sent with its NUL, or nil (NULL) when nil_ok. */
static int get_cstr(struct fields *f, int nil_ok, const char **out)
{
	const msgpack_object *o = field_next(f);

	if (o == NULL)
		return field_fail(f, "missing");
	if (o->type == MSGPACK_OBJECT_NIL && nil_ok) {
		*out = NULL;
		return 0;
	}
	if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
	    o->via.str.ptr[o->via.str.size - 1] != '\0' ||
	    memchr(o->via.str.ptr, '\0', o->via.str.size) !=
		    o->via.str.ptr + o->via.str.size - 1)
		return field_fail(f, "expected a NUL-terminated string");
	*out = o->via.str.ptr;
	return 0;
}

static int get_double(struct fields *f, double *out)
{
	const msgpack_object *o = field_next(f);

	if (o == NULL)
		return field_fail(f, "missing");
	if (o->type == MSGPACK_OBJECT_NIL)
		*out = NAN;
	else if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32)
		*out = o->via.f64;
	else
		return field_fail(f, "expected a float or nil");
	return 0;
}

static int get_bin_or_nil(struct fields *f, const char **data, size_t *len)
{
	if (f->next < f->count && f->item[f->next].type == MSGPACK_OBJECT_NIL) {
		f->next++;
		*data = NULL;
		*len = 0;
		return 0;
	}
	return get_bytes(f, MSGPACK_OBJECT_BIN, data, len);
}

static int get_end(struct fields *f)
{
	if (f->next != f->count)
		return field_fail(f, "unexpected extra field");
	return 0;
}

/* Each message's fields, as pack_fields() writes them. */
static int decode_fields(struct fields *f, struct ipc_message *m)
{
	switch (m->type) {
	case IPC_HELLO_WORKER:
		return get_u32(f, &m->hello_worker.version) < 0 ||
		       get_u32(f, &m->hello_worker.slot) < 0 ||
		       get_i64(f, &m->hello_worker.pid) < 0 ? -1 : 0;
	case IPC_HELLO_SUPERVISOR:
		return get_u32(f, &m->hello_supervisor.version) < 0 ||
		       get_u32(f, &m->hello_supervisor.slot) < 0 ||
		       get_bytes(f, MSGPACK_OBJECT_STR, &m->hello_supervisor.config,
				 &m->hello_supervisor.config_len) < 0 ? -1 : 0;
	case IPC_WS_OPENED:
	case IPC_WS_CLOSED:
		return get_u64(f, UINT64_MAX, &m->ws_conn.conn);
	case IPC_WS_PACKET: {
		struct packet *p = &m->ws_packet.packet;
		uint32_t type;

		if (get_u64(f, UINT64_MAX, &m->ws_packet.conn) < 0 || get_u32(f, &type) < 0)
			return -1;
		p->type = type < PKT_TYPE_COUNT ? (enum packet_type)type : PKT_UNKNOWN;
		return get_cstr(f, 1, &p->subject_id) < 0 ||
		       get_cstr(f, 1, &p->status) < 0 ||
		       get_cstr(f, 1, &p->request_id) < 0 ||
		       get_double(f, &p->client_timestamp) < 0 ||
		       get_double(f, &p->server_timestamp) < 0 ||
		       get_double(f, &p->router_incoming_timestamp) < 0 ||
		       get_bytes(f, MSGPACK_OBJECT_BIN, &p->payload, &p->len) < 0 ? -1 : 0;
	}
	case IPC_WS_UNSENT:
	case IPC_WS_SENT:
		return get_u64(f, UINT64_MAX, &m->ws_written.conn) < 0 ||
		       get_u64(f, UINT64_MAX, &m->ws_written.seq) < 0 ? -1 : 0;
	case IPC_HTTP_REQUEST:
		return get_u64(f, UINT64_MAX, &m->http_request.req) < 0 ||
		       get_u32(f, &m->http_request.flags) < 0 ||
		       get_cstr(f, 1, &m->http_request.agent_id) < 0 ||
		       get_cstr(f, 1, &m->http_request.request_id) < 0 ||
		       get_bytes(f, MSGPACK_OBJECT_BIN, &m->http_request.packet,
				 &m->http_request.len) < 0 ? -1 : 0;
	case IPC_VERSION_MISMATCH:
		return get_cstr(f, 0, &m->version_mismatch.version) < 0 ||
		       get_bytes(f, MSGPACK_OBJECT_BIN, &m->version_mismatch.packet,
				 &m->version_mismatch.len) < 0 ? -1 : 0;
	case IPC_UPLOAD_STORED:
		return get_cstr(f, 0, &m->upload_stored.stored) < 0 ||
		       get_cstr(f, 0, &m->upload_stored.original) < 0 ||
		       get_cstr(f, 0, &m->upload_stored.field) < 0 ||
		       get_cstr(f, 1, &m->upload_stored.agent_id) < 0 ||
		       get_u64(f, INT64_MAX, &m->upload_stored.size) < 0 ||
		       get_u64(f, UINT64_MAX, &m->upload_stored.dev) < 0 ||
		       get_u64(f, UINT64_MAX, &m->upload_stored.ino) < 0 ? -1 : 0;
	case IPC_DOWNLOAD_CHECK:
		return get_u64(f, UINT64_MAX, &m->download_check.req) < 0 ||
		       get_cstr(f, 0, &m->download_check.stored) < 0 ? -1 : 0;
	case IPC_STATS: {
		const char *data;
		size_t len;

		if (get_bytes(f, MSGPACK_OBJECT_BIN, &data, &len) < 0)
			return -1;
		if (len != sizeof(struct worker_stats))
			return field_fail(f, "stats of the wrong size");
		m->stats.bytes = data;
		return 0;
	}
	case IPC_METRICS_REQUEST:
		return get_u64(f, UINT64_MAX, &m->metrics_request.req);
	case IPC_METRICS:
		return get_u64(f, UINT64_MAX, &m->metrics.req) < 0 ||
		       get_bytes(f, MSGPACK_OBJECT_BIN, &m->metrics.text, &m->metrics.len) < 0 ? -1 : 0;
	case IPC_WS_SEND:
		return get_u64(f, UINT64_MAX, &m->ws_send.conn) < 0 ||
		       get_u64(f, UINT64_MAX, &m->ws_send.seq) < 0 ||
		       get_double(f, &m->ws_send.answers) < 0 ||
		       get_bytes(f, MSGPACK_OBJECT_BIN, &m->ws_send.packet, &m->ws_send.len) < 0 ? -1 : 0;
	case IPC_WS_CLOSE:
		if (get_u64(f, UINT64_MAX, &m->ws_close.conn) < 0 ||
		    get_u32(f, &m->ws_close.code) < 0)
			return -1;
		if (m->ws_close.code < 1000 || m->ws_close.code > 4999)
			return field_fail(f, "close code out of range");
		return 0;
	case IPC_DRAIN:
		return 0;
	case IPC_CONFIG:
		return get_bytes(f, MSGPACK_OBJECT_STR, &m->config.text, &m->config.len);
	case IPC_HTTP_ANSWER:
		if (get_u64(f, UINT64_MAX, &m->http_answer.req) < 0 ||
		    get_u32(f, &m->http_answer.status) < 0 ||
		    get_bin_or_nil(f, &m->http_answer.body, &m->http_answer.len) < 0)
			return -1;
		if (m->http_answer.status < 100 || m->http_answer.status > 599)
			return field_fail(f, "HTTP status out of range");
		return 0;
	case IPC_DOWNLOAD_INFO: {
		uint32_t found;

		if (get_u64(f, UINT64_MAX, &m->download_info.req) < 0 || get_u32(f, &found) < 0)
			return -1;
		m->download_info.found = found != 0;
		return get_u64(f, UINT64_MAX, &m->download_info.dev) < 0 ||
		       get_u64(f, UINT64_MAX, &m->download_info.ino) < 0 ? -1 : 0;
	}
	}
	return field_fail(f, "unknown message type");
}

int ipc_decode(const msgpack_object *obj, struct ipc_message *msg, char *err,
	       size_t errlen)
{
	struct fields f = { .err = err, .errlen = errlen };
	uint32_t type;

	memset(msg, 0, sizeof *msg);
	if (obj->type != MSGPACK_OBJECT_ARRAY || obj->via.array.size < 1) {
		snprintf(err, errlen, "message is not a non-empty array");
		return -1;
	}
	f.item = obj->via.array.ptr;
	f.count = obj->via.array.size;
	if (get_u32(&f, &type) < 0) {
		snprintf(err, errlen, "message type is not an integer");
		return -1;
	}
	f.type = msg->type = (enum ipc_type)type;
	if (field_count(msg->type) < 0) {
		snprintf(err, errlen, "unknown message type %u", type);
		return -1;
	}
	if (decode_fields(&f, msg) < 0)
		return -1;
	return get_end(&f);
}

/* ---- the incremental reader ----
 *
 * msgpack-c's unpacker allocates an array's or a map's elements
 * (count * sizeof(msgpack_object)) as soon as it meets the container's
 * header, before any element has arrived: five bytes (0xdd and a 32-bit
 * count) made it allocate gigabytes, and the reader's bound, checked on
 * the bytes that had arrived, came too late. So the reader walks each
 * message's headers itself first (scan_message()) and hands msgpack only
 * complete messages whose declared sizes it has checked:
 * - the bytes a message declares (its headers, string and binary bodies,
 *   and at least one byte for each element still to come) must fit the
 *   bound, which refuses a message from the header that breaks it;
 * - the values a message declares, all containers included, are at most
 *   READER_MAX_VALUES: every IPC message is one flat array of a dozen
 *   fields, so whatever msgpack allocates for a message stays small,
 *   whatever the bound (max_message_bytes may be 1 GiB). */

#define READER_MAX_VALUES 1024

struct ipc_reader {
	msgpack_unpacker unpacker;
	msgpack_unpacked result;
	size_t max_message;
	/* the message at the unpacker's offset, as far as it is checked */
	size_t scanned;  /* bytes: whole values (headers and bodies) */
	uint64_t unread; /* values declared and not scanned yet */
	uint64_t values; /* values declared so far, the message included */
};

static void scan_reset(struct ipc_reader *r)
{
	r->scanned = 0;
	r->unread = 1;
	r->values = 1;
}

struct ipc_reader *ipc_reader_new(size_t max_message)
{
	struct ipc_reader *r = xcalloc(1, sizeof *r);

	if (!msgpack_unpacker_init(&r->unpacker, 64 * 1024))
		fatal("out of memory");
	msgpack_unpacked_init(&r->result);
	r->max_message = max_message;
	scan_reset(r);
	return r;
}

void ipc_reader_free(struct ipc_reader *r)
{
	if (r == NULL)
		return;
	msgpack_unpacked_destroy(&r->result);
	msgpack_unpacker_destroy(&r->unpacker);
	free(r);
}

void ipc_reader_raise_max(struct ipc_reader *r, size_t max_message)
{
	if (max_message > r->max_message)
		ipc_reader_set_max(r, max_message);
}

void ipc_reader_set_max(struct ipc_reader *r, size_t max_message)
{
	r->max_message = max_message;
}

char *ipc_reader_buffer(struct ipc_reader *r, size_t want)
{
	if (msgpack_unpacker_buffer_capacity(&r->unpacker) < want &&
	    !msgpack_unpacker_reserve_buffer(&r->unpacker, want))
		fatal("out of memory");
	return msgpack_unpacker_buffer(&r->unpacker);
}

void ipc_reader_consumed(struct ipc_reader *r, size_t n)
{
	msgpack_unpacker_buffer_consumed(&r->unpacker, n);
}

/* A big-endian length of n bytes. */
static uint64_t load_be(const unsigned char *p, size_t n)
{
	uint64_t v = 0;

	for (size_t i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/* The header of the msgpack value at p (avail bytes there), as msgpack-c
 * reads it: its length, the bytes of body after it and the elements it
 * declares (twice the entries of a map). Returns 1, 0 when the header is
 * not all there yet, -1 for a byte that starts no value (0xc1). */
static int value_header(const unsigned char *p, size_t avail, size_t *head,
			uint64_t *body, uint64_t *count)
{
	unsigned c = p[0];
	size_t n = 0; /* bytes of the length field */

	*head = 1;
	*body = 0;
	*count = 0;
	if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
		return 1;
	if (c <= 0x8f) {
		*count = 2 * (uint64_t)(c & 0x0f);
		return 1;
	}
	if (c <= 0x9f) {
		*count = c & 0x0f;
		return 1;
	}
	if (c <= 0xbf) {
		*body = c & 0x1f;
		return 1;
	}
	switch (c) {
	case 0xc4: case 0xc5: case 0xc6: /* bin 8, 16, 32 */
		n = (size_t)1 << (c - 0xc4);
		break;
	case 0xc7: case 0xc8: case 0xc9: /* ext 8, 16, 32: type byte + data */
		n = (size_t)1 << (c - 0xc7);
		*body = 1;
		break;
	case 0xca: *body = 4; return 1; /* float 32 */
	case 0xcb: *body = 8; return 1; /* float 64 */
	case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8..64 */
		*body = (uint64_t)1 << (c - 0xcc);
		return 1;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: /* int 8..64 */
		*body = (uint64_t)1 << (c - 0xd0);
		return 1;
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext 1..16 */
		*body = ((uint64_t)1 << (c - 0xd4)) + 1;
		return 1;
	case 0xd9: case 0xda: case 0xdb: /* str 8, 16, 32 */
		n = (size_t)1 << (c - 0xd9);
		break;
	case 0xdc: case 0xdd: /* array 16, 32 */
	case 0xde: case 0xdf: /* map 16, 32 */
		n = c & 1 ? 4 : 2;
		break;
	default: /* 0xc1 */
		return -1;
	}
	*head = 1 + n;
	if (avail < *head)
		return 0;
	if (c >= 0xdc)
		*count = load_be(p + 1, n) * (c >= 0xde ? 2 : 1);
	else
		*body += load_be(p + 1, n);
	return 1;
}

/* Check the message at the unpacker's offset as far as its bytes are
 * there, from where the last call stopped. Returns 1 when it is complete
 * (r->scanned bytes), 0 when more bytes are needed, -1 when it is refused
 * (err says why). */
static int scan_message(struct ipc_reader *r, char *err, size_t errlen)
{
	const unsigned char *msg =
		(const unsigned char *)r->unpacker.buffer + r->unpacker.off;
	size_t avail = r->unpacker.used - r->unpacker.off;

	while (r->unread > 0) {
		size_t head;
		uint64_t body, count, declared;
		int rc;

		if (r->scanned == avail)
			return 0;
		rc = value_header(msg + r->scanned, avail - r->scanned, &head, &body, &count);
		if (rc < 0) {
			snprintf(err, errlen, "msgpack parse error");
			return -1;
		}
		if (rc == 0)
			return 0;
		/* the least the message can be: what is scanned, this value,
		 * and a byte for each value still to come (none overflows:
		 * each term is below 2^34) */
		declared = (uint64_t)r->scanned + head + body + (r->unread - 1) + count;
		if (declared > r->max_message) {
			snprintf(err, errlen, "message of at least %llu bytes exceeds the "
				 "bound of %zu bytes", (unsigned long long)declared,
				 r->max_message);
			return -1;
		}
		if (r->values + count > READER_MAX_VALUES) {
			snprintf(err, errlen, "message of %llu values exceeds the bound of "
				 "%d values", (unsigned long long)(r->values + count),
				 READER_MAX_VALUES);
			return -1;
		}
		if (avail - r->scanned < head + body)
			return 0; /* the body is still on its way */
		r->scanned += head + (size_t)body;
		r->unread = r->unread - 1 + count;
		r->values += count;
	}
	return 1;
}

/* The bytes a message carries besides IPC_MESSAGE_OVERHEAD. */
size_t ipc_payload_len(const struct ipc_message *m)
{
	switch (m->type) {
	case IPC_HELLO_SUPERVISOR: return m->hello_supervisor.config_len;
	case IPC_WS_PACKET: return m->ws_packet.packet.len;
	case IPC_HTTP_REQUEST: return m->http_request.len;
	case IPC_VERSION_MISMATCH: return m->version_mismatch.len;
	case IPC_STATS: return sizeof(struct worker_stats);
	case IPC_METRICS: return m->metrics.len;
	case IPC_WS_SEND: return m->ws_send.len;
	case IPC_CONFIG: return m->config.len;
	case IPC_HTTP_ANSWER: return m->http_answer.len;
	default: return 0;
	}
}

int ipc_reader_next(struct ipc_reader *r, struct ipc_message *msg, char *err,
		    size_t errlen)
{
	msgpack_unpack_return ret;
	size_t off = r->unpacker.off;
	int rc = scan_message(r, err, errlen);

	if (rc <= 0)
		return rc;
	ret = msgpack_unpacker_next(&r->unpacker, &r->result);
	switch (ret) {
	case MSGPACK_UNPACK_SUCCESS:
		if (r->unpacker.off - off != r->scanned) {
			snprintf(err, errlen, "msgpack read %zu bytes of a message of %zu",
				 r->unpacker.off - off, r->scanned);
			return -1;
		}
		scan_reset(r);
		if (ipc_decode(&r->result.data, msg, err, errlen) < 0)
			return -1;
		if (ipc_payload_len(msg) + IPC_MESSAGE_OVERHEAD > r->max_message) {
			snprintf(err, errlen, "%s of %zu bytes exceeds the bound of %zu",
				 ipc_type_name(msg->type), ipc_payload_len(msg), r->max_message);
			return -1;
		}
		return 1;
	case MSGPACK_UNPACK_CONTINUE:
		/* scan_message() saw a complete message: it and msgpack disagree */
		snprintf(err, errlen, "msgpack wants more of a complete message of %zu bytes",
			 r->scanned);
		return -1;
	case MSGPACK_UNPACK_PARSE_ERROR:
		snprintf(err, errlen, "msgpack parse error");
		return -1;
	case MSGPACK_UNPACK_NOMEM_ERROR:
		/* msgpack-c nests at most 32 containers deep */
		snprintf(err, errlen, "msgpack value nested too deeply");
		return -1;
	default:
		snprintf(err, errlen, "msgpack unpacker error %d", (int)ret);
		return -1;
	}
}
