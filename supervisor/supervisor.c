/* The supervisor: one libevent loop that binds the listening socket once,
 * forks the workers (each re-executes this binary as "--worker N" with the
 * listening socket on fd 3 and its end of a socketpair on fd 4), restarts
 * crashed ones with backoff, resizes the pool on SIGHUP and drains it on
 * SIGTERM/SIGINT.
 *
 * Listen sharing: one socket bound here before forking, inherited by every
 * worker, each accepting from it on a read event (worker.c accept_cb). Unlike one
 * SO_REUSEPORT socket per worker, connections waiting in the accept queue
 * are never lost when a worker is retired (a closed SO_REUSEPORT socket
 * resets the connections queued on it), and new workers need nothing new
 * bound. README.md "Design decisions" has the measurement. */
#include "supervisor.h"

#include "../core/clock.h"
#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/peer.h"
#include "../core/route.h"
#include "store.h"
#include "metrics.h"
#include "uploads.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How often the liveness rules and request deadlines are checked. */
#define TICK_SECONDS 0.1

/* A worker that ran this long before dying restarts its backoff. */
#define RESPAWN_STABLE_SECONDS 10.0
#define RESPAWN_FIRST_DELAY 0.1

struct worker {
	struct supervisor *sup;
	int slot; /* 1-based */
	pid_t pid; /* 0: not running */
	struct peer *peer; /* its IPC; NULL once gone */
	int ready; /* its hello arrived */
	int retiring; /* told to drain; not to be respawned */
	int broken;   /* its IPC stream is not to be read any more */
	int dropping; /* worker_drop_ipc() is running */
	int crashes; /* consecutive short-lived deaths */
	double started; /* monotonic seconds */
	struct worker_stats stats; /* its last STATS */
	int has_stats;
	struct event *respawn_timer;
};

struct supervisor {
	struct config cfg;
	const char *config_path;
	const char *self_exe;
	struct event_base *base;
	int listen_fd;
	int metrics_fd; /* metrics_listen's socket, or -1 */
	uint64_t restarts_crash, restarts_stalled, restarts_broken_ipc;
	double started_epoch;
	struct store *store;
	struct uploads *uploads; /* what download_file may serve */
	double uploads_swept;    /* monotonic: upload_retention last applied */
	double status_at;        /* monotonic: STATUS= last told to systemd */
	char status_told[160];
	struct route *route;
	struct worker workers[CONFIG_MAX_WORKERS + 1]; /* [0] unused */
	struct event *signals[4];
	struct event *tick;
	struct event *commit; /* hands the staged state changes to the writer */
	struct event *committed; /* the writer finished a batch */
	uint64_t commit_epoch; /* route_change_epoch() of the batch being written */
	struct event *kill_timer;
	int shutting_down;
	int notified_ready;
	int exit_code;
};

static struct route_config route_config_of(const struct config *c)
{
	struct route_config rc = {
		.reconnect_grace = c->reconnect_grace,
		.heartbeat_timeout = c->heartbeat_timeout,
		.request_timeout = c->request_timeout,
		.max_agent_queue = (size_t)c->max_agent_queue,
		.max_backend_queue = (size_t)c->max_backend_queue,
		.max_backend_queue_bytes = (size_t)c->max_backend_queue_bytes,
		.max_backend_queue_age = c->max_backend_queue_age,
		.window_bytes = IPC_SEND_WINDOW,
		.agent_retention = c->agent_retention,
		/* room for the timestamp the worker adds as it writes */
		.max_frame_bytes = (size_t)c->backend_max_frame_bytes - IPC_STAMP_BYTES,
	};
	return rc;
}

static struct timeval seconds_tv(double s)
{
	struct timeval tv = { (time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6) };
	return tv;
}

/* ---- systemd notification (Type=notify); a no-op outside systemd ---- */

static void notify_systemd(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    (len = strlen(path)) >= sizeof sa.sun_path)
		return;
	memcpy(sa.sun_path, path, len);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), 0, (struct sockaddr *)&sa,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
		log_warn("cannot notify systemd: %s", strerror(errno));
	close(fd);
}

static int running_workers(const struct supervisor *sup);

/* STATUS= for systemctl status, when it changed, at most once a second. */
static void tell_systemd_status(struct supervisor *sup)
{
	char text[160];

	if (clock_monotonic() - sup->status_at < 1.0 || getenv("NOTIFY_SOCKET") == NULL)
		return;
	sup->status_at = clock_monotonic();
	snprintf(text, sizeof text, "STATUS=%d of %d workers, %zu agents (%zu attached), "
		 "backend %s, %zu packets queued for it", running_workers(sup),
		 config_worker_count(&sup->cfg), route_agent_count(sup->route),
		 route_attached_agents(sup->route),
		 route_backend_attached(sup->route) ? "attached" : "away",
		 route_queue_length(sup->route, PACKET_MEPHISTO));
	if (strcmp(text, sup->status_told) == 0)
		return;
	snprintf(sup->status_told, sizeof sup->status_told, "%s", text);
	notify_systemd(text);
}

/* ---- the listening socket ---- */

static int listen_socket(const char *address, int port, char *err, size_t errlen)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t sslen;
	int fd, one = 1, zero = 0;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	if (inet_pton(AF_INET, address, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		sslen = sizeof *sin;
	} else {
		inet_pton(AF_INET6, address, &sin6->sin6_addr);
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		sslen = sizeof *sin6;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	if (bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, 4096) < 0)
		goto fail;
	return fd;
fail:
	snprintf(err, errlen, "cannot listen on %s%s%s:%d: %s",
		 ss.ss_family == AF_INET6 ? "[" : "", address,
		 ss.ss_family == AF_INET6 ? "]" : "", port, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

static int listen_open(const struct config *cfg, char *err, size_t errlen)
{
	return listen_socket(cfg->listen_address, cfg->port, err, errlen);
}

/* metrics_listen's socket, or -1 (none, or the address is taken: the
 * router runs on without /metrics, which two routers on one host would
 * otherwise fight over). */
static int metrics_open(const struct config *cfg)
{
	char addr[64], err[256];
	int port, fd;

	if (config_endpoint(cfg->metrics_listen, addr, sizeof addr, &port) < 0 || port == 0)
		return -1;
	fd = listen_socket(addr, port, err, sizeof err);
	if (fd < 0)
		log_warn("metrics_listen: %s; /metrics is not served", err);
	return fd;
}

/* ---- workers ---- */

static void worker_spawn(struct supervisor *sup, int slot);

static int running_workers(const struct supervisor *sup)
{
	int n = 0;

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++)
		n += sup->workers[i].pid != 0;
	return n;
}

static void worker_message(struct peer *p, const struct ipc_message *m, void *arg);
static void worker_ended(struct peer *p, const char *why, int malformed, void *arg);
static void dispatch_actions(struct supervisor *sup);

/* w's IPC is there to take messages (not gone, not being dropped). */
static int worker_reachable(const struct worker *w)
{
	return w->peer != NULL && !w->dropping;
}

/* One message to w, written at the end of the loop turn (its peer's
 * flush); nothing when its IPC is gone. */
static void worker_send(struct worker *w, const struct ipc_message *m)
{
	if (worker_reachable(w))
		peer_send(w->peer, m);
}

/* A worker's IPC is gone (it died, or is being restarted). What it wrote
 * before it went (packets, closes, packets it could not deliver) is still
 * routed: its socket is read to its end first, each message handled and
 * its actions sent (those for its own connections are dropped: `dropping`;
 * route_worker_gone() puts their packets back in their queues). */
static void worker_drop_ipc(struct worker *w)
{
	if (w->dropping || w->peer == NULL)
		return; /* called again from its last words: the outer call ends it */
	w->dropping = 1;
	if (!w->broken)
		peer_read_to_end(w->peer);
	peer_free(w->peer);
	w->peer = NULL;
	w->dropping = 0;
	/* Its connections and waiting requests are gone with it. */
	route_worker_gone(w->sup->route, (uint32_t)w->slot, clock_epoch());
	dispatch_actions(w->sup);
}

/* What the supervisor holds for one worker is bounded: a worker that has
 * not read its IPC for ipc_stall_timeout (stopped, hung), or has more than
 * four times ipc_buffer_bytes unread, is restarted; its connections' packets
 * wait in their queues for their next connections. */
static void workers_check_draining(struct supervisor *sup)
{
	double now = clock_monotonic();
	size_t bound = 4 * (size_t)sup->cfg.ipc_buffer_bytes;

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &sup->workers[i];
		size_t held;

		if (w->peer == NULL || w->pid == 0)
			continue;
		held = peer_unwritten(w->peer);
		if (held == 0 || (held <= bound && now - peer_last_progress(w->peer) <
							  sup->cfg.ipc_stall_timeout))
			continue;
		log_error("worker %d (pid %d): %zu bytes of IPC unread%s; restarting it",
			  w->slot, (int)w->pid, held,
			  held > bound ? " (over 4 x ipc_buffer_bytes)"
				       : ", nothing read for ipc_stall_timeout");
		sup->restarts_stalled++;
		worker_drop_ipc(w);
		kill(w->pid, SIGKILL);
	}
}

/* A malformed message from our own worker is a bug: log it, restart it. */
static void worker_broken(struct worker *w, const char *why)
{
	log_error("worker %d (pid %d): broken IPC (%s); restarting it", w->slot,
		  (int)w->pid, why);
	w->sup->restarts_broken_ipc++;
	w->broken = 1;
	if (w->peer != NULL)
		peer_stop(w->peer);
	worker_drop_ipc(w);
	if (w->pid > 0)
		kill(w->pid, SIGKILL);
}

static void worker_check_ready(struct supervisor *sup)
{
	if (sup->notified_ready)
		return;
	for (int i = 1; i <= config_worker_count(&sup->cfg); i++)
		if (!sup->workers[i].ready)
			return;
	sup->notified_ready = 1;
	log_info("ready: %d workers accepting on %s port %d",
		 config_worker_count(&sup->cfg), sup->cfg.listen_address,
		 sup->cfg.port);
	notify_systemd("READY=1");
}

/* Carry out what the state machine decided: IPC to the workers. Output is
 * buffered in each worker's bufferevent and written once per loop turn. */
static void dispatch_actions(struct supervisor *sup)
{
	const struct route_action *a;
	const struct route_change *changes;
	size_t n = route_actions(sup->route, &a);
	size_t nchanges = route_changes(sup->route, &changes);

	/* State changes are written once per loop turn (commit_cb), before
	 * libevent gets to write the IPC produced in this turn. */
	if (nchanges > 0) {
		store_stage(sup->store, changes, nchanges);
		route_clear_changes(sup->route);
		if (!event_pending(sup->commit, EV_TIMEOUT, NULL))
			event_active(sup->commit, EV_TIMEOUT, 0);
	}

	for (size_t i = 0; i < n; i++) {
		struct worker *w = a[i].worker >= 1 && a[i].worker <= CONFIG_MAX_WORKERS
					   ? &sup->workers[a[i].worker] : NULL;
		struct ipc_message m;

		/* Its worker died in this very turn: route_worker_gone() has
		 * (or will have) put its packets back in their queues. */
		if (w == NULL || !worker_reachable(w))
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
		peer_send(w->peer, &m);
	}
	route_clear_actions(sup->route);
}

static char *render_metrics(struct supervisor *sup, size_t *len)
{
	struct metrics_worker workers[CONFIG_MAX_WORKERS];
	struct metrics_input in = {
		.route = sup->route, .store = sup->store, .workers = workers,
		.restarts_crash = sup->restarts_crash,
		.restarts_stalled = sup->restarts_stalled,
		.restarts_broken_ipc = sup->restarts_broken_ipc,
		.uploads = uploads_count(sup->uploads), .started = sup->started_epoch,
		.now = clock_epoch(), .workers_configured = config_worker_count(&sup->cfg),
	};

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		const struct worker *w = &sup->workers[i];

		if (w->pid == 0 && !w->has_stats)
			continue;
		workers[in.nworkers].slot = i;
		workers[in.nworkers].running = w->pid != 0;
		workers[in.nworkers].stats = w->has_stats ? &w->stats : NULL;
		in.nworkers++;
	}
	return metrics_render(&in, len);
}

/* The staged changes go to the writer in this loop turn. */
static void commit_soon(struct supervisor *sup)
{
	if (!event_pending(sup->commit, EV_TIMEOUT, NULL))
		event_active(sup->commit, EV_TIMEOUT, 0);
}

static void worker_packet(struct worker *w, uint64_t conn, const struct packet *p)
{
	log_debug("worker %d: ws frame conn %llu: %s for %s (%zu bytes)", w->slot,
		  (unsigned long long)conn, packet_type_name(p->type),
		  p->subject_id ? p->subject_id : "-", p->len);
	route_ws_packet(w->sup->route, (uint32_t)w->slot, conn, p, clock_epoch());
}

/* One message from a worker (its peer checked the hello's version). Its
 * pointers are valid during this call only (core/peer.h): the actions
 * route.c made of it are sent before it returns. */
static void worker_message(struct peer *p, const struct ipc_message *m, void *arg)
{
	struct worker *w = arg;
	struct supervisor *sup = w->sup;

	(void)p;
	switch (m->type) {
	case IPC_HELLO_WORKER:
		if (m->hello_worker.slot != (uint32_t)w->slot) {
			char why[96];
			snprintf(why, sizeof why, "hello for slot %u", m->hello_worker.slot);
			worker_broken(w, why);
			return;
		}
		w->ready = 1;
		log_debug("worker %d (pid %d) ready", w->slot, (int)w->pid);
		worker_check_ready(w->sup);
		return;
	case IPC_WS_OPENED:
		log_debug("worker %d: ws open conn %llu", w->slot,
			  (unsigned long long)m->ws_conn.conn);
		return;
	case IPC_WS_CLOSED:
		log_debug("worker %d: ws close conn %llu", w->slot,
			  (unsigned long long)m->ws_conn.conn);
		route_ws_closed(sup->route, (uint32_t)w->slot, m->ws_conn.conn, clock_epoch());
		break;
	case IPC_WS_PACKET:
		worker_packet(w, m->ws_packet.conn, &m->ws_packet.packet);
		break;
	case IPC_WS_UNSENT:
		route_unsent(sup->route, (uint32_t)w->slot, m->ws_written.conn, m->ws_written.seq,
			     clock_epoch());
		break;
	case IPC_WS_SENT:
		route_ws_sent(sup->route, (uint32_t)w->slot, m->ws_written.conn,
			      m->ws_written.seq);
		break;
	case IPC_HTTP_REQUEST:
		route_http_request(sup->route, (uint32_t)w->slot, m->http_request.req,
				   m->http_request.flags, m->http_request.agent_id,
				   m->http_request.request_id, m->http_request.packet,
				   m->http_request.len, clock_epoch());
		break;
	case IPC_VERSION_MISMATCH:
		route_version_mismatch(sup->route, m->version_mismatch.version,
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
		uploads_add(sup->uploads, &r);
		commit_soon(sup);
		return;
	}
	case IPC_STATS:
		w->stats = m->stats;
		w->has_stats = 1;
		return;
	case IPC_METRICS_REQUEST: {
		struct ipc_message answer = { .type = IPC_METRICS };

		if (!worker_reachable(w))
			return;
		answer.metrics.req = m->metrics_request.req;
		answer.metrics.text = render_metrics(sup, &answer.metrics.len);
		worker_send(w, &answer);
		free((char *)answer.metrics.text);
		return;
	}
	case IPC_DOWNLOAD_CHECK: {
		struct ipc_message answer = { .type = IPC_DOWNLOAD_INFO };

		answer.download_info.req = m->download_check.req;
		answer.download_info.found =
			uploads_find(sup->uploads, m->download_check.stored,
				     &answer.download_info.dev, &answer.download_info.ino);
		worker_send(w, &answer);
		return;
	}
	default:
		worker_broken(w, "message of the wrong direction");
		return;
	}
	dispatch_actions(sup);
}

static void worker_ended(struct peer *p, const char *why, int malformed, void *arg)
{
	struct worker *w = arg;

	(void)p;
	if (malformed) {
		worker_broken(w, why);
		return;
	}
	/* The process itself is reaped by SIGCHLD. */
	log_debug("worker %d: IPC %s", w->slot, why);
	worker_drop_ipc(w);
}

static void worker_send_hello(struct supervisor *sup, struct worker *w)
{
	struct ipc_message hello = { .type = IPC_HELLO_SUPERVISOR };
	char *text = config_format(&sup->cfg);

	hello.hello_supervisor.slot = (uint32_t)w->slot;
	hello.hello_supervisor.config = text;
	hello.hello_supervisor.config_len = strlen(text);
	worker_send(w, &hello);
	free(text);
}

static void worker_drain(struct worker *w)
{
	w->retiring = 1;
	if (!worker_reachable(w)) {
		kill(w->pid, SIGTERM);
		return;
	}
	worker_send(w, &(struct ipc_message){ .type = IPC_DRAIN });
}

/* In the child between fork and exec: only async-signal-safe calls. */
static void child_exec(struct supervisor *sup, int slot, int ipc_fd,
		       pid_t parent)
{
	char slot_text[16];
	char *argv[] = { "mephisto-router", "--worker", slot_text, NULL };
	int listen_copy, ipc_copy, metrics_copy;
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
		_exit(1);
	/* Move both fds out of the way, then onto 3 and 4 (dup2 clears
	 * close-on-exec there); every other descriptor closes on exec. */
	listen_copy = fcntl(sup->listen_fd, F_DUPFD_CLOEXEC, 10);
	ipc_copy = fcntl(ipc_fd, F_DUPFD_CLOEXEC, 10);
	metrics_copy = sup->metrics_fd >= 0 ? fcntl(sup->metrics_fd, F_DUPFD_CLOEXEC, 10) : -1;
	if (listen_copy < 0 || ipc_copy < 0 || dup2(listen_copy, 3) < 0 ||
	    dup2(ipc_copy, 4) < 0 || (metrics_copy >= 0 && dup2(metrics_copy, 5) < 0))
		_exit(1);
	close_range(metrics_copy >= 0 ? 6 : 5, ~0U, 0);
	snprintf(slot_text, sizeof slot_text, "%d", slot);
	execv(sup->self_exe, argv);
	_exit(127);
}

static void worker_spawn(struct supervisor *sup, int slot)
{
	struct worker *w = &sup->workers[slot];
	int sv[2];
	pid_t pid, parent = getpid();

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		log_error("worker %d: socketpair: %s", slot, strerror(errno));
		return;
	}
	pid = fork();
	if (pid < 0) {
		log_error("worker %d: fork: %s", slot, strerror(errno));
		close(sv[0]);
		close(sv[1]);
		return;
	}
	if (pid == 0)
		child_exec(sup, slot, sv[1], parent);
	close(sv[1]);
	evutil_make_socket_nonblocking(sv[0]);
	w->sup = sup;
	w->slot = slot;
	w->pid = pid;
	w->ready = 0;
	w->retiring = 0;
	w->broken = 0;
	w->started = clock_monotonic();
	{
		/* Written at the end of each loop turn: one write per worker
		 * per turn instead of one per message. */
		const struct peer_options o = {
			.max_message = ipc_max_message(sup->cfg.max_message_bytes,
						       sup->cfg.backend_max_frame_bytes),
			.hello = IPC_HELLO_WORKER,
			.flush_priority = -1,
		};
		static const struct peer_callbacks cb = {
			.message = worker_message, .ended = worker_ended,
		};

		w->peer = peer_new(sup->base, sv[0], &o, &cb, w);
	}
	worker_send_hello(sup, w);
	log_info("worker %d started (pid %d)", slot, (int)pid);
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	(void)fd;
	(void)what;
	if (!w->sup->shutting_down && w->pid == 0 &&
	    w->slot <= config_worker_count(&w->sup->cfg))
		worker_spawn(w->sup, w->slot);
}

static void describe_status(int status, char *out, size_t len)
{
	if (WIFEXITED(status))
		snprintf(out, len, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(out, len, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(out, len, "ended (status 0x%x)", status);
}

static void worker_exited(struct supervisor *sup, struct worker *w, int status)
{
	char how[96];
	double uptime = clock_monotonic() - w->started, delay;
	int was_retiring = w->retiring;

	describe_status(status, how, sizeof how);
	worker_drop_ipc(w);
	w->pid = 0;
	w->ready = 0;
	w->retiring = 0;
	if (sup->shutting_down || was_retiring) {
		log_info("worker %d %s", w->slot, how);
		return;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_CONFIG) {
		log_error("worker %d %s: it cannot work with this configuration; "
			  "not restarting it", w->slot, how);
		if (running_workers(sup) == 0) {
			log_error("no worker left; stopping");
			sup->exit_code = EXIT_CONFIG;
			event_base_loopexit(sup->base, NULL);
		}
		return;
	}
	sup->restarts_crash++;
	w->has_stats = 0;
	if (uptime >= RESPAWN_STABLE_SECONDS)
		w->crashes = 0;
	w->crashes++;
	delay = RESPAWN_FIRST_DELAY;
	for (int i = 1; i < w->crashes && delay < sup->cfg.respawn_max_delay; i++)
		delay *= 2;
	if (delay > sup->cfg.respawn_max_delay)
		delay = sup->cfg.respawn_max_delay;
	log_warn("worker %d (uptime %.1f s) %s; restarting it in %.2f s", w->slot,
		 uptime, how, delay);
	if (w->respawn_timer == NULL)
		w->respawn_timer = evtimer_new(sup->base, respawn_cb, w);
	struct timeval tv = seconds_tv(delay);
	evtimer_add(w->respawn_timer, &tv);
}

/* Start missing workers up to the configured count; drain those above it. */
static void workers_resize(struct supervisor *sup)
{
	int want = config_worker_count(&sup->cfg);

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &sup->workers[i];

		w->slot = i;
		w->sup = sup;
		if (i <= want && w->pid == 0 &&
		    (w->respawn_timer == NULL || !evtimer_pending(w->respawn_timer, NULL)))
			worker_spawn(sup, i);
		if (i > want) {
			if (w->respawn_timer != NULL)
				evtimer_del(w->respawn_timer);
			if (w->pid != 0 && !w->retiring) {
				log_info("worker %d: draining (workers = %d)", i, want);
				worker_drain(w);
			}
		}
	}
}

/* ---- signals ---- */

static void reap_cb(evutil_socket_t sig, short what, void *arg)
{
	struct supervisor *sup = arg;
	pid_t pid;
	int status;

	(void)sig;
	(void)what;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
			if (sup->workers[i].pid == pid) {
				worker_exited(sup, &sup->workers[i], status);
				break;
			}
		}
	}
	if (sup->shutting_down && running_workers(sup) == 0)
		event_base_loopexit(sup->base, NULL);
}

static void reload(struct supervisor *sup)
{
	struct config loaded;
	char err[1024], restart[512];
	char *text;

	config_defaults(&loaded);
	if (config_load_file(&loaded, sup->config_path, err, sizeof err) < 0 ||
	    config_apply_env(&loaded, err, sizeof err) < 0 ||
	    supervisor_check(&loaded, 1, err, sizeof err) < 0) {
		log_error("SIGHUP: %s; keeping the running configuration", err);
		return;
	}
	if (config_reload(&sup->cfg, &loaded, restart, sizeof restart) > 0)
		log_warn("SIGHUP: %s changed; a running router cannot change %s, "
			 "restart it to apply", restart,
			 strchr(restart, ',') ? "them" : "it");
	log_set_level((enum log_level)sup->cfg.log_level);
	{
		struct route_config rc = route_config_of(&sup->cfg);
		route_set_config(sup->route, &rc);
	}
	log_info("SIGHUP: configuration re-read from %s (workers = %d)",
		 sup->config_path, config_worker_count(&sup->cfg));
	text = config_format(&sup->cfg);
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &sup->workers[i];
		if (w->peer != NULL) /* backend_max_frame_bytes may have grown */
			peer_raise_max(w->peer, ipc_max_message(sup->cfg.max_message_bytes,
								sup->cfg.backend_max_frame_bytes));
		if (w->peer != NULL && !w->retiring)
			worker_send(w, &(struct ipc_message){
					       .type = IPC_CONFIG,
					       .config = { text, strlen(text) } });
	}
	free(text);
	workers_resize(sup);
}

/* SIGHUP: re-read the config file. systemd hears RELOADING=1, then READY=1
 * once done (the running configuration kept if the file is bad). */
static void reload_cb(evutil_socket_t sig, short what, void *arg)
{
	struct supervisor *sup = arg;
	char text[64];

	(void)sig;
	(void)what;
	if (sup->shutting_down)
		return;
	if (sup->config_path == NULL) {
		log_warn("SIGHUP: started without --config, nothing to re-read");
		return;
	}
	snprintf(text, sizeof text, "RELOADING=1\nMONOTONIC_USEC=%.0f", clock_monotonic() * 1e6);
	notify_systemd(text);
	reload(sup);
	notify_systemd("READY=1");
}

static void kill_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;

	(void)fd;
	(void)what;
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		if (sup->workers[i].pid != 0) {
			log_warn("worker %d did not drain within %.1f s; killing it",
				 i, sup->cfg.shutdown_timeout);
			kill(sup->workers[i].pid, SIGKILL);
		}
	}
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct supervisor *sup = arg;
	struct timeval tv;

	(void)what;
	if (sup->shutting_down) {
		log_warn("%s again: stopping the workers now", strsignal((int)sig));
		kill_timer_cb(-1, 0, sup);
		return;
	}
	sup->shutting_down = 1;
	notify_systemd("STOPPING=1");
	log_info("%s: draining %d workers (at most %.1f s)", strsignal((int)sig),
		 running_workers(sup), sup->cfg.shutdown_timeout);
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &sup->workers[i];
		if (w->respawn_timer != NULL)
			evtimer_del(w->respawn_timer);
		if (w->pid != 0)
			worker_drain(w);
	}
	if (running_workers(sup) == 0) {
		event_base_loopexit(sup->base, NULL);
		return;
	}
	/* Workers bound their own drain by shutdown_timeout; this is the
	 * backstop for one that hangs. */
	sup->kill_timer = evtimer_new(sup->base, kill_timer_cb, sup);
	tv = seconds_tv(sup->cfg.shutdown_timeout + 0.5);
	evtimer_add(sup->kill_timer, &tv);
}

static void commit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;
	uint64_t epoch = route_change_epoch(sup->route);

	(void)fd;
	(void)what;
	if (store_commit_begin(sup->store, sup->route, clock_epoch()))
		sup->commit_epoch = epoch;
}

static void committed_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;
	struct timeval retry = { 1, 0 };
	int rc = store_commit_end(sup->store);

	(void)fd;
	(void)what;
	if (rc > 0) {
		/* Requests waiting for their packet to be stored are answered. */
		route_changes_durable(sup->route, sup->commit_epoch);
		dispatch_actions(sup);
	}
	if (store_failed(sup->store) || !store_has_staged(sup->store))
		return;
	if (rc < 0)
		evtimer_add(sup->commit, &retry);
	else
		event_active(sup->commit, EV_TIMEOUT, 0);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;

	(void)fd;
	(void)what;
	route_tick(sup->route, clock_epoch());
	dispatch_actions(sup);
	workers_check_draining(sup);
	tell_systemd_status(sup);
	if (sup->cfg.upload_retention > 0 &&
	    clock_monotonic() - sup->uploads_swept >= fmin(60, sup->cfg.upload_retention)) {
		sup->uploads_swept = clock_monotonic();
		if (uploads_expire(sup->uploads, sup->cfg.upload_dir,
				   sup->cfg.upload_retention, clock_epoch()) > 0)
			commit_soon(sup);
	}
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int supervisor_main(const struct config *cfg, const char *config_path,
		    const char *self_exe)
{
	static struct supervisor sup;
	const int signums[] = { SIGCHLD, SIGHUP, SIGTERM, SIGINT };
	event_callback_fn handlers[] = { reap_cb, reload_cb, stop_cb, stop_cb };
	char err[1024];

	memset(&sup, 0, sizeof sup);
	sup.cfg = *cfg;
	sup.config_path = config_path;
	sup.self_exe = self_exe;
	log_init("supervisor");
	log_set_level((enum log_level)cfg->log_level);
	raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);

	if (supervisor_check(cfg, 1, err, sizeof err) < 0) {
		fprintf(stderr, "mephisto-router: %s\n", err);
		return EXIT_CONFIG;
	}
	sup.started_epoch = clock_epoch();
	sup.listen_fd = listen_open(cfg, err, sizeof err);
	if (sup.listen_fd < 0) {
		fprintf(stderr, "mephisto-router: %s\n", err);
		return EXIT_CONFIG;
	}
	sup.metrics_fd = metrics_open(cfg);
	sup.store = store_open(cfg->state_path, err, sizeof err);
	if (sup.store == NULL) {
		fprintf(stderr, "mephisto-router: %s\n", err);
		close(sup.listen_fd);
		if (sup.metrics_fd >= 0)
			close(sup.metrics_fd);
		return EXIT_CONFIG;
	}
	if (access(cfg->static_dir, R_OK | X_OK) < 0)
		log_warn("static_dir %s: %s; static files will answer 404",
			 cfg->static_dir, strerror(errno));

	sup.base = event_base_new();
	if (sup.base == NULL)
		fatal("cannot create the event loop");
	{
		struct route_config rc = route_config_of(cfg);
		struct timeval tv = seconds_tv(TICK_SECONDS);
		size_t agents, packets;
		double started = clock_monotonic();

		sup.route = route_new(&rc, clock_epoch());
		sup.tick = event_new(sup.base, -1, EV_PERSIST, tick_cb, &sup);
		event_add(sup.tick, &tv);
		sup.commit = evtimer_new(sup.base, commit_cb, &sup);
		if (store_load(sup.store, sup.route, clock_epoch(), &agents, &packets, err,
			       sizeof err) < 0) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			sup.exit_code = EXIT_CONFIG;
			goto stop;
		}
		if (agents || packets)
			log_info("recovered %zu agents and %zu queued packets from %s in "
				 "%.0f ms", agents, packets, cfg->state_path,
				 (clock_monotonic() - started) * 1000);
		sup.uploads = uploads_new(sup.store, err, sizeof err);
		if (sup.uploads == NULL) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			sup.exit_code = EXIT_CONFIG;
			goto stop;
		}
		{
			char pid[24];

			/* for "status": whether this router runs */
			snprintf(pid, sizeof pid, "%d", (int)getpid());
			store_set_meta(sup.store, "pid", pid);
			store_set_meta(sup.store, "stopped_at", "0");
		}
		if (store_start(sup.store, err, sizeof err) < 0) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			sup.exit_code = EXIT_CONFIG;
			goto stop;
		}
		sup.committed = event_new(sup.base, store_notify_fd(sup.store),
					  EV_READ | EV_PERSIST, committed_cb, &sup);
		event_add(sup.committed, NULL);
		dispatch_actions(&sup);
	}
	for (size_t i = 0; i < 4; i++) {
		sup.signals[i] = evsignal_new(sup.base, signums[i], handlers[i], &sup);
		evsignal_add(sup.signals[i], NULL);
	}
	log_info("mephisto-router %s starting: port %d, %d workers, state %s",
		 MR_VERSION, cfg->port, config_worker_count(cfg), cfg->state_path);
	workers_resize(&sup);
	event_base_dispatch(sup.base);
stop:

	/* Stopped: every worker has exited (or none could run). */
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &sup.workers[i];
		if (w->pid != 0) {
			kill(w->pid, SIGKILL);
			waitpid(w->pid, NULL, 0);
		}
		worker_drop_ipc(w);
		if (w->respawn_timer != NULL)
			event_free(w->respawn_timer);
	}
	/* Stopping already: a further SIGTERM (a launcher forwarding one more)
	 * must not kill the process before its last commit. */
	{
		sigset_t stop;

		sigemptyset(&stop);
		sigaddset(&stop, SIGTERM);
		sigaddset(&stop, SIGINT);
		sigaddset(&stop, SIGHUP);
		sigprocmask(SIG_BLOCK, &stop, NULL);
	}
	for (size_t i = 0; i < 4; i++)
		if (sup.signals[i] != NULL)
			event_free(sup.signals[i]);
	event_free(sup.tick);
	dispatch_actions(&sup);
	{
		char when[32];

		snprintf(when, sizeof when, "%.3f", clock_epoch());
		store_stage_meta(sup.store, "stopped_at", when);
	}
	if (store_commit(sup.store, sup.route, clock_epoch()) < 0)
		log_error("state database: the last changes could not be written");
	event_free(sup.commit);
	if (sup.committed != NULL)
		event_free(sup.committed);
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++)
		peer_free(sup.workers[i].peer);
	route_free(sup.route);
	uploads_free(sup.uploads);
	if (sup.kill_timer != NULL)
		event_free(sup.kill_timer);
	event_base_free(sup.base);
	store_close(sup.store);
	close(sup.listen_fd);
	if (sup.metrics_fd >= 0)
		close(sup.metrics_fd);
	log_info("stopped");
	return sup.exit_code;
}
