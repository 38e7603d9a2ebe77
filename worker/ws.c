/* WebSocket connections of one worker.
 *
 * Each connection has a 64-bit id (slot index in the low 32 bits, a
 * generation in the high 32) so the supervisor can address it and a stale
 * id never reaches a newer connection. Incoming messages are reassembled up
 * to max_message_bytes (lws hands them over in chunks) and forwarded whole
 * over IPC. Outgoing messages wait in a per-connection queue bounded by
 * max_message_bytes * 4 (at least 1 MiB): one lws_write per WRITEABLE
 * callback, and the buffer written last is kept until the next callback
 * because permessage-deflate may still read it (LWS-NOTES trap 1). */
#include "worker.h"

#include "../core/ipc.h"
#include "../core/log.h"

#include <stdlib.h>
#include <string.h>

struct out_msg {
	struct out_msg *next;
	size_t len;
	unsigned char buf[]; /* LWS_PRE bytes of headroom, then the message */
};

struct conn {
	uint64_t id;
	struct lws *wsi;
	char *rx;
	size_t rx_len, rx_cap;
	struct out_msg *head, *tail, *written;
	size_t queued_bytes;
	uint32_t close_code; /* close once the queue is sent */
	int paused;
};

static struct conn **table;
static uint32_t *generations;
static uint32_t table_cap, table_used;
static uint32_t *free_slots;
static uint32_t free_count;
static size_t open_count;

static struct conn *conn_new(struct lws *wsi)
{
	struct conn *c = calloc(1, sizeof *c);
	uint32_t idx;

	if (c == NULL)
		fatal("out of memory");
	if (free_count > 0) {
		idx = free_slots[--free_count];
	} else {
		if (table_used == table_cap) {
			uint32_t cap = table_cap ? table_cap * 2 : 256;
			table = realloc(table, cap * sizeof *table);
			generations = realloc(generations, cap * sizeof *generations);
			free_slots = realloc(free_slots, cap * sizeof *free_slots);
			if (!table || !generations || !free_slots)
				fatal("out of memory");
			memset(generations + table_cap, 0,
			       (cap - table_cap) * sizeof *generations);
			table_cap = cap;
		}
		idx = table_used++;
	}
	generations[idx]++;
	c->id = ((uint64_t)generations[idx] << 32) | idx;
	c->wsi = wsi;
	table[idx] = c;
	open_count++;
	return c;
}

static struct conn *conn_find(uint64_t id)
{
	uint32_t idx = (uint32_t)id;

	if (idx >= table_used || table[idx] == NULL || table[idx]->id != id)
		return NULL;
	return table[idx];
}

static void out_free_list(struct out_msg *m)
{
	while (m != NULL) {
		struct out_msg *next = m->next;
		free(m);
		m = next;
	}
}

static void conn_free(struct conn *c)
{
	uint32_t idx = (uint32_t)c->id;

	table[idx] = NULL;
	free_slots[free_count++] = idx;
	out_free_list(c->head);
	free(c->written);
	free(c->rx);
	free(c);
	open_count--;
}

size_t ws_count(void) { return open_count; }

static size_t send_bound(void)
{
	size_t bound = (size_t)worker_cfg.max_message_bytes * 4;
	return bound < (1 << 20) ? (1 << 20) : bound;
}

void ws_send(uint64_t id, const char *data, size_t len)
{
	struct conn *c = conn_find(id);
	struct out_msg *m;

	if (c == NULL) {
		log_debug("send to conn %llu: gone, dropped", (unsigned long long)id);
		return;
	}
	if (c->close_code != 0)
		return;
	if (c->queued_bytes + len > send_bound()) {
		log_warn("conn %llu reads too slowly (%zu bytes waiting); closing it",
			 (unsigned long long)id, c->queued_bytes);
		ws_close(id, LWS_CLOSE_STATUS_POLICY_VIOLATION);
		return;
	}
	m = malloc(sizeof *m + LWS_PRE + len);
	if (m == NULL)
		fatal("out of memory");
	m->next = NULL;
	m->len = len;
	memcpy(m->buf + LWS_PRE, data, len);
	if (c->tail != NULL)
		c->tail->next = m;
	else
		c->head = m;
	c->tail = m;
	c->queued_bytes += len;
	lws_callback_on_writable(c->wsi);
}

void ws_close(uint64_t id, uint32_t code)
{
	struct conn *c = conn_find(id);

	if (c == NULL || c->close_code != 0)
		return;
	c->close_code = code;
	if (code != LWS_CLOSE_STATUS_GOINGAWAY) {
		/* An error close does not wait for the queue. */
		out_free_list(c->head);
		c->head = c->tail = NULL;
		c->queued_bytes = 0;
	}
	lws_callback_on_writable(c->wsi);
}

void ws_close_all(uint32_t code)
{
	for (uint32_t i = 0; i < table_used; i++)
		if (table[i] != NULL)
			ws_close(table[i]->id, code);
}

void ws_pause_all(int paused)
{
	for (uint32_t i = 0; i < table_used; i++) {
		struct conn *c = table[i];
		if (c != NULL && c->paused != paused) {
			c->paused = paused;
			lws_rx_flow_control(c->wsi, !paused);
		}
	}
}

void ws_free_all(void)
{
	for (uint32_t i = 0; i < table_used; i++)
		if (table[i] != NULL)
			conn_free(table[i]);
	free(table);
	free(generations);
	free(free_slots);
	table = NULL;
	generations = free_slots = NULL;
	table_cap = table_used = free_count = 0;
}

static int close_with(struct lws *wsi, uint32_t code, const char *why)
{
	lws_close_reason(wsi, (enum lws_close_status)code,
			 (unsigned char *)why, strlen(why));
	return -1;
}

static int on_receive(struct lws *wsi, struct conn *c, const void *in, size_t len)
{
	size_t max = (size_t)worker_cfg.max_message_bytes;

	if (lws_frame_is_binary(wsi)) {
		log_info("conn %llu: binary message refused", (unsigned long long)c->id);
		return close_with(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
				  "only text messages are accepted");
	}
	if (c->rx_len + len > max) {
		log_info("conn %llu: message over max_message_bytes (%zu); closing",
			 (unsigned long long)c->id, max);
		return close_with(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
				  "message too large");
	}
	if (c->rx_len + len > c->rx_cap) {
		size_t cap = c->rx_cap ? c->rx_cap : 4096;
		while (cap < c->rx_len + len)
			cap *= 2;
		c->rx = realloc(c->rx, cap);
		if (c->rx == NULL)
			fatal("out of memory");
		c->rx_cap = cap;
	}
	memcpy(c->rx + c->rx_len, in, len);
	c->rx_len += len;
	if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
		return 0;
	ipc_pack_ws_frame(worker_ipc_packer(), c->id, c->rx, c->rx_len);
	worker_ipc_check();
	c->rx_len = 0;
	if (c->rx_cap > 65536) { /* do not keep a huge buffer per connection */
		free(c->rx);
		c->rx = NULL;
		c->rx_cap = 0;
	}
	return 0;
}

static int on_writeable(struct lws *wsi, struct conn *c)
{
	struct out_msg *m;

	free(c->written);
	c->written = NULL;
	m = c->head;
	if (m == NULL) {
		if (c->close_code != 0)
			return close_with(wsi, c->close_code,
					  c->close_code == LWS_CLOSE_STATUS_GOINGAWAY
						  ? "router shutting down"
						  : "closed by the router");
		return 0;
	}
	c->head = m->next;
	if (c->head == NULL)
		c->tail = NULL;
	c->queued_bytes -= m->len;
	c->written = m;
	if (lws_write(wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT) < (int)m->len) {
		log_info("conn %llu: write failed; closing", (unsigned long long)c->id);
		return -1;
	}
	if (c->head != NULL || c->close_code != 0)
		lws_callback_on_writable(wsi);
	return 0;
}

int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
		struct session *s, void *in, size_t len)
{
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		s->conn = conn_new(wsi);
		worker_stats.websockets++;
		ipc_pack_ws_opened(worker_ipc_packer(), s->conn->id);
		worker_ipc_check();
		if (worker_ipc_paused()) {
			s->conn->paused = 1;
			lws_rx_flow_control(wsi, 0);
		}
		return 0;
	case LWS_CALLBACK_RECEIVE:
		return s->conn ? on_receive(wsi, s->conn, in, len) : -1;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return s->conn ? on_writeable(wsi, s->conn) : 0;
	case LWS_CALLBACK_CLOSED:
		if (s->conn != NULL) {
			ipc_pack_ws_closed(worker_ipc_packer(), s->conn->id);
			worker_ipc_check();
			conn_free(s->conn);
			s->conn = NULL;
			worker_stats.websockets--;
		}
		return 0;
	default:
		return 0;
	}
}
