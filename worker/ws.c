/* WebSocket connections of one worker.
 *
 * Each connection has a 64-bit id from an idtable, so the supervisor can
 * address it and a stale id never reaches a newer connection. Incoming
 * messages are reassembled up to max_message_bytes (lws hands them over in
 * chunks), parsed and validated (wire.c) and forwarded over IPC as routing
 * fields plus the packet's bytes; an invalid packet is dropped and logged
 * (once per connection), and the connection stays open.
 *
 * Outgoing packets wait in a per-connection queue and are written while
 * the socket takes them, stamped with router_outgoing_timestamp as they
 * go; each write is reported to the supervisor (WS_SENT, the last seq
 * written), which keeps every packet until then and sends at most
 * IPC_SEND_WINDOW bytes ahead of the writes, so the queue stays small
 * (its bound, send_bound(), only stops a peer that never reads the answers
 * to its own heartbeats). A connection that is closing takes nothing more:
 * WS_UNSENT tells the supervisor, whose copies wait for the destination's
 * next connection; what was queued here when a connection closes is
 * dropped, and the supervisor (WS_CLOSED) sends it again later. The
 * router does not offer permessage-deflate, which would keep reading a
 * written buffer (LWS-NOTES trap 1). */
#include "worker.h"

#include "../core/buf.h"
#include "../core/cidr.h"
#include "../core/clock.h"
#include "../core/idtable.h"
#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/map.h"
#include "../core/wsframe.h"
#include "../core/xalloc.h"
#include "wire.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct out_msg {
	struct out_msg *next;
	uint64_t seq; /* 0: nobody waits for it (heartbeat answers) */
	double answers; /* a heartbeat's answer: when the heartbeat arrived */
	size_t len;
	char payload[];
};

struct conn {
	uint64_t id;
	struct lws *wsi;
	struct buf rx; /* a message that came in pieces, until its last */
	struct out_msg *head, *tail;
	size_t queued_bytes;
	uint32_t close_code; /* close once the queue is sent */
	int paused;
	int backend; /* carried the backend's alive: writes reported at once */
	int may_be_backend; /* its client's address is in backend_allow */
	uint64_t unreported; /* written, maybe partly held by lws: not reported yet */
	uint32_t agents[8]; /* hashes of the agent ids it said alive for */
	unsigned nagents;
	int agents_warned;
	char client[64];    /* that address, for the log */
	int warned; /* an invalid packet was logged */
	uint64_t invalid_packets;
};

_Static_assert(WIRE_OUTGOING_STAMP_BYTES <= IPC_STAMP_BYTES,
	       "the supervisor leaves IPC_STAMP_BYTES for the stamp");

/* dist/lws-patches/0003: lws still holds the rest of a short send. */
int lws_mr_has_buffered_out(struct lws *wsi);

static const struct worker_env *env; /* ws_init() */
static struct idtable conns;

/* The frames of one write, for any connection, after LWS_PRE bytes of
 * room for lws: lws_write() is done with the buffer when it returns (it
 * copies what the kernel did not take). */
static struct buf batch;

void ws_init(const struct worker_env *e)
{
	env = e;
}

static struct conn *conn_new(struct lws *wsi)
{
	struct conn *c = xcalloc(1, sizeof *c);

	c->wsi = wsi;
	c->id = idtable_add(&conns, c);
	return c;
}

static struct conn *conn_find(uint64_t id)
{
	return idtable_get(&conns, id);
}

/* The connection cannot take packet seq: the supervisor keeps it for the
 * destination's next connection and sends nothing more here. */
static void refuse_send(uint64_t conn, uint64_t seq)
{
	struct ipc_message m = { .type = IPC_WS_UNSENT };

	if (seq == 0)
		return;
	m.ws_written.conn = conn;
	m.ws_written.seq = seq;
	env->send(&m);
}

/* What was not written: the supervisor still has it (see the top). */
static void drop_queue(struct conn *c)
{
	while (c->head != NULL) {
		struct out_msg *m = c->head;
		c->head = m->next;
		free(m);
	}
	c->tail = NULL;
	c->queued_bytes = 0;
}

static void conn_free(struct conn *c)
{
	idtable_del(&conns, c->id);
	drop_queue(c);
	buf_free(&c->rx);
	free(c);
}

size_t ws_count(void) { return conns.count; }

/* The supervisor's window and one packet beyond it (the window always
 * lets one go, whatever its size: a packet from an agent, at most
 * max_message_bytes, or one built for the backend, at most
 * backend_max_frame_bytes), plus room for the answers to the peer's own
 * heartbeats. */
static size_t send_bound(void)
{
	int64_t packet = env->cfg->max_message_bytes > env->cfg->backend_max_frame_bytes
				 ? env->cfg->max_message_bytes
				 : env->cfg->backend_max_frame_bytes;

	return IPC_SEND_WINDOW + 2 * (size_t)packet + (1 << 20);
}

static void enqueue(uint64_t id, uint64_t seq, double answers, const char *data,
		    size_t len)
{
	struct conn *c = conn_find(id);
	struct out_msg *m;

	/* A connection draining (1001) still writes its queue before it
	 * closes: a send joins it, written or not as the queue is (refused,
	 * the supervisor would send again what this queue still writes). */
	if (c == NULL || (c->close_code != 0 && c->close_code != LWS_CLOSE_STATUS_GOINGAWAY)) {
		log_debug("send to conn %llu: closed, refused", (unsigned long long)id);
		refuse_send(id, seq);
		return;
	}
	if (c->queued_bytes + len > send_bound()) {
		log_warn("conn %llu reads too slowly (%zu bytes waiting); closing it",
			 (unsigned long long)id, c->queued_bytes);
		refuse_send(id, seq);
		ws_close(id, LWS_CLOSE_STATUS_POLICY_VIOLATION);
		return;
	}
	m = xmalloc(sizeof *m + len);
	m->next = NULL;
	m->seq = seq;
	m->answers = answers;
	m->len = len;
	memcpy(m->payload, data, len);
	if (c->tail != NULL)
		c->tail->next = m;
	else
		c->head = m;
	c->tail = m;
	c->queued_bytes += len;
	lws_callback_on_writable(c->wsi);
}

void ws_send(uint64_t id, uint64_t seq, const char *data, size_t len)
{
	enqueue(id, seq, 0, data, len);
}

void ws_send_answer(uint64_t id, double received, const char *data, size_t len)
{
	enqueue(id, 0, received, data, len);
}

void ws_close(uint64_t id, uint32_t code)
{
	struct conn *c = conn_find(id);

	if (c == NULL || c->close_code != 0)
		return;
	c->close_code = code;
	if (code != LWS_CLOSE_STATUS_GOINGAWAY)
		drop_queue(c); /* an error close does not wait for the queue */
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
	ws_buckets_free();
	buf_free(&batch);
}

static int close_with(struct lws *wsi, uint32_t code, const char *why)
{
	lws_close_reason(wsi, (enum lws_close_status)code,
			 (unsigned char *)why, strlen(why));
	return -1;
}

static const char *fields_too_long(const struct packet *f);

/* ---- who may become the backend (backend_allow, trusted_proxies) ---- */

static struct cidr_list backend_allow, trusted_proxies;
static char parsed_allow[sizeof ((struct config *)0)->backend_allow] = "\x01";
static char parsed_proxies[sizeof ((struct config *)0)->trusted_proxies] = "\x01";
static struct {
	char addr[64];
} refused_logged[64]; /* addresses already logged (then only counted) */
static size_t nrefused_logged;

/* The lists as configured now (the config may have been reloaded). */
static void access_lists_update(void)
{
	char err[128];

	if (strcmp(parsed_allow, env->cfg->backend_allow) != 0) {
		if (cidr_list_parse(env->cfg->backend_allow, &backend_allow, err, sizeof err) < 0)
			memset(&backend_allow, 0, sizeof backend_allow); /* checked at load */
		snprintf(parsed_allow, sizeof parsed_allow, "%s", env->cfg->backend_allow);
		nrefused_logged = 0;
	}
	if (strcmp(parsed_proxies, env->cfg->trusted_proxies) != 0) {
		if (cidr_list_parse(env->cfg->trusted_proxies, &trusted_proxies, err,
				    sizeof err) < 0)
			memset(&trusted_proxies, 0, sizeof trusted_proxies);
		snprintf(parsed_proxies, sizeof parsed_proxies, "%s", env->cfg->trusted_proxies);
	}
}

int ws_is_trusted_proxy(const struct sockaddr *sa)
{
	access_lists_update();
	return cidr_list_match_sockaddr(&trusted_proxies, sa);
}

/* The client's address: the peer's, or, when the peer is a trusted proxy,
 * the last address of X-Forwarded-For that is not one (each proxy appends
 * the address it got the request from, so only the right end is known to
 * be true). Writes it as text into c->client and decides may_be_backend. */
static void conn_identify(struct lws *wsi, struct conn *c)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char xff[8192];
	const void *addr;

	access_lists_update();
	snprintf(c->client, sizeof c->client, "unknown");
	if (getpeername(lws_get_socket_fd(wsi), (struct sockaddr *)&ss, &sl) < 0)
		return;
	addr = ss.ss_family == AF_INET ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
				       : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
	if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
		return;
	inet_ntop(ss.ss_family, addr, c->client, sizeof c->client);
	if (!cidr_list_match_sockaddr(&trusted_proxies, (struct sockaddr *)&ss)) {
		c->may_be_backend = cidr_list_match_sockaddr(&backend_allow, (struct sockaddr *)&ss);
		return;
	}
	/* From a trusted proxy, only its header says who the client is: none,
	 * or one too long to read, and the client may not be the backend (the
	 * proxy's own address would let anyone in). */
	if (lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR) <= 0 ||
	    lws_hdr_copy(wsi, xff, sizeof xff, WSI_TOKEN_X_FORWARDED_FOR) <= 0) {
		c->may_be_backend = 0;
		return;
	}
	for (;;) {
		char *comma = strrchr(xff, ','), *hop = comma ? comma + 1 : xff;
		size_t n;

		while (*hop == ' ' || *hop == '\t')
			hop++;
		n = strcspn(hop, " \t");
		hop[n] = '\0';
		if (comma == NULL || !cidr_list_match_text(&trusted_proxies, hop)) {
			snprintf(c->client, sizeof c->client, "%.63s", hop);
			c->may_be_backend = cidr_list_match_text(&backend_allow, hop);
			return;
		}
		*comma = '\0';
	}
}

/* An alive as "mephisto" from an address that may not be the backend:
 * refused (the socket is closed), logged once per address by each worker
 * (the first 64 addresses), counted. */
static int refuse_backend(struct lws *wsi, struct conn *c)
{
	size_t i;

	env->stats->backend_refused++;
	for (i = 0; i < nrefused_logged; i++)
		if (strcmp(refused_logged[i].addr, c->client) == 0)
			break;
	if (i == nrefused_logged) {
		log_warn("conn %llu from %s said it is the Mephisto backend; refused: "
			 "that address is not in backend_allow (%s). Add it there to let "
			 "a remote backend in (%llu refused by this worker so far; each "
			 "address is logged once)", (unsigned long long)c->id, c->client,
			 env->cfg->backend_allow,
			 (unsigned long long)env->stats->backend_refused);
		if (nrefused_logged < sizeof refused_logged / sizeof refused_logged[0])
			snprintf(refused_logged[nrefused_logged++].addr,
				 sizeof refused_logged[0].addr, "%s", c->client);
	}
	return close_with(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION,
			  "this address may not be the Mephisto backend");
}

/* New agent ids per client address: a bucket of max_agents_per_address
 * that refills in a minute, in each worker. The table is emptied when it
 * holds 10,000 addresses (their buckets start full again). */
struct bucket {
	double tokens, at;
};

static struct map *buckets;

static int address_may_add_agent(const char *addr)
{
	double cap = (double)env->cfg->max_agents_per_address, now = clock_epoch();
	struct bucket *b;

	if (buckets == NULL || map_count(buckets) >= 10000) {
		ws_buckets_free();
		buckets = map_new();
	}
	b = map_get(buckets, addr, strlen(addr));
	if (b == NULL) {
		b = xmalloc(sizeof *b);
		b->tokens = cap;
		b->at = now;
		map_put(buckets, addr, strlen(addr), b);
	}
	b->tokens = fmin(cap, b->tokens + (now - b->at) * cap / 60.0);
	b->at = now;
	if (b->tokens < 1)
		return 0;
	b->tokens -= 1;
	return 1;
}

void ws_buckets_free(void)
{
	size_t pos = 0;
	void *value;

	if (buckets == NULL)
		return;
	while (map_next(buckets, &pos, NULL, NULL, &value))
		free(value);
	map_free(buckets);
	buckets = NULL;
}

/* A connection speaks for at most max_agents_per_connection agents (a
 * task page: one, or two across onboarding), and one address brings at
 * most max_agents_per_address new ones a minute: nobody creates agents
 * without end. */
static int agent_allowed(struct conn *c, const char *id)
{
	static double last_address_log;
	uint32_t h = 2166136261u;
	unsigned max = (unsigned)env->cfg->max_agents_per_connection;

	for (const unsigned char *p = (const unsigned char *)id; *p; p++)
		h = (h ^ *p) * 16777619u;
	for (unsigned i = 0; i < c->nagents; i++)
		if (c->agents[i] == h)
			return 1;
	if (c->nagents < max && c->nagents < sizeof c->agents / sizeof c->agents[0]) {
		if (!address_may_add_agent(c->client)) {
			env->stats->agents_refused++;
			if (clock_epoch() - last_address_log >= 60) {
				last_address_log = clock_epoch();
				log_warn("%s: more than max_agents_per_address (%d) new agents "
					 "a minute; dropped (%llu so far in this worker; logged "
					 "once a minute)", c->client,
					 env->cfg->max_agents_per_address,
					 (unsigned long long)env->stats->agents_refused);
			}
			return 0;
		}
		c->agents[c->nagents++] = h;
		return 1;
	}
	env->stats->agents_refused++;
	if (!c->agents_warned) {
		c->agents_warned = 1;
		log_warn("conn %llu from %s: alive for more than max_agents_per_connection "
			 "(%u) agents; dropped (%llu so far in this worker)",
			 (unsigned long long)c->id, c->client, max,
			 (unsigned long long)env->stats->agents_refused);
	}
	return 0;
}

static int forward_packet(struct lws *wsi, struct conn *c, const char *text, size_t len)
{
	struct wire_packet p;
	const char *bound;
	char why[256];
	int rc = wire_parse(text, len, wire_now(),
			    (size_t)env->cfg->backend_max_frame_bytes, &p, why, sizeof why);

	if (rc == 0 && (bound = fields_too_long(&p.packet)) != NULL) {
		snprintf(why, sizeof why, "%s", bound);
		rc = -1;
	}
	if (rc < 0) {
		c->invalid_packets++;
		env->stats->invalid_packets++;
		if (!c->warned) {
			c->warned = 1;
			log_warn("conn %llu: dropped an invalid packet (%s); further ones "
				 "on this connection are only counted",
				 (unsigned long long)c->id, why);
		}
		wire_packet_free(&p);
		return 0;
	}
	if (p.packet.type == PKT_ALIVE && p.packet.subject_id != NULL &&
	    strcmp(p.packet.subject_id, PACKET_MEPHISTO) != 0 && !agent_allowed(c, p.packet.subject_id)) {
		wire_packet_free(&p);
		return 0;
	}
	if (p.packet.type == PKT_ALIVE && p.packet.subject_id != NULL &&
	    strcmp(p.packet.subject_id, PACKET_MEPHISTO) == 0) {
		if (!c->may_be_backend) {
			wire_packet_free(&p);
			return refuse_backend(wsi, c);
		}
		c->backend = 1;
	}
	env->stats->packets_in++;
	{
		struct ipc_message m = { .type = IPC_WS_PACKET };

		m.ws_packet.conn = c->id;
		m.ws_packet.packet = p.packet;
		env->send(&m);
	}
	wire_packet_free(&p);
	return 0;
}

/* Why the packet's routing fields are out of bounds, or NULL. */
static const char *fields_too_long(const struct packet *f)
{
	if (f->subject_id != NULL && strlen(f->subject_id) > PACKET_MAX_ID_BYTES)
		return "subject_id longer than 256 bytes";
	if (f->request_id != NULL && strlen(f->request_id) > PACKET_MAX_ID_BYTES)
		return "request_id longer than 256 bytes";
	if (f->status != NULL && strlen(f->status) > PACKET_MAX_STATUS_BYTES)
		return "data.status longer than 64 bytes";
	return NULL;
}

static int on_receive(struct lws *wsi, struct conn *c, const void *in, size_t len)
{
	size_t max = (size_t)env->cfg->max_message_bytes;
	int rc;

	if (lws_frame_is_binary(wsi)) {
		log_info("conn %llu: binary message refused", (unsigned long long)c->id);
		return close_with(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
				  "only text messages are accepted");
	}
	if (c->rx.len + len > max) {
		log_info("conn %llu: message over max_message_bytes (%zu); closing",
			 (unsigned long long)c->id, max);
		return close_with(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
				  "message too large");
	}
	if (c->rx.len == 0 && lws_is_final_fragment(wsi) &&
	    lws_remaining_packet_payload(wsi) == 0) {
		/* The whole message in one piece (the usual case): parse it
		 * where it is, and keep no buffer for the connection. */
		return forward_packet(wsi, c, in, len);
	}
	buf_append(&c->rx, in, len); /* an empty piece: nothing, and no buffer yet */
	if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
		return 0;
	rc = forward_packet(wsi, c, c->rx.data, c->rx.len);
	/* Messages in pieces are rare: keep no buffer per connection. */
	buf_free(&c->rx);
	return rc;
}

#define BATCH_BYTES (64 * 1024) /* a write stops growing past this */
#define BATCH_KEEP (256 * 1024)  /* a bigger buffer is not kept */

/* Packets up to seq are the kernel's now: the supervisor lets them go
 * (and answers what waited for them). The backend's writes are reported at
 * once, so that a worker killed right after loses as little as it can to
 * a second delivery. */
static void report_written(struct conn *c, uint64_t seq)
{
	struct ipc_message m = { .type = IPC_WS_SENT };

	m.ws_written.conn = c->id;
	m.ws_written.seq = seq;
	env->send(&m);
	if (c->backend)
		env->flush();
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
	int budget = 64, written, choked;
	uint64_t last_seq;

	/* lws calls back once what it kept of a short send is the kernel's */
	if (c->unreported != 0 && !lws_mr_has_buffered_out(wsi)) {
		report_written(c, c->unreported);
		c->unreported = 0;
	}
	while (c->head != NULL && budget > 0) {
		struct out_msg *framed = NULL, **framed_tail = &framed;

		batch.len = 0;
		buf_reserve(&batch, LWS_PRE);
		batch.len = LWS_PRE;
		while (c->head != NULL && budget > 0 && batch.len - LWS_PRE < BATCH_BYTES) {
			struct out_msg *m = c->head;
			unsigned char *frame;
			size_t n, h;

			buf_reserve(&batch, WS_FRAME_HEADER_MAX + m->len + WIRE_OUTGOING_STAMP_BYTES);
			frame = (unsigned char *)batch.data + batch.len;
			n = wire_stamp_outgoing((char *)frame + WS_FRAME_HEADER_MAX, m->payload,
						m->len, wire_now());
			h = ws_text_frame_header(frame, n);
			if (h != WS_FRAME_HEADER_MAX)
				memmove(frame + h, frame + WS_FRAME_HEADER_MAX, n);
			batch.len += h + n;
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
		 * batch taken: the supervisor sends those packets again. */
		written = lws_write(wsi, (unsigned char *)batch.data + LWS_PRE,
				    batch.len - LWS_PRE, LWS_WRITE_RAW) >= 0;
		last_seq = 0;
		while (framed != NULL) {
			struct out_msg *m = framed;

			framed = m->next;
			if (m->seq != 0)
				last_seq = m->seq;
			if (written && m->answers > 0)
				ipc_latency_count(env->stats->heartbeat,
						  &env->stats->heartbeat_sum,
						  fmax(0, wire_now() - m->answers));
			env->stats->packets_out += written;
			free(m);
		}
		/* Reported once the kernel has all of it: after a short send,
		 * lws keeps the rest, and a worker killed now would lose it. */
		choked = lws_send_pipe_choked(wsi);
		if (written && last_seq != 0) {
			if (lws_mr_has_buffered_out(wsi)) {
				c->unreported = last_seq;
			} else {
				report_written(c, last_seq);
				c->unreported = 0;
			}
		}
		if (batch.cap > BATCH_KEEP) /* after a huge message: give it back */
			buf_free(&batch);
		if (!written) {
			log_info("conn %llu: write failed; closing", (unsigned long long)c->id);
			return -1;
		}
		/* Stop at a short send: lws drains what it kept first. */
		if (choked)
			break;
	}
	if (c->head == NULL && c->close_code != 0 && !lws_send_pipe_choked(wsi))
		return close_with(wsi, c->close_code,
				  c->close_code == LWS_CLOSE_STATUS_GOINGAWAY
					  ? "router shutting down" : "closed by the router");
	if (c->head != NULL || c->close_code != 0 || c->unreported != 0)
		lws_callback_on_writable(wsi);
	return 0;
}

int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
		struct session *s, void *in, size_t len)
{
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		s->conn = conn_new(wsi);
		conn_identify(wsi, s->conn);
		env->stats->websockets++;
		env->send(&(struct ipc_message){ .type = IPC_WS_OPENED,
						   .ws_conn = { s->conn->id } });
		if (env->paused()) {
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
			env->send(&(struct ipc_message){ .type = IPC_WS_CLOSED,
							   .ws_conn = { s->conn->id } });
			conn_free(s->conn);
			s->conn = NULL;
			env->stats->websockets--;
		}
		return 0;
	default:
		return 0;
	}
}
