/* The routing hub: a worker's message (handed over by the pool) becomes a
 * call of the routing state machine; the actions it returns go to the
 * workers through the pool before the message's callback returns (the
 * message's memory is the peer's until then, core/peer.h); the state
 * changes it reports are staged in the store and handed to its writer once
 * per loop turn (commit_cb), and requests waiting for their packet to be
 * durable are answered when the writer reports the batch written
 * (committed_cb). A dying worker's last words come here like any other
 * message, with the actions for that worker dropped by the pool; then
 * hub_worker_gone(). */
#include "hub.h"

#include "../core/clock.h"
#include "../core/log.h"
#include "../core/xalloc.h"
#include "metrics.h"
#include "uploads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct hub {
	struct event_base *base;
	const struct config *cfg;
	struct route *route;
	struct store *store;
	struct pool *pool;
	struct uploads *uploads; /* what download_file may serve */
	double started;          /* epoch seconds, for /metrics */
	double uploads_swept;    /* monotonic: upload_retention last applied */
	struct event *commit;    /* hands the staged state changes to the writer */
	struct event *committed; /* the writer finished a batch */
	uint64_t commit_epoch;   /* route_change_epoch() of the batch being written */
};

static void commit_cb(evutil_socket_t fd, short what, void *arg);

struct hub *hub_new(struct event_base *base, const struct config *cfg,
		    struct route *route, struct store *store, struct pool *pool,
		    double started)
{
	struct hub *h = xcalloc(1, sizeof *h);

	h->base = base;
	h->cfg = cfg;
	h->route = route;
	h->store = store;
	h->pool = pool;
	h->started = started;
	h->commit = evtimer_new(base, commit_cb, h);
	return h;
}

void hub_free(struct hub *h)
{
	if (h == NULL)
		return;
	event_free(h->commit);
	if (h->committed != NULL)
		event_free(h->committed);
	uploads_free(h->uploads);
	free(h);
}

int hub_load_uploads(struct hub *h, char *err, size_t errlen)
{
	h->uploads = uploads_new(h->store, err, errlen);
	return h->uploads == NULL ? -1 : 0;
}

/* ---- commits ---- */

/* The staged changes go to the writer in this loop turn. */
static void commit_soon(struct hub *h)
{
	if (!event_pending(h->commit, EV_TIMEOUT, NULL))
		event_active(h->commit, EV_TIMEOUT, 0);
}

static void commit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hub *h = arg;
	uint64_t epoch = route_change_epoch(h->route);

	(void)fd;
	(void)what;
	if (store_commit_begin(h->store, h->route, clock_epoch()))
		h->commit_epoch = epoch;
}

static void committed_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hub *h = arg;
	struct timeval retry = { 1, 0 };
	int rc = store_commit_end(h->store);

	(void)fd;
	(void)what;
	if (rc > 0) {
		/* Requests waiting for their packet to be stored are answered. */
		route_changes_durable(h->route, h->commit_epoch);
		hub_dispatch(h);
	}
	if (store_failed(h->store) || !store_has_staged(h->store))
		return;
	if (rc < 0)
		evtimer_add(h->commit, &retry);
	else
		event_active(h->commit, EV_TIMEOUT, 0);
}

void hub_start(struct hub *h)
{
	h->committed = event_new(h->base, store_notify_fd(h->store), EV_READ | EV_PERSIST,
				 committed_cb, h);
	event_add(h->committed, NULL);
	hub_dispatch(h);
}

/* ---- actions ---- */

/* Output is buffered in each worker's peer and written once per loop
 * turn. */
void hub_dispatch(struct hub *h)
{
	const struct route_action *a;
	const struct route_change *changes;
	size_t n = route_actions(h->route, &a);
	size_t nchanges = route_changes(h->route, &changes);

	/* State changes are written once per loop turn (commit_cb), before
	 * libevent gets to write the IPC produced in this turn. */
	if (nchanges > 0) {
		store_stage(h->store, changes, nchanges);
		route_clear_changes(h->route);
		commit_soon(h);
	}

	for (size_t i = 0; i < n; i++) {
		struct ipc_message m;

		/* Its worker died in this very turn: route_worker_gone() has
		 * (or will have) put its packets back in their queues. */
		if (a[i].worker < 1 || a[i].worker > CONFIG_MAX_WORKERS ||
		    !pool_reachable(h->pool, (int)a[i].worker))
			continue;
		if (a[i].kind == ROUTE_SEND) {
			m.type = IPC_WS_SEND;
			m.ws_send.conn = a[i].id;
			m.ws_send.seq = a[i].seq;
			m.ws_send.answers = a[i].answers;
			m.ws_send.packet = a[i].data;
			m.ws_send.len = a[i].len;
		} else {
			m.type = IPC_HTTP_ANSWER;
			m.http_answer.req = a[i].id;
			m.http_answer.status = a[i].status;
			m.http_answer.body = a[i].data;
			m.http_answer.len = a[i].len;
		}
		pool_send(h->pool, (int)a[i].worker, &m);
	}
	route_clear_actions(h->route);
}

void hub_worker_gone(struct hub *h, int slot)
{
	route_worker_gone(h->route, (uint32_t)slot, clock_epoch());
	hub_dispatch(h);
}

void hub_tick(struct hub *h)
{
	route_tick(h->route, clock_epoch());
	hub_dispatch(h);
}

void hub_expire_uploads(struct hub *h)
{
	if (h->cfg->upload_retention > 0 &&
	    clock_monotonic() - h->uploads_swept >= fmin(60, h->cfg->upload_retention)) {
		h->uploads_swept = clock_monotonic();
		if (uploads_expire(h->uploads, h->cfg->upload_dir,
				   h->cfg->upload_retention, clock_epoch()) > 0)
			commit_soon(h);
	}
}

/* ---- the workers' messages ---- */

static char *render_metrics(struct hub *h, size_t *len)
{
	struct metrics_worker workers[CONFIG_MAX_WORKERS];
	const struct pool_restarts *restarts = pool_restarts(h->pool);
	struct metrics_input in = {
		.route = h->route, .store = h->store, .workers = workers,
		.restarts_crash = restarts->crash,
		.restarts_stalled = restarts->stalled,
		.restarts_broken_ipc = restarts->broken_ipc,
		.uploads = uploads_count(h->uploads), .started = h->started,
		.now = clock_epoch(), .workers_configured = config_worker_count(h->cfg),
	};

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		const struct worker_stats *stats;
		int running = pool_worker_state(h->pool, i, &stats);

		if (!running && stats == NULL)
			continue;
		workers[in.nworkers].slot = i;
		workers[in.nworkers].running = running;
		workers[in.nworkers].stats = stats;
		in.nworkers++;
	}
	return metrics_render(&in, len);
}

static void worker_packet(struct hub *h, int slot, uint64_t conn, const struct packet *p)
{
	log_debug("worker %d: ws frame conn %llu: %s for %s (%zu bytes)", slot,
		  (unsigned long long)conn, packet_type_name(p->type),
		  p->subject_id ? p->subject_id : "-", p->len);
	route_ws_packet(h->route, (uint32_t)slot, conn, p, clock_epoch());
}

void hub_worker_message(struct hub *h, int slot, const struct ipc_message *m)
{
	switch (m->type) {
	case IPC_WS_OPENED:
		log_debug("worker %d: ws open conn %llu", slot,
			  (unsigned long long)m->ws_conn.conn);
		return;
	case IPC_WS_CLOSED:
		log_debug("worker %d: ws close conn %llu", slot,
			  (unsigned long long)m->ws_conn.conn);
		route_ws_closed(h->route, (uint32_t)slot, m->ws_conn.conn, clock_epoch());
		break;
	case IPC_WS_PACKET:
		worker_packet(h, slot, m->ws_packet.conn, &m->ws_packet.packet);
		break;
	case IPC_WS_UNSENT:
		route_unsent(h->route, (uint32_t)slot, m->ws_written.conn, m->ws_written.seq,
			     clock_epoch());
		break;
	case IPC_WS_SENT:
		route_ws_sent(h->route, (uint32_t)slot, m->ws_written.conn, m->ws_written.seq);
		break;
	case IPC_HTTP_REQUEST:
		route_http_request(h->route, (uint32_t)slot, m->http_request.req,
				   m->http_request.flags, m->http_request.agent_id,
				   m->http_request.request_id, m->http_request.packet,
				   m->http_request.len, clock_epoch());
		break;
	case IPC_VERSION_MISMATCH:
		route_version_mismatch(h->route, m->version_mismatch.version,
				       m->version_mismatch.packet, m->version_mismatch.len,
				       clock_epoch());
		break;
	case IPC_UPLOAD_STORED: {
		struct upload_record r = {
			.stored = m->upload_stored.stored,
			.original = m->upload_stored.original,
			.field = m->upload_stored.field,
			.agent = m->upload_stored.agent_id,
			.size = m->upload_stored.size,
			.dev = m->upload_stored.dev,
			.ino = m->upload_stored.ino,
			.created = clock_epoch(),
		};
		/* before the submission that names it: committed with it */
		uploads_add(h->uploads, &r);
		commit_soon(h);
		return;
	}
	case IPC_METRICS_REQUEST: {
		struct ipc_message answer = { .type = IPC_METRICS };

		if (!pool_reachable(h->pool, slot))
			return;
		answer.metrics.req = m->metrics_request.req;
		answer.metrics.text = render_metrics(h, &answer.metrics.len);
		pool_send(h->pool, slot, &answer);
		free((char *)answer.metrics.text);
		return;
	}
	case IPC_DOWNLOAD_CHECK: {
		struct ipc_message answer = { .type = IPC_DOWNLOAD_INFO };

		answer.download_info.req = m->download_check.req;
		answer.download_info.found =
			uploads_find(h->uploads, m->download_check.stored,
				     &answer.download_info.dev, &answer.download_info.ino);
		pool_send(h->pool, slot, &answer);
		return;
	}
	default:
		pool_broken(h->pool, slot, "message of the wrong direction");
		return;
	}
	hub_dispatch(h);
}
