/* The routing state machine (see route.h for the rules). */
#include "route.h"

#include "buf.h"
#include "log.h"
#include "map.h"
#include "xalloc.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A packet for a destination, from the moment it is routed until its
 * worker says it was written (route_ws_sent). Queues are kept in seq
 * order. */
struct qitem {
	struct qitem *next;
	uint64_t seq;
	double created;
	int stored; /* a QUEUED change was recorded: the store has (or will have) it */
	int precious; /* a submission: never dropped for other traffic */
	const char *subject; /* whose it is (backend queue), in data's allocation */
	size_t len;
	char data[];
};

/* head .. last_sent: sent to the destination's connection, not yet written
 * (in flight, at most window_bytes of them); after last_sent: waiting.
 * When the connection goes, whatever is in flight waits again, in place. */
struct queue {
	struct qitem *head, *tail;
	struct qitem *last_sent; /* NULL: nothing in flight */
	size_t count, bytes;
	size_t inflight_count, inflight_bytes;
	const char *dest; /* the agent's id or "mephisto" */
};

/* An HTTP request answered once its packet is durable: written to the
 * backend's socket, or committed to the state database. */
struct durable_answer {
	uint64_t seq; /* the packet's */
	uint32_t worker;
	uint64_t req;
	uint64_t epoch; /* durable once change batch `epoch` is committed */
	double deadline;
};

/* Also a hash key (conns map): no padding bytes allowed. */
struct endpoint {
	uint64_t worker;
	uint64_t conn;
};
_Static_assert(sizeof(struct endpoint) == 16, "struct endpoint has padding");

struct agent {
	char *id;
	char *status;
	int attached;
	struct endpoint at;
	double last_ping;       /* 0: never */
	double disconnect_time; /* 0: never, or attached since */
	double created;
	struct queue queue;
	/* '"id":"status"' for return_statuses, made when first needed after a
	 * status change (with 100,000 agents, a jansson object of them all
	 * took the supervisor ~150 ms every request_statuses, 4 s apart). */
	char *statuses_member;
	size_t statuses_member_len;
};

struct waiting {
	char *request_id;
	uint32_t worker;
	uint64_t req;
	double deadline;
};

struct churn {
	size_t count;
	char first[65]; /* an id, for the log line */
};

enum refusal {
	REFUSE_UNKNOWN_TYPE,
	REFUSE_BACKEND_TYPE_FROM_AGENT,
	REFUSE_AGENT_TYPE_FROM_BACKEND,
	REFUSE_NO_SUBJECT,
	REFUSE_COUNT
};

struct route {
	struct route_config cfg;
	struct map *agents;  /* id -> struct agent */
	struct map *conns;   /* struct endpoint -> struct agent */
	struct map *waiting; /* request id -> struct waiting */
	struct map *versions; /* mephisto-task versions already reported */
	struct map *durable;  /* packet seq -> struct durable_answer */
	struct map *shares;   /* subject -> size_t bytes of its droppable packets
			       * in the backend's queue */
	size_t droppable_bytes; /* all of them */
	uint64_t change_epoch; /* route_clear_changes() calls so far */
	int has_channel;
	struct endpoint channel;
	struct queue backend;
	double started;
	double last_poll; /* 0: no request_statuses yet */
	uint64_t next_seq;
	struct route_action *actions;
	size_t nactions, actions_cap;
	struct qitem *sent; /* queue items referenced by actions */
	char **owned;       /* buffers referenced by actions */
	size_t nowned, owned_cap;
	struct route_change *changes;
	size_t nchanges, changes_cap;
	struct route_stats stats;
	int refusal_logged[REFUSE_COUNT];
	size_t liveness_pos; /* where the next tick's liveness walk starts */
	double drops_logged_at;   /* queue_trim's last log line */
	struct churn churn_grace, churn_heartbeat; /* since churn_logged_at */
	double churn_logged_at;
	uint64_t drops_unlogged;  /* drops since then */
};

/* ---- helpers ---- */

/* arr (count used, *cap allocated) with room for one more element. */
static void *room_for_one(void *arr, size_t count, size_t *cap, size_t size)
{
	if (count < *cap)
		return arr;
	*cap = *cap ? *cap * 2 : 32;
	return xrealloc(arr, *cap * size);
}

static void *own(struct route *r, char *buf)
{
	r->owned = room_for_one(r->owned, r->nowned, &r->owned_cap, sizeof *r->owned);
	r->owned[r->nowned++] = buf;
	return buf;
}

static struct route_action *action_add(struct route *r, enum route_action_kind kind,
				       uint32_t worker, uint64_t id)
{
	struct route_action *a;

	r->actions = room_for_one(r->actions, r->nactions, &r->actions_cap,
				  sizeof *r->actions);
	a = &r->actions[r->nactions++];
	memset(a, 0, sizeof *a);
	a->kind = kind;
	a->worker = worker;
	a->id = id;
	a->dest = "";
	return a;
}

static struct route_action *send_to(struct route *r, struct endpoint to, const char *dest,
				    uint64_t seq, const char *data, size_t len)
{
	struct route_action *a = action_add(r, ROUTE_SEND, to.worker, to.conn);

	a->dest = dest;
	a->seq = seq;
	a->data = data;
	a->len = len;
	r->stats.packets_routed++;
	return a;
}

static void http_answer(struct route *r, uint32_t worker, uint64_t req,
			unsigned int status, const char *data, size_t len)
{
	struct route_action *a = action_add(r, ROUTE_HTTP_ANSWER, worker, req);

	a->status = status;
	a->data = data;
	a->len = len;
}

static void free_waiting(struct waiting *w)
{
	if (w != NULL) {
		free(w->request_id);
		free(w);
	}
}

static char *dump_owned(struct route *r, json_t *obj, size_t *len);

static void http_answer_error(struct route *r, uint32_t worker, uint64_t req,
			      unsigned int status, const char *message)
{
	size_t len;
	char *body = dump_owned(r, json_pack("{s:s}", "error", message), &len);

	http_answer(r, worker, req, status, body, len);
}

/* Record what the store must persist. key and data are copied: a queued
 * packet may be dropped or delivered, and freed, before the store reads
 * the change. */
static void change(struct route *r, enum route_change_kind kind, const char *key,
		   uint64_t seq, double created, const char *data, size_t len)
{
	struct route_change *c;

	r->changes = room_for_one(r->changes, r->nchanges, &r->changes_cap,
				  sizeof *r->changes);
	c = &r->changes[r->nchanges++];
	c->kind = kind;
	c->key = xstrdup(key);
	c->seq = seq;
	c->created = created;
	c->data = NULL;
	c->len = len;
	if (data != NULL)
		c->data = xmemdup0(data, len);
}

static void agent_changed(struct route *r, const char *id)
{
	change(r, ROUTE_CHANGE_AGENT, id, 0, 0, NULL, 0);
}

static void meta_text(struct route *r, const char *key, const char *value)
{
	change(r, ROUTE_CHANGE_META, key, 0, 0, value, strlen(value));
}

static void meta_changed(struct route *r, const char *key, double value)
{
	char text[32];

	snprintf(text, sizeof text, "%.3f", value);
	meta_text(r, key, text);
}

/* A JSON text built with jansson, owned until route_clear_actions(). */
static char *dump_owned(struct route *r, json_t *obj, size_t *len)
{
	char *text = json_dumps(obj, JSON_COMPACT);

	json_decref(obj);
	if (text == NULL)
		fatal("out of memory");
	*len = strlen(text);
	return own(r, text);
}

static void refuse(struct route *r, enum refusal why, const struct packet *p,
		   uint32_t worker, uint64_t conn)
{
	static const char *const reasons[REFUSE_COUNT] = {
		"unknown packet type",
		"a backend packet type from a socket that is not the Mephisto channel",
		"an agent packet type from the Mephisto channel",
		"no subject_id",
	};

	r->stats.packets_refused++;
	if (!r->refusal_logged[why]) {
		r->refusal_logged[why] = 1;
		log_warn("dropped a %s packet from worker %u conn %llu: %s "
			 "(logged once; see the refused-packet count)",
			 packet_type_name(p->type), worker, (unsigned long long)conn,
			 reasons[why]);
	}
}

/* ---- queues ---- */

static struct qitem *qitem_new(uint64_t seq, double now, const char *data, size_t len,
			       const char *subject, int precious)
{
	size_t slen = subject ? strlen(subject) + 1 : 0;
	struct qitem *q = xmalloc(sizeof *q + len + 1 + slen);

	q->next = NULL;
	q->seq = seq;
	q->created = now;
	q->stored = 0;
	q->precious = precious;
	q->len = len;
	memcpy(q->data, data, len);
	q->data[len] = '\0';
	q->subject = NULL;
	if (subject != NULL)
		q->subject = memcpy(q->data + len + 1, subject, slen);
	return q;
}

/* The packet types the backend's queue never drops for other traffic. */
static int precious_type(enum packet_type t)
{
	return t == PKT_SUBMIT_UNIT || t == PKT_SUBMIT_METADATA || t == PKT_SUBMIT_ONBOARDING;
}

/* The same for a stored packet, from its text (whatever wrote it). */
static int precious_text(const char *data)
{
	json_t *j = json_loads(data, JSON_DECODE_ANY, NULL);
	const char *t = json_string_value(json_object_get(j, "packet_type"));
	int precious = t != NULL && precious_type(packet_type_parse(t));

	json_decref(j);
	return precious;
}

/* Bytes of droppable packets of subject in the backend's queue. */
static size_t *share_of(struct route *r, const char *subject, int create)
{
	size_t *bytes = map_get(r->shares, subject, strlen(subject));

	if (bytes == NULL && create) {
		bytes = xcalloc(1, sizeof *bytes);
		map_put(r->shares, subject, strlen(subject), bytes);
	}
	return bytes;
}

static void share_add(struct route *r, struct queue *q, const struct qitem *item, int sign)
{
	size_t *bytes;

	if (q != &r->backend || item->precious || item->subject == NULL)
		return;
	bytes = share_of(r, item->subject, sign > 0);
	if (bytes == NULL)
		return;
	if (sign > 0) {
		*bytes += item->len;
		r->droppable_bytes += item->len;
		return;
	}
	r->droppable_bytes -= item->len;
	*bytes -= item->len;
	if (*bytes == 0) {
		map_del(r->shares, item->subject, strlen(item->subject));
		free(bytes);
	}
}

/* An item off its queue: actions of this turn may still point into it, so
 * it is freed by route_clear_actions(). */
static void retire(struct route *r, struct qitem *item)
{
	item->next = r->sent;
	r->sent = item;
}

/* From now on the store keeps the item (until it leaves its queue). */
static void store_item(struct route *r, struct queue *q, struct qitem *item)
{
	if (item->stored)
		return;
	item->stored = 1;
	change(r, ROUTE_CHANGE_QUEUED, q->dest, item->seq, item->created, item->data,
	       item->len);
}

static void queue_append(struct route *r, struct queue *q, struct qitem *item)
{
	if (q->tail != NULL)
		q->tail->next = item;
	else
		q->head = item;
	q->tail = item;
	q->count++;
	q->bytes += item->len;
	share_add(r, q, item, 1);
}

static struct qitem *first_waiting(const struct queue *q)
{
	return q->last_sent != NULL ? q->last_sent->next : q->head;
}

/* Take item (the head, or the first waiting one, whose predecessor is
 * prev) off q; the store forgets it. */
static void queue_unlink(struct route *r, struct queue *q, struct qitem *prev,
			 struct qitem *item)
{
	if (prev != NULL)
		prev->next = item->next;
	else
		q->head = item->next;
	if (q->tail == item)
		q->tail = prev;
	if (q->last_sent == item) { /* in flight: the head */
		q->last_sent = NULL;
	}
	if (item->stored)
		change(r, ROUTE_CHANGE_UNQUEUED, q->dest, item->seq, item->created, NULL, 0);
	q->count--;
	q->bytes -= item->len;
	share_add(r, q, item, -1);
	item->next = NULL;
}

/* Everything in flight waits again (the connection is gone or cannot take
 * more), in place, so it goes out again first and in order; and a
 * destination without a connection has its queue in the store. */
static void queue_unsend(struct route *r, struct queue *q)
{
	q->last_sent = NULL;
	q->inflight_count = 0;
	q->inflight_bytes = 0;
	for (struct qitem *item = q->head; item != NULL; item = item->next)
		store_item(r, q, item);
}

static void queue_clear(struct route *r, struct queue *q)
{
	while (q->head != NULL) {
		struct qitem *item = q->head;

		queue_unlink(r, q, NULL, item);
		retire(r, item);
	}
	q->inflight_count = 0;
	q->inflight_bytes = 0;
}

static void answer_durable_dropped(struct route *r, uint64_t seq);

static void log_drops(struct route *r, size_t dropped, const char *dest, size_t max,
		      double max_age, double now);

/* An agent's queue: drop the oldest waiting packets (never those in
 * flight) beyond max. */
static void queue_trim(struct route *r, struct queue *q, size_t max, double now,
		       const char *dest)
{
	size_t dropped = 0;
	struct qitem *item;

	while ((item = first_waiting(q)) != NULL && q->count > max) {
		queue_unlink(r, q, q->last_sent, item);
		retire(r, item);
		dropped++;
	}
	log_drops(r, dropped, dest, max, 0, now);
}

/* ---- the backend's queue: bounded in packets and in bytes ----
 * When it is full, a packet makes room by dropping the oldest waiting
 * packet that is not a submission: first one of its own sender's, when
 * that sender holds more than an even share of the droppable bytes (one
 * agent's flood evicts its own packets, not the others'), else anyone's.
 * A submission is never dropped for other traffic; one that finds the
 * queue full of submissions is refused (its request hears 503). */

static int backend_full(const struct route *r, size_t adding, size_t adding_bytes)
{
	return r->backend.count + adding > r->cfg.max_backend_queue ||
	       (r->cfg.max_backend_queue_bytes > 0 &&
		r->backend.bytes + adding_bytes > r->cfg.max_backend_queue_bytes);
}

/* How far a search for a packet to drop goes: a full queue costs each new
 * packet at most this many steps (a queue of 100,000 walked whole for
 * every packet would stall the supervisor); past it, no room. */
#define DROP_SEARCH 4096

/* The oldest waiting packet that may be dropped (of subject, unless NULL),
 * and its predecessor, among the first DROP_SEARCH waiting. */
static struct qitem *oldest_droppable(struct queue *q, const char *subject,
				      struct qitem **prev)
{
	struct qitem *p = q->last_sent;
	size_t steps = 0;

	for (struct qitem *it = first_waiting(q); it != NULL && steps++ < DROP_SEARCH;
	     p = it, it = it->next)
		if (!it->precious &&
		    (subject == NULL || (it->subject && strcmp(it->subject, subject) == 0))) {
			*prev = p;
			return it;
		}
	return NULL;
}

static int over_share(struct route *r, const char *subject)
{
	size_t *mine = subject ? share_of(r, subject, 0) : NULL;

	return mine != NULL && *mine * map_count(r->shares) > r->droppable_bytes;
}

static void backend_drop(struct route *r, struct qitem *prev, struct qitem *item)
{
	queue_unlink(r, &r->backend, prev, item);
	answer_durable_dropped(r, item->seq);
	retire(r, item);
}

/* Room for one more packet of len bytes from subject; 0, or -1 when only
 * submissions (and packets in flight) fill the queue. */
static int backend_make_room(struct route *r, const char *subject, int precious,
			     size_t len, double now)
{
	size_t dropped = 0;
	int rc = 0;

	while (backend_full(r, 1, len)) {
		struct qitem *prev = NULL, *victim = NULL;

		if (!precious && over_share(r, subject))
			victim = oldest_droppable(&r->backend, subject, &prev);
		if (victim == NULL)
			victim = oldest_droppable(&r->backend, NULL, &prev);
		if (victim == NULL) {
			rc = -1;
			break;
		}
		backend_drop(r, prev, victim);
		dropped++;
	}
	log_drops(r, dropped, "the backend", r->cfg.max_backend_queue, 0, now);
	return rc;
}

/* Packets (not submissions) that waited longer than max_backend_queue_age. */
static void backend_trim_age(struct route *r, double now)
{
	size_t dropped = 0;
	struct qitem *prev, *item;
	double max_age = r->cfg.max_backend_queue_age;

	while (max_age > 0 && (item = oldest_droppable(&r->backend, NULL, &prev)) != NULL &&
	       now - item->created > max_age) {
		backend_drop(r, prev, item);
		dropped++;
	}
	log_drops(r, dropped, "the backend", r->cfg.max_backend_queue, max_age, now);
}

static void log_drops(struct route *r, size_t dropped, const char *dest, size_t max,
		      double max_age, double now)
{
	if (dropped > 0) {
		r->stats.packets_dropped += dropped;
		r->drops_unlogged += dropped;
		/* At most a line a second, however many queues overflow. */
		if (now - r->drops_logged_at >= 1.0) {
			log_warn("dropped the %llu oldest packet%s queued for %.64s%s "
				 "(bound: %zu packets%s)",
				 (unsigned long long)r->drops_unlogged,
				 r->drops_unlogged == 1 ? "" : "s", dest,
				 r->drops_unlogged > dropped ? " and others" : "", max,
				 max_age > 0 ? " or the age limit" : "");
			r->drops_logged_at = now;
			r->drops_unlogged = 0;
		}
	}
}

/* Send waiting packets of q to `to`, in order, while the destination's
 * window has room (one packet always goes, however large): a queue leaves
 * at the pace its connection drains (route_ws_sent). */
static void queue_pump(struct route *r, struct queue *q, struct endpoint to)
{
	struct qitem *item;
	size_t window = r->cfg.window_bytes;

	while ((item = first_waiting(q)) != NULL &&
	       (q->inflight_bytes == 0 || window == 0 ||
		q->inflight_bytes + item->len <= window)) {
		send_to(r, to, q->dest, item->seq, item->data, item->len);
		q->inflight_count++;
		q->inflight_bytes += item->len;
		q->last_sent = item;
	}
}

/* ---- agents ---- */

static struct agent *agent_find(const struct route *r, const char *id)
{
	return map_get(r->agents, id, strlen(id));
}

static struct agent *agent_get(struct route *r, const char *id, double now)
{
	struct agent *a = agent_find(r, id);

	if (a != NULL)
		return a;
	a = xcalloc(1, sizeof *a);
	a->id = xstrdup(id);
	a->status = xstrdup("none");
	a->created = now;
	a->queue.dest = a->id;
	map_put(r->agents, id, strlen(id), a);
	agent_changed(r, a->id);
	return a;
}

static void agent_detach(struct route *r, struct agent *a, double now)
{
	if (!a->attached)
		return;
	map_del(r->conns, &a->at, sizeof a->at);
	a->attached = 0;
	a->disconnect_time = now;
	queue_unsend(r, &a->queue);
	agent_changed(r, a->id);
}

static void agent_free(struct route *r, struct agent *a)
{
	queue_clear(r, &a->queue);
	/* Actions of this turn may name it (their dest): freed with them. */
	own(r, a->id);
	free(a->status);
	free(a->statuses_member);
	free(a);
}

static void agent_forget(struct route *r, const char *id)
{
	struct agent *a = map_del(r->agents, id, strlen(id));

	if (a == NULL)
		return;
	if (a->attached)
		map_del(r->conns, &a->at, sizeof a->at);
	agent_changed(r, id);
	agent_free(r, a);
}

static void agent_set_status(struct route *r, struct agent *a, const char *status)
{
	if (strcmp(a->status, status) == 0)
		return;
	free(a->status);
	a->status = xstrdup(status);
	free(a->statuses_member);
	a->statuses_member = NULL;
	agent_changed(r, a->id);
}

/* Route a packet to a destination's queue, and on to its connection when
 * it has one with room; a destination without one has its queue stored. */
static struct qitem *to_queue(struct route *r, struct queue *q, int attached,
			      struct endpoint at, struct qitem *item)
{
	queue_append(r, q, item);
	if (attached) {
		queue_pump(r, q, at);
	} else {
		store_item(r, q, item);
		r->stats.packets_queued++;
	}
	return item;
}

static void to_agent(struct route *r, struct agent *a, const char *data,
		     size_t len, double now)
{
	to_queue(r, &a->queue, a->attached, a->at,
		 qitem_new(++r->next_seq, now, data, len, NULL, 0));
	queue_trim(r, &a->queue, r->cfg.max_agent_queue, now, a->id);
}

/* A packet for the backend from subject (an agent id, or ""); NULL when
 * the full queue has no room for it (see backend_make_room). */
static struct qitem *to_backend(struct route *r, const char *data, size_t len,
				const char *subject, int precious, double now)
{
	if (backend_make_room(r, subject, precious, len, now) < 0) {
		log_drops(r, 1, "the backend (no room: submissions fill it)",
			  r->cfg.max_backend_queue, 0, now);
		return NULL;
	}
	return to_queue(r, &r->backend, r->has_channel, r->channel,
			qitem_new(++r->next_seq, now, data, len, subject, precious));
}

static char *update_status_text(struct route *r, struct agent *a, size_t *len)
{
	return dump_owned(r, json_pack("{s:s, s:s, s:{s:s}}", "packet_type",
				       "update_status", "subject_id", a->id, "data",
				       "status", a->status), len);
}

/* A status change: queued like any packet for the agent. */
static void send_update_status(struct route *r, struct agent *a, double now)
{
	size_t len;
	char *text = update_status_text(r, a, &len);

	to_agent(r, a, text, len, now);
}

static void agent_attach(struct route *r, struct agent *a, uint32_t worker,
			 uint64_t conn, double now)
{
	struct endpoint at = { worker, conn };
	struct agent *other;

	(void)now;
	if (a->attached && a->at.worker == worker && a->at.conn == conn)
		return;
	agent_detach(r, a, now);
	/* One agent per connection: a socket that says it is someone else
	 * now stops being the previous agent's. */
	other = map_get(r->conns, &at, sizeof at);
	if (other != NULL)
		agent_detach(r, other, now);
	a->attached = 1;
	a->at = at;
	a->disconnect_time = 0;
	map_put(r->conns, &at, sizeof at, a);
	agent_changed(r, a->id);
}

/* ---- liveness ---- */

/* An agent nobody has heard of for agent_retention: without a socket
 * since then, no heartbeat, nothing waiting for it. */
static int agent_is_stale(const struct route *r, const struct agent *a, double now)
{
	double seen = fmax(a->created, fmax(a->disconnect_time, a->last_ping));

	return r->cfg.agent_retention > 0 && !a->attached &&
	       now - seen >= r->cfg.agent_retention &&
	       a->queue.count == 0;
}

/* Agents set to disconnect by a rule, summed up in one line a second
 * (20,000 agents leaving at once made 20,000 lines; each is at debug). */
static void churn_note(struct churn *c, const char *id)
{
	if (c->count++ == 0)
		snprintf(c->first, sizeof c->first, "%.64s", id);
}

static void churn_log(struct route *r, double now)
{
	if (now - r->churn_logged_at < 1.0 ||
	    (r->churn_grace.count == 0 && r->churn_heartbeat.count == 0))
		return;
	if (r->churn_grace.count > 0)
		log_info("%zu agent%s disconnected: no reconnection within %.1f s of "
			 "the socket closing (%s%s)", r->churn_grace.count,
			 r->churn_grace.count == 1 ? "" : "s", r->cfg.reconnect_grace,
			 r->churn_grace.first, r->churn_grace.count > 1 ? " and others" : "");
	if (r->churn_heartbeat.count > 0)
		log_info("%zu agent%s disconnected: no heartbeat for %.1f s (%s%s)",
			 r->churn_heartbeat.count, r->churn_heartbeat.count == 1 ? "" : "s",
			 r->cfg.heartbeat_timeout, r->churn_heartbeat.first,
			 r->churn_heartbeat.count > 1 ? " and others" : "");
	r->churn_grace.count = r->churn_heartbeat.count = 0;
	r->churn_logged_at = now;
}

/* One agent's grace and heartbeat rules. */
static void check_liveness(struct route *r, struct agent *a, double now)
{
	if (!a->attached && a->disconnect_time != 0 &&
	    now - a->disconnect_time >= r->cfg.reconnect_grace &&
	    !status_is_final(a->status)) {
		log_debug("agent %.64s: no reconnection within %.1f s of its socket "
			  "closing: disconnect", a->id, r->cfg.reconnect_grace);
		churn_note(&r->churn_grace, a->id);
		agent_set_status(r, a, "disconnect");
	}
	/* The clock first: the status is a string compare. */
	if (a->last_ping != 0 && now - a->last_ping >= r->cfg.heartbeat_timeout &&
	    status_is_live(a->status)) {
		log_debug("agent %.64s: no heartbeat for %.1f s: disconnect", a->id,
			  now - a->last_ping);
		churn_note(&r->churn_heartbeat, a->id);
		agent_set_status(r, a, "disconnect");
		send_update_status(r, a, now);
	}
}

/* Stale agents found by a walk, forgotten after it (a map is not changed
 * while it is walked). */
#define PRUNE_BATCH 256

struct prune {
	char *ids[PRUNE_BATCH];
	size_t n;
};

static void prune_note(struct route *r, struct prune *p, struct agent *a, double now)
{
	if (p->n < PRUNE_BATCH && agent_is_stale(r, a, now))
		p->ids[p->n++] = xstrdup(a->id);
}

static void prune_done(struct route *r, struct prune *p)
{
	if (p->n > 0)
		log_info("forgot %zu agent%s not heard of for agent_retention (%.0f s)",
			 p->n, p->n == 1 ? "" : "s", r->cfg.agent_retention);
	for (size_t i = 0; i < p->n; i++) {
		agent_forget(r, p->ids[i]);
		free(p->ids[i]);
	}
	r->stats.agents_pruned += p->n;
	p->n = 0;
}

static void apply_liveness_all(struct route *r, double now)
{
	size_t pos = 0;
	void *value;
	struct prune prune = { .n = 0 };

	while (map_next(r->agents, &pos, NULL, NULL, &value)) {
		check_liveness(r, value, now);
		prune_note(r, &prune, value, now);
	}
	prune_done(r, &prune);
}

/* The tick's walk: every agent when there are up to LIVENESS_BATCH of
 * them; beyond that LIVENESS_BATCH per tick, going on where the last tick
 * stopped, so each agent is seen every count / LIVENESS_BATCH ticks (0.7 s
 * with 100,000) instead of the supervisor stalling for a whole walk
 * (10-20 ms at 100,000, ten times a second, every heartbeat waiting).
 * Inserting or deleting between ticks may move an agent past the cursor:
 * it is then seen a pass later. */
#define LIVENESS_BATCH 16384

static void apply_liveness(struct route *r, double now)
{
	size_t pos = r->liveness_pos, seen = 0;
	void *value;

	if (map_count(r->agents) <= LIVENESS_BATCH) {
		apply_liveness_all(r, now);
		r->liveness_pos = 0;
		return;
	}
	struct prune prune = { .n = 0 };

	while (seen < LIVENESS_BATCH) {
		if (!map_next(r->agents, &pos, NULL, NULL, &value)) {
			pos = 0;
			break;
		}
		check_liveness(r, value, now);
		prune_note(r, &prune, value, now);
		seen++;
	}
	r->liveness_pos = pos;
	prune_done(r, &prune);
}

static void expire_requests(struct route *r, double now)
{
	size_t pos = 0;
	void *value;
	char *expired[64];
	size_t n;

	do {
		n = 0;
		pos = 0;
		while (n < 64 && map_next(r->waiting, &pos, NULL, NULL, &value)) {
			struct waiting *w = value;
			if (now >= w->deadline)
				expired[n++] = w->request_id;
		}
		for (size_t i = 0; i < n; i++) {
			struct waiting *w = map_del(r->waiting, expired[i], strlen(expired[i]));
			size_t len;
			char *body = dump_owned(r, json_pack("{s:s, s:s}", "error",
				"timed out waiting for the Mephisto backend to answer",
				"request_id", w->request_id), &len);

			log_warn("request %s: no agent_details within %.1f s; answered 408",
				 w->request_id, r->cfg.request_timeout);
			http_answer(r, w->worker, w->req, 408, body, len);
			r->stats.requests_timed_out++;
			free(w->request_id);
			free(w);
		}
	} while (n == 64);
}

/* ---- events ---- */

struct route *route_new(const struct route_config *cfg, double now)
{
	struct route *r = xcalloc(1, sizeof *r);

	r->cfg = *cfg;
	r->agents = map_new();
	r->conns = map_new();
	r->waiting = map_new();
	r->versions = map_new();
	r->durable = map_new();
	r->shares = map_new();
	r->backend.dest = PACKET_MEPHISTO;
	r->started = now;
	return r;
}

void route_set_config(struct route *r, const struct route_config *cfg)
{
	r->cfg = *cfg;
}

void route_free(struct route *r)
{
	size_t pos = 0;
	void *value;

	if (r == NULL)
		return;
	route_clear_actions(r);
	while (map_next(r->agents, &pos, NULL, NULL, &value))
		agent_free(r, value);
	pos = 0;
	while (map_next(r->waiting, &pos, NULL, NULL, &value)) {
		struct waiting *w = value;
		free(w->request_id);
		free(w);
	}
	map_free(r->agents);
	map_free(r->conns);
	map_free(r->waiting);
	map_free(r->versions);
	pos = 0;
	while (map_next(r->durable, &pos, NULL, NULL, &value))
		free(value);
	map_free(r->durable);

	queue_clear(r, &r->backend);
	route_clear_actions(r); /* what queue_clear() retired */
	pos = 0;
	while (map_next(r->shares, &pos, NULL, NULL, &value))
		free(value);
	map_free(r->shares);
	route_clear_changes(r);
	free(r->changes);
	free(r->actions);
	free(r->owned);
	free(r);
}

static int is_channel(const struct route *r, uint32_t worker, uint64_t conn)
{
	return r->has_channel && r->channel.worker == worker && r->channel.conn == conn;
}

/* No channel any more: what was in flight to it waits again. */
static void channel_lost(struct route *r)
{
	r->has_channel = 0;
	meta_text(r, "backend_attached", "0");
	queue_unsend(r, &r->backend);
}

/* ---- durable answers ---- */

static void durable_free(struct route *r, uint64_t seq)
{
	free(map_del(r->durable, &seq, sizeof seq));
}

/* The packet seq is durable: its request hears 200. */
static void answer_durable(struct route *r, uint64_t seq)
{
	struct durable_answer *d = map_get(r->durable, &seq, sizeof seq);

	if (d == NULL)
		return;
	http_answer(r, d->worker, d->req, 200, NULL, 0);
	durable_free(r, seq);
}

static void answer_durable_error(struct route *r, struct durable_answer *d,
				 unsigned int status, const char *message)
{
	size_t len;
	char *body = dump_owned(r, json_pack("{s:s}", "error", message), &len);

	http_answer(r, d->worker, d->req, status, body, len);
	durable_free(r, d->seq);
}

static void answer_durable_dropped(struct route *r, uint64_t seq)
{
	struct durable_answer *d = map_get(r->durable, &seq, sizeof seq);

	if (d != NULL)
		answer_durable_error(r, d, 503, "the backend's queue is full; try again");
}

/* Answer every durable request whose packet satisfies pred(d, arg). */
static void answer_durable_where(struct route *r,
				 int (*pred)(const struct durable_answer *, const void *),
				 const void *arg, unsigned int status, const char *error)
{
	uint64_t seqs[64];
	size_t n, pos;
	void *value;

	do {
		n = 0;
		pos = 0;
		while (n < 64 && map_next(r->durable, &pos, NULL, NULL, &value))
			if (pred(value, arg))
				seqs[n++] = ((struct durable_answer *)value)->seq;
		for (size_t i = 0; i < n; i++) {
			if (error == NULL)
				answer_durable(r, seqs[i]);
			else
				answer_durable_error(r, map_get(r->durable, &seqs[i],
								 sizeof seqs[i]), status, error);
		}
	} while (n == 64);
}

static int committed_by(const struct durable_answer *d, const void *epoch)
{
	return d->epoch <= *(const uint64_t *)epoch;
}

static int expired_by(const struct durable_answer *d, const void *now)
{
	return *(const double *)now >= d->deadline;
}

/* The worker wrote the packets sent on the connection up to (in the order
 * they were sent) the one numbered seq: they leave the queue. Only when
 * seq is in flight to this destination: a late report for packets that
 * went out on this connection for someone else (one socket may speak for
 * another agent now), or that were sent again since, is not about these
 * (seqs are the router's, not the connection's, so "up to" is by
 * position, never by number). */
static void queue_written(struct route *r, struct queue *q, uint64_t seq)
{
	struct qitem *it = q->head;

	if (q->last_sent == NULL)
		return;
	for (; it != NULL && it->seq != seq; it = it == q->last_sent ? NULL : it->next)
		;
	if (it == NULL)
		return;
	for (;;) {
		struct qitem *item = q->head;
		int last = item == it;

		q->inflight_count--;
		q->inflight_bytes -= item->len;
		queue_unlink(r, q, NULL, item);
		answer_durable(r, item->seq);
		retire(r, item);
		if (last)
			break;
	}
}

static int backend_type(enum packet_type t)
{
	return t == PKT_CLIENT_BOUND_LIVE_UPDATE || t == PKT_UPDATE_STATUS ||
	       t == PKT_AGENT_DETAILS || t == PKT_REQUEST_STATUSES;
}

static void on_heartbeat(struct route *r, uint32_t worker, uint64_t conn,
			 const struct packet *p, double now)
{
	struct agent *a = agent_find(r, p->subject_id);
	double poll = r->last_poll != 0 ? r->last_poll : r->started;
	double ping = poll;
	char member[512];
	json_t *data;
	char *data_text, *answer;
	size_t len;
	int n;

	if (!isnan(p->client_timestamp) && !isnan(p->router_incoming_timestamp))
		ping = poll + (p->client_timestamp - p->router_incoming_timestamp);
	data = json_pack("{s:I}", "last_mephisto_ping", (json_int_t)llround(ping * 1000));
	if (a != NULL) {
		json_object_set_new(data, "status", json_string(a->status));
		/* Not a change worth a write: after a restart a live agent's
		 * heartbeat clock starts again anyway (route_restore_agent). */
		a->last_ping = now;
		if (!(a->attached && a->at.worker == worker && a->at.conn == conn)) {
			agent_attach(r, a, worker, conn, now);
			queue_pump(r, &a->queue, a->at);
		}
	}
	data_text = json_dumps(data, JSON_COMPACT);
	json_decref(data);
	if (data_text == NULL)
		fatal("out of memory");
	n = snprintf(member, sizeof member, "\"data\":%s", data_text);
	if (n < 0 || (size_t)n >= sizeof member) {
		/* A status of absurd length; answer without it. */
		n = snprintf(member, sizeof member, "\"data\":{\"last_mephisto_ping\":%lld}",
			     (long long)llround(ping * 1000));
	}
	free(data_text);
	answer = own(r, packet_add_member(p->payload, p->len, member, (size_t)n, &len));
	send_to(r, (struct endpoint){ worker, conn }, "", 0, answer, len)->answers =
		isnan(p->router_incoming_timestamp) ? 0 : p->router_incoming_timestamp;
}

static const char *statuses_member(struct agent *a, size_t *len)
{
	if (a->statuses_member == NULL) {
		json_t *one = json_pack("{s:s}", a->id, a->status);
		char *text = one ? json_dumps(one, JSON_COMPACT) : NULL;
		size_t n;

		json_decref(one);
		if (text == NULL)
			fatal("out of memory");
		n = strlen(text); /* '{"id":"status"}': keep what is inside */
		memmove(text, text + 1, n - 2);
		text[n - 2] = '\0';
		a->statuses_member = text;
		a->statuses_member_len = n - 2;
	}
	*len = a->statuses_member_len;
	return a->statuses_member;
}

/* A timestamp as jansson writes it in a packet, or null. */
static void append_number(struct buf *b, double v)
{
	json_t *num = isnan(v) ? json_null() : json_real(v);
	char *text = json_dumps(num, JSON_COMPACT | JSON_ENCODE_ANY);

	json_decref(num);
	if (text == NULL)
		fatal("out of memory");
	buf_append(b, text, strlen(text));
	free(text);
}

/* One return_statuses: text (its head and members), then tail; text is
 * empty again. */
static void send_statuses(struct route *r, struct buf *text, const struct buf *tail)
{
	size_t len;
	char *packet;

	buf_append(text, tail->data, tail->len);
	packet = buf_take(text, &len);
	send_to(r, r->channel, "", 0, own(r, packet), len);
}

/* return_statuses, written as jansson would write the object (the agents
 * in map order) but from each agent's cached member; in as many packets as
 * it takes for each to fit max_frame_bytes (the backend reads them one by
 * one). Sent outside the window: an answer nobody re-sends. */
static void on_request_statuses(struct route *r, const struct packet *p, double now)
{
	static const char head[] =
		"{\"packet_type\":\"return_statuses\",\"subject_id\":\"" PACKET_MEPHISTO
		"\",\"data\":{";
	size_t pos = 0, n;
	size_t max = r->cfg.max_frame_bytes ? r->cfg.max_frame_bytes : SIZE_MAX;
	void *value;
	struct buf text = BUF_INIT, tail = BUF_INIT;
	const char *member;
	int first = 1;

	r->last_poll = now;
	meta_changed(r, "last_backend_ping", now);
	apply_liveness_all(r, now);
	buf_append(&tail, "},\"client_timestamp\":", 21);
	append_number(&tail, p->server_timestamp);
	buf_append(&tail, ",\"router_incoming_timestamp\":", 29);
	append_number(&tail, p->router_incoming_timestamp);
	buf_append(&tail, "}", 1);
	buf_append(&text, head, sizeof head - 1);
	while (map_next(r->agents, &pos, NULL, NULL, &value)) {
		member = statuses_member(value, &n);
		if (sizeof head - 1 + n + tail.len > max) {
			log_warn("agent %.64s: its status does not fit in a return_statuses "
				 "of max_frame_bytes; left out", ((struct agent *)value)->id);
			continue;
		}
		if (text.len + 1 + n + tail.len > max) { /* full: send, start the next */
			send_statuses(r, &text, &tail);
			buf_append(&text, head, sizeof head - 1);
			first = 1;
		}
		if (!first)
			buf_append(&text, ",", 1);
		buf_append(&text, member, n);
		first = 0;
	}
	send_statuses(r, &text, &tail);
	buf_free(&tail);
}

static void on_agent_details(struct route *r, const struct packet *p)
{
	const char *id = p->request_id ? p->request_id : p->subject_id;
	struct waiting *w = map_del(r->waiting, id, strlen(id));

	if (w == NULL) {
		log_info("agent_details for request %s, which nobody waits for: dropped", id);
		r->stats.packets_dropped++;
		return;
	}
	http_answer(r, w->worker, w->req, 200, p->payload, p->len);
	free(w->request_id);
	free(w);
}

void route_ws_packet(struct route *r, uint32_t worker, uint64_t conn,
		     const struct packet *p, double now)
{
	int from_channel = is_channel(r, worker, conn);
	struct agent *a;

	r->stats.received[from_channel || (p->type == PKT_ALIVE && p->subject_id &&
					   strcmp(p->subject_id, PACKET_MEPHISTO) == 0)]
			 [p->type < PKT_TYPE_COUNT ? p->type : PKT_UNKNOWN]++;
	if (p->type == PKT_UNKNOWN || p->type == PKT_RETURN_STATUSES ||
	    p->type == PKT_REGISTER_AGENT || p->type == PKT_SUBMIT_ONBOARDING ||
	    p->type == PKT_SUBMIT_UNIT || p->type == PKT_SUBMIT_METADATA) {
		refuse(r, REFUSE_UNKNOWN_TYPE, p, worker, conn);
		return;
	}
	if (p->subject_id == NULL || p->subject_id[0] == '\0') {
		refuse(r, REFUSE_NO_SUBJECT, p, worker, conn);
		return;
	}
	if (p->type == PKT_ALIVE && strcmp(p->subject_id, PACKET_MEPHISTO) == 0) {
		if (!from_channel) {
			struct agent *was = map_get(r->conns, &(struct endpoint){ worker, conn },
						    sizeof(struct endpoint));
			if (was != NULL)
				agent_detach(r, was, now);
			log_info("Mephisto channel: worker %u conn %llu%s", worker,
				 (unsigned long long)conn,
				 r->has_channel ? " (replacing the previous one)" : "");
		}
		if (!r->has_channel)
			meta_text(r, "backend_attached", "1");
		else if (!from_channel) /* in flight to the old channel: again */
			queue_unsend(r, &r->backend);
		r->has_channel = 1;
		r->channel = (struct endpoint){ worker, conn };
		backend_trim_age(r, now);
		queue_pump(r, &r->backend, r->channel);
		return;
	}
	if (backend_type(p->type) != from_channel) {
		refuse(r, from_channel ? REFUSE_AGENT_TYPE_FROM_BACKEND
				       : REFUSE_BACKEND_TYPE_FROM_AGENT, p, worker, conn);
		return;
	}
	switch (p->type) {
	case PKT_ALIVE: {
		size_t len;
		char *text;

		a = agent_get(r, p->subject_id, now);
		agent_attach(r, a, worker, conn, now);
		/* The status as it is now, ahead of the queue: nobody sends
		 * it again (the next connection gets its own). */
		text = update_status_text(r, a, &len);
		send_to(r, a->at, "", 0, text, len);
		queue_pump(r, &a->queue, a->at);
		return;
	}
	case PKT_HEARTBEAT:
		on_heartbeat(r, worker, conn, p, now);
		return;
	case PKT_MEPHISTO_BOUND_LIVE_UPDATE:
	case PKT_LOG_ERROR:
		to_backend(r, p->payload, p->len, p->subject_id, 0, now);
		return;
	case PKT_UPDATE_STATUS:
		a = agent_get(r, p->subject_id, now);
		if (p->status != NULL)
			agent_set_status(r, a, p->status);
		to_agent(r, a, p->payload, p->len, now);
		return;
	case PKT_CLIENT_BOUND_LIVE_UPDATE:
		to_agent(r, agent_get(r, p->subject_id, now), p->payload, p->len, now);
		return;
	case PKT_AGENT_DETAILS:
		on_agent_details(r, p);
		return;
	case PKT_REQUEST_STATUSES:
		on_request_statuses(r, p, now);
		return;
	default:
		refuse(r, REFUSE_UNKNOWN_TYPE, p, worker, conn);
		return;
	}
}

void route_ws_closed(struct route *r, uint32_t worker, uint64_t conn, double now)
{
	struct endpoint at = { worker, conn };
	struct agent *a;

	if (is_channel(r, worker, conn)) {
		log_info("Mephisto channel closed; packets for the backend wait for it");
		channel_lost(r);
		return;
	}
	a = map_get(r->conns, &at, sizeof at);
	if (a != NULL)
		agent_detach(r, a, now);
}

void route_worker_gone(struct route *r, uint32_t worker, double now)
{
	struct agent *gone[64];
	size_t pos, n;
	void *value;
	const void *key;

	if (r->has_channel && r->channel.worker == worker) {
		log_info("Mephisto channel lost with worker %u", worker);
		channel_lost(r);
	}
	do {
		n = 0;
		pos = 0;
		while (n < 64 && map_next(r->conns, &pos, &key, NULL, &value))
			if (((const struct endpoint *)key)->worker == worker)
				gone[n++] = value;
		for (size_t i = 0; i < n; i++)
			agent_detach(r, gone[i], now);
	} while (n == 64);
	do {
		char *ids[64];
		n = 0;
		pos = 0;
		while (n < 64 && map_next(r->waiting, &pos, NULL, NULL, &value))
			if (((struct waiting *)value)->worker == worker)
				ids[n++] = ((struct waiting *)value)->request_id;
		for (size_t i = 0; i < n; i++) {
			struct waiting *w = map_del(r->waiting, ids[i], strlen(ids[i]));
			free(w->request_id);
			free(w);
		}
	} while (n == 64);
	/* Nobody to answer; the packets themselves stay queued. */
	do {
		uint64_t seqs[64];
		n = 0;
		pos = 0;
		while (n < 64 && map_next(r->durable, &pos, NULL, NULL, &value))
			if (((struct durable_answer *)value)->worker == worker)
				seqs[n++] = ((struct durable_answer *)value)->seq;
		for (size_t i = 0; i < n; i++)
			durable_free(r, seqs[i]);
	} while (n == 64);
}

/* The queue whose packets go out on (worker, conn), if any. */
static struct queue *queue_at(struct route *r, uint32_t worker, uint64_t conn)
{
	struct endpoint at = { worker, conn };
	struct agent *a;

	if (is_channel(r, worker, conn))
		return &r->backend;
	a = map_get(r->conns, &at, sizeof at);
	return a != NULL ? &a->queue : NULL;
}

void route_ws_sent(struct route *r, uint32_t worker, uint64_t conn, uint64_t seq)
{
	struct queue *q = queue_at(r, worker, conn);

	if (q == NULL)
		return; /* detached since: its packets wait again already */
	queue_written(r, q, seq);
	queue_pump(r, q, (struct endpoint){ worker, conn });
}

void route_unsent(struct route *r, uint32_t worker, uint64_t conn, uint64_t seq,
		  double now)
{
	struct endpoint at = { worker, conn };
	struct agent *a;

	if (is_channel(r, worker, conn)) {
		log_info("Mephisto channel worker %u conn %llu cannot take packet %llu "
			 "(closing): packets for the backend wait for the next one",
			 worker, (unsigned long long)conn, (unsigned long long)seq);
		channel_lost(r);
		return;
	}
	a = map_get(r->conns, &at, sizeof at);
	if (a != NULL) /* its packets wait until it attaches again */
		agent_detach(r, a, now);
}

void route_http_request(struct route *r, uint32_t worker, uint64_t req,
			unsigned int flags, const char *agent_id,
			const char *request_id, const char *payload, size_t len,
			double now)
{
	struct durable_answer *d;
	struct qitem *item;

	if ((flags & IPC_HTTP_WAIT_DETAILS) && request_id != NULL) {
		struct waiting *w = xcalloc(1, sizeof *w);

		w->request_id = xstrdup(request_id);
		w->worker = worker;
		w->req = req;
		w->deadline = now + r->cfg.request_timeout;
		w = map_put(r->waiting, request_id, strlen(request_id), w);
		if (w != NULL) { /* a duplicated uuid: the older one loses */
			free(w->request_id);
			free(w);
		}
	}
	item = to_backend(r, payload, len, agent_id ? agent_id : "",
			  (flags & IPC_HTTP_PRECIOUS) != 0, now);
	if (item == NULL) { /* the backend's queue is full of submissions */
		if ((flags & IPC_HTTP_WAIT_DETAILS) && request_id != NULL)
			free_waiting(map_del(r->waiting, request_id, strlen(request_id)));
		http_answer_error(r, worker, req, 503,
				  "the backend's queue is full; try again");
		return;
	}
	/* Accepted: only now is the agent's local state dropped. */
	if ((flags & IPC_HTTP_FORGET_AGENT) && agent_id != NULL)
		agent_forget(r, agent_id);
	if (flags & IPC_HTTP_WAIT_DETAILS)
		return; /* answered by the backend's agent_details */
	/* "200" is a promise: given once the packet is written to the
	 * backend's socket (route_ws_sent) or committed to the store
	 * (route_changes_durable), whichever comes first. */
	store_item(r, &r->backend, item);
	d = xcalloc(1, sizeof *d);
	d->seq = item->seq;
	d->worker = worker;
	d->req = req;
	d->epoch = r->change_epoch + 1;
	d->deadline = now + r->cfg.request_timeout;
	map_put(r->durable, &d->seq, sizeof d->seq, d);
}

void route_version_mismatch(struct route *r, const char *version,
			    const char *payload, size_t len, double now)
{
	if (map_get(r->versions, version, strlen(version)) != NULL) {
		r->stats.version_warnings_suppressed++;
		return;
	}
	map_put(r->versions, version, strlen(version), r);
	to_backend(r, payload, len, "", 0, now);
}

void route_tick(struct route *r, double now)
{
	apply_liveness(r, now);
	churn_log(r, now);
	expire_requests(r, now);
	answer_durable_where(r, expired_by, &now, 503,
			     "the packet could neither be stored nor delivered in time; "
			     "it stays queued for the backend");
	if (!r->has_channel)
		backend_trim_age(r, now);
}

double route_next_deadline(const struct route *r)
{
	double next = INFINITY;
	size_t pos = 0;
	void *value;

	while (map_next(r->waiting, &pos, NULL, NULL, &value))
		next = fmin(next, ((struct waiting *)value)->deadline);
	pos = 0;
	while (map_next(r->agents, &pos, NULL, NULL, &value)) {
		const struct agent *a = value;
		if (!a->attached && a->disconnect_time != 0 && !status_is_final(a->status))
			next = fmin(next, a->disconnect_time + r->cfg.reconnect_grace);
		if (status_is_live(a->status) && a->last_ping != 0)
			next = fmin(next, a->last_ping + r->cfg.heartbeat_timeout);
	}
	if (!r->has_channel && r->backend.head != NULL && r->cfg.max_backend_queue_age > 0)
		next = fmin(next, r->backend.head->created + r->cfg.max_backend_queue_age);
	return next;
}

/* ---- actions ---- */

size_t route_actions(const struct route *r, const struct route_action **out)
{
	*out = r->actions;
	return r->nactions;
}

void route_clear_actions(struct route *r)
{
	while (r->sent != NULL) {
		struct qitem *next = r->sent->next;
		free(r->sent);
		r->sent = next;
	}
	for (size_t i = 0; i < r->nowned; i++)
		free(r->owned[i]);
	r->nowned = 0;
	r->nactions = 0;
}

size_t route_changes(const struct route *r, const struct route_change **out)
{
	*out = r->changes;
	return r->nchanges;
}

uint64_t route_change_epoch(const struct route *r) { return r->change_epoch; }

void route_changes_durable(struct route *r, uint64_t epoch)
{
	answer_durable_where(r, committed_by, &epoch, 200, NULL);
}

void route_clear_changes(struct route *r)
{
	r->change_epoch++;
	for (size_t i = 0; i < r->nchanges; i++) {
		free((char *)r->changes[i].key);
		free((char *)r->changes[i].data);
	}
	r->nchanges = 0;
}

/* ---- recovery ---- */

void route_restore_agent(struct route *r, const char *id, const char *status,
			 double last_ping, double disconnect_time, int was_attached,
			 double now)
{
	struct agent *a = agent_get(r, id, now);

	agent_set_status(r, a, status);
	/* The router was down, so silence since the last stored heartbeat
	 * says nothing: the heartbeat rule counts from the restart. */
	a->last_ping = last_ping != 0 ? now : 0;
	/* Its socket died with the previous router, or it was still within its
	 * grace when that router stopped: nobody could reconnect while the
	 * router was down, so the grace starts now. */
	a->disconnect_time = was_attached || disconnect_time != 0 ? now : 0;
	agent_changed(r, a->id);
}

void route_restore_packet(struct route *r, const char *dest, uint64_t seq,
			  double created, const char *payload, size_t len, double now)
{
	struct queue *q = strcmp(dest, PACKET_MEPHISTO) == 0
				  ? &r->backend : &agent_get(r, dest, now)->queue;
	struct qitem *item = qitem_new(seq, created, payload, len, NULL,
				       q == &r->backend && precious_text(payload));
	struct qitem **at;

	item->stored = 1;
	/* Already stored: insert without recording a change. The store loads
	 * in seq order, so this is an append but for corrupt input. */
	if (q->tail == NULL || q->tail->seq < seq) {
		if (q->tail != NULL)
			q->tail->next = item;
		else
			q->head = item;
		q->tail = item;
	} else {
		for (at = &q->head; *at != NULL && (*at)->seq < seq; at = &(*at)->next)
			;
		item->next = *at;
		*at = item;
	}
	q->count++;
	q->bytes += len;
	if (seq > r->next_seq)
		r->next_seq = seq;
}

/* ---- inspection ---- */

int route_agent_info(const struct route *r, const char *agent_id,
		     struct route_agent_info *info)
{
	const struct agent *a = agent_find(r, agent_id);

	if (a == NULL)
		return -1;
	info->status = a->status;
	info->attached = a->attached;
	info->worker = (uint32_t)a->at.worker;
	info->conn = a->at.conn;
	info->last_ping = a->last_ping;
	info->disconnect_time = a->disconnect_time;
	return 0;
}


const char *route_agent_status(const struct route *r, const char *agent_id)
{
	const struct agent *a = agent_find(r, agent_id);

	return a ? a->status : NULL;
}

int route_agent_attached(const struct route *r, const char *agent_id)
{
	const struct agent *a = agent_find(r, agent_id);

	return a != NULL && a->attached;
}

size_t route_agent_count(const struct route *r) { return map_count(r->agents); }

size_t route_queue_length(const struct route *r, const char *dest)
{
	const struct agent *a;

	if (strcmp(dest, PACKET_MEPHISTO) == 0)
		return r->backend.count - r->backend.inflight_count;
	a = agent_find(r, dest);
	return a ? a->queue.count - a->queue.inflight_count : 0;
}

int route_backend_attached(const struct route *r) { return r->has_channel; }

size_t route_waiting_requests(const struct route *r) { return map_count(r->waiting); }

const struct route_stats *route_get_stats(const struct route *r) { return &r->stats; }

/* ---- for /metrics (a walk of the agents: a scrape, not a hot path) ---- */

void route_count_statuses(const struct route *r,
			  void (*cb)(void *arg, const char *status, size_t n), void *arg)
{
	struct map *counts = map_new();
	size_t pos = 0, len;
	const void *key;
	void *value;

	while (map_next(r->agents, &pos, NULL, NULL, &value)) {
		const char *st = ((const struct agent *)value)->status;
		uintptr_t n = (uintptr_t)map_get(counts, st, strlen(st));

		map_put(counts, st, strlen(st), (void *)(n + 1));
	}
	pos = 0;
	while (map_next(counts, &pos, &key, &len, &value)) {
		char name[PACKET_MAX_STATUS_BYTES + 1];

		snprintf(name, sizeof name, "%.*s", (int)len, (const char *)key);
		cb(arg, name, (size_t)(uintptr_t)value);
	}
	map_free(counts);
}

size_t route_attached_agents(const struct route *r) { return map_count(r->conns); }

void route_agent_queues(const struct route *r, struct route_queues *q)
{
	size_t pos = 0;
	void *value;

	memset(q, 0, sizeof *q);
	while (map_next(r->agents, &pos, NULL, NULL, &value)) {
		const struct queue *aq = &((const struct agent *)value)->queue;

		if (aq->count == 0)
			continue;
		q->destinations++;
		q->packets += aq->count;
		q->bytes += aq->bytes;
		if (aq->count > q->deepest)
			q->deepest = aq->count;
		if (q->oldest == 0 || aq->head->created < q->oldest)
			q->oldest = aq->head->created;
	}
}

void route_backend_queue(const struct route *r, size_t *packets, size_t *bytes,
			 double *oldest)
{
	*packets = r->backend.count;
	*bytes = r->backend.bytes;
	*oldest = r->backend.head ? r->backend.head->created : 0;
}
