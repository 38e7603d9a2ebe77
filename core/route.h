/* The routing state machine: every rule of the Mephisto router protocol
 * (../shared/PROTOCOL.md). Events go in (a packet arrived on a connection,
 * a connection closed, an HTTP request arrived, time passed); actions come
 * out (send these bytes on that connection, answer that HTTP request). It
 * does no I/O but its log lines and reads no clock (the time is an
 * argument): the supervisor is thin glue around it, and every rule is
 * unit-testable with a fake clock.
 *
 * Connections are named by (worker slot, connection id); HTTP requests by
 * (worker slot, request id). Times are seconds since the epoch (double).
 *
 * Delivery. Each packet routed to an agent or to the backend gets a
 * sequence number (seq, increasing over the router's life) and joins its
 * destination's queue, where it stays until the worker holding the
 * destination's connection reports it written (route_ws_sent). Packets are
 * sent (ROUTE_SEND) in seq order while the destination has a connection and
 * fewer than window_bytes in flight to it, so a queue drains at the pace of
 * its connection. When the connection goes (closed, its worker gone, or it
 * could not take a packet: route_unsent), what was in flight waits again
 * in place and goes out first, in order, on the destination's next
 * connection: nothing is lost or reordered between processes, and nothing
 * is sent to a connection that cannot take it. A destination without a
 * connection has its queue in the store (ROUTE_CHANGE_QUEUED).
 *
 * Task data is never parsed here: payloads are opaque bytes. */
#ifndef MR_ROUTE_H
#define MR_ROUTE_H

#include "ipc.h" /* IPC_HTTP_* request flags */
#include "packet.h"

#include <stddef.h>
#include <stdint.h>

struct route_config {
	double reconnect_grace;   /* s after a close before "disconnect" (10) */
	double heartbeat_timeout; /* s of heartbeat silence in a live status (15) */
	double request_timeout;   /* s an HTTP request waits for agent_details (30) */
	size_t max_agent_queue;   /* packets waiting per agent */
	size_t max_backend_queue; /* packets waiting for the backend */
	size_t max_backend_queue_bytes; /* and their bytes (0: no limit) */
	double max_backend_queue_age; /* s; older packets for the backend are dropped */
	/* Bytes of packets in flight to one connection (sent, not yet written
	 * by its worker); more leave the queue as the worker reports writes.
	 * 0: no limit. */
	size_t window_bytes;
	/* The largest packet the backend takes: return_statuses is split to
	 * fit. 0: no limit. */
	size_t max_frame_bytes;
	/* s after which an agent without a socket, heartbeat or queued packet
	 * is forgotten (memory and store); 0: never. */
	double agent_retention;
};

enum route_action_kind {
	/* Write data on (worker, id) as one WebSocket text message. seq
	 * identifies the packet for route_ws_sent() and route_unsent(); seq 0
	 * (dest "") is a packet nobody waits for (heartbeat answers,
	 * return_statuses), sent outside the window. */
	ROUTE_SEND = 1,
	/* Answer HTTP request (worker, id) with status and data as the body;
	 * data NULL (len 0) means "accepted": the worker sends the endpoint's
	 * own success body. */
	ROUTE_HTTP_ANSWER = 2,
};

struct route_action {
	enum route_action_kind kind;
	uint32_t worker;
	uint64_t id; /* connection id (SEND) or request id (HTTP_ANSWER) */
	const char *dest;
	uint64_t seq;
	double answers; /* SEND answering a heartbeat: its router_incoming_timestamp */
	unsigned int status;
	const char *data;
	size_t len;
};


struct route_stats {
	uint64_t packets_routed;
	uint64_t packets_queued;
	uint64_t packets_dropped; /* queue bounds, unknown destinations */
	uint64_t packets_refused; /* wrong sender, unknown type, missing fields */
	uint64_t requests_timed_out;
	uint64_t version_warnings_suppressed;
	uint64_t agents_pruned; /* agent_retention */
	/* packets that arrived, by type: from the backend's channel [1] or
	 * from agents and HTTP requests [0] */
	uint64_t received[2][PKT_TYPE_COUNT];
};

struct route;

struct route *route_new(const struct route_config *cfg, double now);
void route_free(struct route *r);
void route_set_config(struct route *r, const struct route_config *cfg);

/* ---- events ---- */

/* A packet arrived on WebSocket (worker, conn). Rules, by type:
 * - alive, subject "mephisto": the connection becomes the Mephisto channel
 *   (replacing any earlier one); the backend's queue is sent, in order.
 * - alive from an agent: the agent is created if unknown (status "none"),
 *   attached to this connection (is_alive, disconnect_time = 0), sent
 *   {"packet_type": "update_status", "subject_id": id, "data": {"status":
 *   status}}, then its queue in order.
 * - heartbeat: answered on the same connection with the packet's payload
 *   plus "data": {"last_mephisto_ping": ms[, "status": status]}. The status
 *   is there when the agent is known; a known agent also gets is_alive,
 *   last_ping = now, and is attached to this connection if it was not
 *   (then its queue is sent). last_mephisto_ping is the time of the last
 *   request_statuses (the router's start before any) in ms, translated into
 *   the browser's clock when the packet has a client_timestamp:
 *   (last_poll + client_timestamp - router_incoming_timestamp) * 1000.
 * - mephisto_bound_live_update, log_error (from a connection that is not
 *   the channel): forwarded to the backend, or queued for it.
 * - client_bound_live_update (from the channel): forwarded to agent
 *   subject_id, or queued for it (the agent is created if unknown).
 * - update_status (from the channel): status = packet.status when present,
 *   then forwarded like client_bound_live_update.
 * - agent_details (from the channel): the waiting HTTP request with
 *   packet.request_id is answered 200 with the payload. Unknown ids: dropped.
 * - request_statuses (from the channel): last poll = now, the liveness
 *   rules are applied, and the channel is sent {"packet_type":
 *   "return_statuses", "subject_id": "mephisto", "data": {id: status, ...},
 *   "client_timestamp": packet.server_timestamp,
 *   "router_incoming_timestamp": packet.router_incoming_timestamp}.
 * - anything else, a backend type from a non-channel connection, or an
 *   agent type from the channel: refused (counted, logged once per kind). */
void route_ws_packet(struct route *r, uint32_t worker, uint64_t conn,
		     const struct packet *p, double now);

/* WebSocket (worker, conn) closed. Its agent gets is_alive = 0 and
 * disconnect_time = now; if it was the channel, there is no channel. */
void route_ws_closed(struct route *r, uint32_t worker, uint64_t conn, double now);

/* Every connection and waiting request of this worker is gone. */
void route_worker_gone(struct route *r, uint32_t worker, double now);

/* The worker wrote every packet sent on (worker, conn) up to seq to the
 * socket: they leave their queue, requests waiting for them are answered,
 * and more is sent while the window has room. */
void route_ws_sent(struct route *r, uint32_t worker, uint64_t conn, uint64_t seq);

/* Connection (worker, conn) could not take packet seq (it is closing): the
 * destination it served is detached, and its packets wait for its next
 * connection. */
void route_unsent(struct route *r, uint32_t worker, uint64_t conn, uint64_t seq,
		  double now);

/* An HTTP request turned into a packet for the backend. payload is sent to
 * the backend (or queued). With IPC_HTTP_FORGET_AGENT, agent_id's state
 * is dropped. With IPC_HTTP_WAIT_DETAILS, the request waits for an
 * agent_details with request_id, at most request_timeout seconds (then it
 * is answered 408 with a JSON error). Otherwise the packet is stored and
 * the request is answered (ROUTE_HTTP_ANSWER, status 200, no data) once the
 * packet is durable: written to the backend's socket (route_ws_sent) or
 * committed to the store (route_changes_durable), whichever is first;
 * 503 if neither within request_timeout, or if the packet is dropped. */
void route_http_request(struct route *r, uint32_t worker, uint64_t req,
			unsigned int flags, const char *agent_id,
			const char *request_id, const char *payload, size_t len,
			double now);

/* A task page reported mephisto-task version `version`, which differs from
 * the expected one; payload is the log_error packet for the backend. It is
 * sent for the first report of each distinct version only. */
void route_version_mismatch(struct route *r, const char *version,
			    const char *payload, size_t len, double now);

/* Time passed: apply the liveness rules and expire waiting requests.
 * - an agent without a connection, disconnect_time != 0, whose status is
 *   not final, and closed for reconnect_grace or more: status "disconnect".
 * - an agent in a live status with last_ping != 0 and no heartbeat for
 *   heartbeat_timeout or more: status "disconnect", and it is sent (or
 *   queued) an update_status packet with that status. */
void route_tick(struct route *r, double now);

/* When route_tick() next has something to do (INFINITY: nothing). */
double route_next_deadline(const struct route *r);

/* ---- actions ---- */

/* The actions produced since the last route_clear_actions(), in order.
 * Pointers stay valid until then. An action's data may point into the
 * payload passed to the event that produced it: keep that memory valid
 * until route_clear_actions(). */
size_t route_actions(const struct route *r, const struct route_action **out);
void route_clear_actions(struct route *r);

/* ---- persistence ----
 * Besides its actions, every event records what changed in the state that
 * must survive a restart, for the store to write: an agent to re-read with
 * route_agent_info() (and delete when unknown), a packet that now waits in
 * a queue, a packet that no longer waits (delivered or dropped), a fact
 * about the router. Packets delivered at once never appear. */
enum route_change_kind {
	ROUTE_CHANGE_AGENT = 1,   /* key: agent id */
	ROUTE_CHANGE_QUEUED = 2,  /* key: destination; seq, created, data */
	ROUTE_CHANGE_UNQUEUED = 3, /* key: destination; seq */
	ROUTE_CHANGE_META = 4,    /* key: name; data: value text */
};

struct route_change {
	enum route_change_kind kind;
	const char *key;
	uint64_t seq;
	double created;
	const char *data; /* valid until route_clear_changes() */
	size_t len;
};

size_t route_changes(const struct route *r, const struct route_change **out);
void route_clear_changes(struct route *r);
/* How many times the changes were cleared (handed to the store) so far. */
uint64_t route_change_epoch(const struct route *r);
/* Every change cleared up to epoch is committed to the store. */
void route_changes_durable(struct route *r, uint64_t epoch);

/* Recovery at start, from the store: an agent (when it had a socket when
 * the previous router stopped, was_attached, or was within its reconnect
 * grace, disconnect_time != 0, the grace starts now: nobody could
 * reconnect while the router was down; likewise a stored last_ping counts
 * as a heartbeat now), and a packet that was waiting for dest. Heartbeats
 * alone are not reported as changes. */
void route_restore_agent(struct route *r, const char *id, const char *status,
			 double last_ping, double disconnect_time, int was_attached,
			 double now);
void route_restore_packet(struct route *r, const char *dest, uint64_t seq,
			  double created, const char *payload, size_t len, double now);

/* ---- inspection ---- */

struct route_agent_info {
	const char *status;
	int attached;
	uint32_t worker;
	uint64_t conn;
	double last_ping, disconnect_time;
};

/* 0 and the agent's state, or -1 for an unknown agent. */
int route_agent_info(const struct route *r, const char *agent_id,
		     struct route_agent_info *info);

/* The agent's status, or NULL for an unknown agent. */
const char *route_agent_status(const struct route *r, const char *agent_id);
/* 1 when the agent is attached to a connection. */
int route_agent_attached(const struct route *r, const char *agent_id);
size_t route_agent_count(const struct route *r);
/* Packets waiting for dest ("mephisto" or an agent id), not counting
 * those in flight to its connection. */
size_t route_queue_length(const struct route *r, const char *dest);
int route_backend_attached(const struct route *r);
size_t route_waiting_requests(const struct route *r);
const struct route_stats *route_get_stats(const struct route *r);

/* For /metrics: agents per status (cb once per status with its count),
 * attached agents, packets waiting in agents' queues, and the backend's
 * queue (packets, bytes, the oldest's creation time or 0). */
void route_count_statuses(const struct route *r,
			  void (*cb)(void *arg, const char *status, size_t n), void *arg);
size_t route_attached_agents(const struct route *r);
/* The agents' queues together: how many agents have packets waiting, the
 * packets and their bytes, the deepest queue, and the creation time of the
 * oldest packet (0: none). One pass over the agents. */
struct route_queues {
	size_t destinations, packets, bytes, deepest;
	double oldest;
};
void route_agent_queues(const struct route *r, struct route_queues *q);
void route_backend_queue(const struct route *r, size_t *packets, size_t *bytes,
			 double *oldest);

#endif
