/* WebSocket connections of one worker.
 *
 * Each connection has a 64-bit id from an idtable, so the supervisor can
 * address it and a stale id never reaches a newer connection. Incoming messages are reassembled up
 * to max_message_bytes (lws hands them over in chunks), parsed and
 * validated (wire.c) and forwarded over IPC as routing fields plus the
 * packet's bytes; an invalid packet is dropped and logged (once per
 * connection), and the connection stays open.
 *
 * Outgoing packets wait in a per-connection queue bounded by
 * max_message_bytes * 4 (at least 1 MiB) and are written while the socket
 * takes them, stamped with router_outgoing_timestamp as they go. The
 * router does not offer permessage-deflate, which would keep reading a
 * written buffer (LWS-NOTES trap 1). Packets that cannot be written (the
 * connection closed first) go back to the supervisor (WS_UNSENT), which
 * queues them again for their destination. */
#include "worker.h"

#include "../core/idtable.h"
#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/wsframe.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

struct out_msg {
	struct out_msg *next;
	uint64_t seq;
	char *dest; /* NULL: not to be re-queued (heartbeat answers) */
	size_t len;
	char payload[];
};

struct conn {
	uint64_t id;
	struct lws *wsi;
	char *rx;
	size_t rx_len, rx_cap;
	struct out_msg *head, *tail;
	size_t queued_bytes;
	uint32_t close_code; /* close once the queue is sent */
	int paused;
	int warned; /* an invalid packet was logged */
	uint64_t invalid_packets;
};

static struct idtable conns;

/* The frames of one write, for any connection: lws_write() is done with
 * the buffer when it returns (it copies what the kernel did not take). */
static unsigned char *batch;
static size_t batch_cap;

static struct conn *conn_new(struct lws *wsi)
{
	struct conn *c = calloc(1, sizeof *c);

	if (c == NULL)
		fatal("out of memory");
	c->wsi = wsi;
	c->id = idtable_add(&conns, c);
	return c;
}

static struct conn *conn_find(uint64_t id)
{
	return idtable_get(&conns, id);
}

static void out_free(struct out_msg *m)
{
	free(m->dest);
	free(m);
}

/* Hand a packet that will not be written back to the supervisor. */
static void bounce(struct out_msg *m)
{
	if (m->dest != NULL) {
		ipc_pack_ws_unsent(worker_ipc_packer(), m->dest, m->seq, m->payload, m->len);
		worker_ipc_check();
	}
	out_free(m);
}

static void bounce_queue(struct conn *c)
{
	while (c->head != NULL) {
		struct out_msg *m = c->head;
		c->head = m->next;
		bounce(m);
	}
	c->tail = NULL;
	c->queued_bytes = 0;
}

static void conn_free(struct conn *c)
{
	idtable_del(&conns, c->id);
	bounce_queue(c);
	free(c->rx);
	free(c);
}

size_t ws_count(void) { return conns.count; }

static size_t send_bound(void)
{
	size_t bound = (size_t)worker_cfg.max_message_bytes * 4;
	return bound < (1 << 20) ? (1 << 20) : bound;
}

void ws_send(uint64_t id, const char *dest, uint64_t seq, const char *data,
	     size_t len)
{
	struct conn *c = conn_find(id);
	struct out_msg *m = malloc(sizeof *m + len);

	if (m == NULL)
		fatal("out of memory");
	m->next = NULL;
	m->seq = seq;
	m->dest = dest != NULL && dest[0] != '\0' ? strdup(dest) : NULL;
	m->len = len;
	memcpy(m->payload, data, len);
	if (c == NULL || c->close_code != 0) {
		log_debug("send to conn %llu: closed, handed back",
			  (unsigned long long)id);
		bounce(m);
		return;
	}
	if (c->queued_bytes + len > send_bound()) {
		log_warn("conn %llu reads too slowly (%zu bytes waiting); closing it",
			 (unsigned long long)id, c->queued_bytes);
		bounce(m);
		ws_close(id, LWS_CLOSE_STATUS_POLICY_VIOLATION);
		return;
	}
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
	if (code != LWS_CLOSE_STATUS_GOINGAWAY)
		bounce_queue(c); /* an error close does not wait for the queue */
	lws_callback_on_writable(c->wsi);
}

void ws_close_all(uint32_t code)
{
	uint32_t pos = 0;
	struct conn *c;

	while ((c = idtable_next(&conns, &pos)) != NULL)
		ws_close(c->id, code);
}

void ws_pause_all(int paused)
{
	uint32_t pos = 0;
	struct conn *c;

	while ((c = idtable_next(&conns, &pos)) != NULL) {
		if (c->paused != paused) {
			c->paused = paused;
			lws_rx_flow_control(c->wsi, !paused);
		}
	}
}

void ws_free_all(void)
{
	uint32_t pos = 0;
	struct conn *c;

	while ((c = idtable_next(&conns, &pos)) != NULL)
		conn_free(c);
	idtable_free(&conns);
	free(batch);
	batch = NULL;
	batch_cap = 0;
}

static int close_with(struct lws *wsi, uint32_t code, const char *why)
{
	lws_close_reason(wsi, (enum lws_close_status)code,
			 (unsigned char *)why, strlen(why));
	return -1;
}

static void forward_packet(struct conn *c, const char *text, size_t len)
{
	struct wire_packet p;
	char why[256];

	if (wire_parse(text, len, wire_now(),
		       (size_t)worker_cfg.backend_max_frame_bytes, &p, why, sizeof why) < 0) {
		c->invalid_packets++;
		worker_stats.invalid_packets++;
		if (!c->warned) {
			c->warned = 1;
			log_warn("conn %llu: dropped an invalid packet (%s); further ones "
				 "on this connection are only counted",
				 (unsigned long long)c->id, why);
		}
		wire_packet_free(&p);
		return;
	}
	ipc_pack_ws_packet(worker_ipc_packer(), c->id, &p.f, p.payload, p.len);
	worker_ipc_check();
	wire_packet_free(&p);
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
	if (c->rx_len == 0 && lws_is_final_fragment(wsi) &&
	    lws_remaining_packet_payload(wsi) == 0) {
		/* The whole message in one piece (the usual case): parse it
		 * where it is, and keep no buffer for the connection. */
		forward_packet(c, in, len);
		return 0;
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
	forward_packet(c, c->rx, c->rx_len);
	c->rx_len = 0;
	/* Messages in pieces are rare: keep no buffer per connection. */
	free(c->rx);
	c->rx = NULL;
	c->rx_cap = 0;
	return 0;
}

#define BATCH_BYTES (64 * 1024) /* a write stops growing past this */
#define BATCH_KEEP (256 * 1024)  /* a bigger buffer is not kept */

static void batch_room(size_t need)
{
	if (need <= batch_cap)
		return;
	batch_cap = batch_cap ? batch_cap : 4096;
	while (batch_cap < need)
		batch_cap *= 2;
	batch = realloc(batch, batch_cap); /* keeps the frames already in it */
	if (batch == NULL)
		fatal("out of memory");
}

/* Write queued packets while the socket takes them, at most 64 per
 * callback (fair to the other connections). lws has no call that sends
 * more than one message, and one send() per packet was the largest cost
 * left in the worker (over loopback each send is also the receiver's
 * whole receive path): the packets waiting are framed here, each as
 * lws_write(LWS_WRITE_TEXT) would, and go to lws as one raw write, which
 * keeps lws's handling of short sends (what the kernel does not take, lws
 * sends first, before any frame of its own, such as a close or a pong). */
static int on_writeable(struct lws *wsi, struct conn *c)
{
	int budget = 64, written;

	while (c->head != NULL && budget > 0) {
		struct out_msg *framed = NULL, **framed_tail = &framed;
		size_t used = LWS_PRE;

		while (c->head != NULL && budget > 0 && used - LWS_PRE < BATCH_BYTES) {
			struct out_msg *m = c->head;
			size_t n, h;

			batch_room(used + WS_FRAME_HEADER_MAX + m->len + WIRE_OUTGOING_STAMP_BYTES);
			n = wire_stamp_outgoing((char *)batch + used + WS_FRAME_HEADER_MAX,
						m->payload, m->len, wire_now());
			h = ws_text_frame_header(batch + used, n);
			if (h != WS_FRAME_HEADER_MAX)
				memmove(batch + used + h, batch + used + WS_FRAME_HEADER_MAX, n);
			used += h + n;
			c->head = m->next;
			if (c->head == NULL)
				c->tail = NULL;
			c->queued_bytes -= m->len;
			m->next = NULL; /* kept until the write says where it went */
			*framed_tail = m;
			framed_tail = &m->next;
			budget--;
		}
		/* lws_write() fails only when send() did, with nothing of this
		 * batch taken: those packets go back to the supervisor. */
		written = lws_write(wsi, batch + LWS_PRE, used - LWS_PRE, LWS_WRITE_RAW) >= 0;
		while (framed != NULL) {
			struct out_msg *m = framed;

			framed = m->next;
			if (written)
				out_free(m);
			else
				bounce(m);
		}
		if (batch_cap > BATCH_KEEP) { /* after a huge message: give it back */
			free(batch);
			batch = NULL;
			batch_cap = 0;
		}
		if (!written) {
			log_info("conn %llu: write failed; closing", (unsigned long long)c->id);
			return -1;
		}
		/* Stop at a short send: lws drains what it kept first. */
		if (lws_send_pipe_choked(wsi))
			break;
	}
	if (c->head == NULL && c->close_code != 0 && !lws_send_pipe_choked(wsi))
		return close_with(wsi, c->close_code,
				  c->close_code == LWS_CLOSE_STATUS_GOINGAWAY
					  ? "router shutting down" : "closed by the router");
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
