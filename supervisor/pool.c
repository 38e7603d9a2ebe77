/* The worker pool. Each worker re-executes this binary as "--worker N"
 * with the listening socket on fd 3, its end of a socketpair on fd 4 and
 * the metrics_listen socket, if any, on fd 5; the pool keeps the other end
 * as a struct peer and says hello first with the configuration. A worker
 * that dies is restarted with backoff (not one that exited EXIT_CONFIG);
 * one that leaves its IPC unread or sends a malformed message is killed and
 * restarted; those above the configured count, and all of them at the
 * stop, are told to drain.
 *
 * A worker's IPC that goes (it died, or is being restarted) is read to its
 * end first: what the worker wrote before it went still reaches the owner
 * (callbacks.message), with sends to that worker dropped meanwhile (its
 * `dropping` flag); then callbacks.gone. */
#include "pool.h"

#include "supervisor.h"

#include "../core/clock.h"
#include "../core/log.h"
#include "../core/peer.h"
#include "../core/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* A worker that ran this long before dying restarts its backoff. */
#define RESPAWN_STABLE_SECONDS 10.0
#define RESPAWN_FIRST_DELAY 0.1

struct worker {
	struct pool *pool;
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

struct pool {
	struct event_base *base;
	const struct config *cfg;
	const char *self_exe;
	int listen_fd;
	int metrics_fd; /* or -1 */
	struct pool_callbacks cb;
	void *arg;
	int stopping; /* pool_drain(): nothing is restarted any more */
	struct pool_restarts restarts;
	struct worker workers[CONFIG_MAX_WORKERS + 1]; /* [0] unused */
};

static struct timeval seconds_tv(double s)
{
	struct timeval tv = { (time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6) };
	return tv;
}

struct pool *pool_new(struct event_base *base, const struct config *cfg,
		      const char *self_exe, int listen_fd, int metrics_fd,
		      const struct pool_callbacks *cb, void *arg)
{
	struct pool *pool = xcalloc(1, sizeof *pool);

	pool->base = base;
	pool->cfg = cfg;
	pool->self_exe = self_exe;
	pool->listen_fd = listen_fd;
	pool->metrics_fd = metrics_fd;
	pool->cb = *cb;
	pool->arg = arg;
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		pool->workers[i].pool = pool;
		pool->workers[i].slot = i;
	}
	return pool;
}

void pool_free(struct pool *pool)
{
	if (pool == NULL)
		return;
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &pool->workers[i];

		peer_free(w->peer); /* NULL after pool_stop() */
		if (w->respawn_timer != NULL)
			event_free(w->respawn_timer);
	}
	free(pool);
}

static struct worker *worker_of(struct pool *pool, int slot)
{
	return slot >= 1 && slot <= CONFIG_MAX_WORKERS ? &pool->workers[slot] : NULL;
}

int pool_running(const struct pool *pool)
{
	int n = 0;

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++)
		n += pool->workers[i].pid != 0;
	return n;
}

/* w's IPC is there to take messages (not gone, not being dropped). */
static int worker_reachable(const struct worker *w)
{
	return w->peer != NULL && !w->dropping;
}

int pool_reachable(const struct pool *pool, int slot)
{
	return slot >= 1 && slot <= CONFIG_MAX_WORKERS &&
	       worker_reachable(&pool->workers[slot]);
}

static void worker_send(struct worker *w, const struct ipc_message *m)
{
	if (worker_reachable(w))
		peer_send(w->peer, m);
}

void pool_send(struct pool *pool, int slot, const struct ipc_message *m)
{
	struct worker *w = worker_of(pool, slot);

	if (w != NULL)
		worker_send(w, m);
}

/* A worker's IPC is gone (it died, or is being restarted). What it wrote
 * before it went (packets, closes, packets it could not deliver) still goes
 * to the owner: its socket is read to its end first, each message handed
 * over (the owner's sends to this worker are dropped: `dropping`), then
 * gone() (route_worker_gone() puts its packets back in their queues). */
static void worker_drop_ipc(struct worker *w)
{
	struct pool *pool = w->pool;

	if (w->dropping || w->peer == NULL)
		return; /* called again from its last words: the outer call ends it */
	w->dropping = 1;
	if (!w->broken)
		peer_read_to_end(w->peer);
	peer_free(w->peer);
	w->peer = NULL;
	w->dropping = 0;
	/* Its connections and waiting requests are gone with it. */
	pool->cb.gone(w->slot, pool->arg);
}

/* What the supervisor holds for one worker is bounded: a worker that has
 * not read its IPC for ipc_stall_timeout (stopped, hung), or has more than
 * four times ipc_buffer_bytes unread, is restarted; its connections' packets
 * wait in their queues for their next connections. */
void pool_check_stalls(struct pool *pool)
{
	double now = clock_monotonic();
	size_t bound = 4 * (size_t)pool->cfg->ipc_buffer_bytes;

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &pool->workers[i];
		size_t held;

		if (w->peer == NULL || w->pid == 0)
			continue;
		held = peer_unwritten(w->peer);
		if (held == 0 || (held <= bound && now - peer_last_progress(w->peer) <
							  pool->cfg->ipc_stall_timeout))
			continue;
		log_error("worker %d (pid %d): %zu bytes of IPC unread%s; restarting it",
			  w->slot, (int)w->pid, held,
			  held > bound ? " (over 4 x ipc_buffer_bytes)"
				       : ", nothing read for ipc_stall_timeout");
		pool->restarts.stalled++;
		worker_drop_ipc(w);
		kill(w->pid, SIGKILL);
	}
}

/* A malformed message from our own worker is a bug: log it, restart it. */
static void worker_broken(struct worker *w, const char *why)
{
	log_error("worker %d (pid %d): broken IPC (%s); restarting it", w->slot,
		  (int)w->pid, why);
	w->pool->restarts.broken_ipc++;
	w->broken = 1;
	if (w->peer != NULL)
		peer_stop(w->peer);
	worker_drop_ipc(w);
	if (w->pid > 0)
		kill(w->pid, SIGKILL);
}

void pool_broken(struct pool *pool, int slot, const char *why)
{
	struct worker *w = worker_of(pool, slot);

	if (w != NULL)
		worker_broken(w, why);
}

static int all_ready(const struct pool *pool)
{
	for (int i = 1; i <= config_worker_count(pool->cfg); i++)
		if (!pool->workers[i].ready)
			return 0;
	return 1;
}

/* One message from a worker (its peer checked the hello's version): its
 * hello and STATS are about the worker itself; the rest is the owner's. */
static void worker_message(struct peer *p, const struct ipc_message *m, void *arg)
{
	struct worker *w = arg;
	struct pool *pool = w->pool;

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
		if (all_ready(pool))
			pool->cb.ready(pool->arg);
		return;
	case IPC_STATS:
		memcpy(&w->stats, m->stats.bytes, sizeof w->stats);
		w->has_stats = 1;
		return;
	default:
		pool->cb.message(w->slot, m, pool->arg);
		return;
	}
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

static void worker_send_hello(struct pool *pool, struct worker *w)
{
	struct ipc_message hello = { .type = IPC_HELLO_SUPERVISOR };
	char *text = config_format(pool->cfg);

	hello.hello_supervisor.slot = (uint32_t)w->slot;
	hello.hello_supervisor.config = text;
	hello.hello_supervisor.config_len = strlen(text);
	worker_send(w, &hello);
	free(text);
}

void pool_send_config(struct pool *pool)
{
	char *text = config_format(pool->cfg);

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &pool->workers[i];
		if (w->peer != NULL) /* backend_max_frame_bytes may have grown */
			peer_raise_max(w->peer, ipc_max_message(pool->cfg->max_message_bytes,
								pool->cfg->backend_max_frame_bytes));
		if (w->peer != NULL && !w->retiring)
			worker_send(w, &(struct ipc_message){
					       .type = IPC_CONFIG,
					       .config = { text, strlen(text) } });
	}
	free(text);
}

/* w is to drain (IPC_DRAIN, or SIGTERM when its IPC is gone) and, once
 * it exits, not to be restarted. */
static void worker_retire(struct worker *w)
{
	w->retiring = 1;
	if (!worker_reachable(w)) {
		kill(w->pid, SIGTERM);
		return;
	}
	worker_send(w, &(struct ipc_message){ .type = IPC_DRAIN });
}

/* In the child between fork and exec: only async-signal-safe calls. */
static void child_exec(const struct pool *pool, int slot, int ipc_fd, pid_t parent)
{
	char slot_text[16];
	char *argv[] = { "mephisto-router", "--worker", slot_text, NULL };
	int listen_copy, ipc_copy, metrics_copy;
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
		_exit(1);
	/* Move the fds out of the way, then onto 3, 4 and 5 (dup2 clears
	 * close-on-exec there); every other descriptor closes on exec. */
	listen_copy = fcntl(pool->listen_fd, F_DUPFD_CLOEXEC, 10);
	ipc_copy = fcntl(ipc_fd, F_DUPFD_CLOEXEC, 10);
	metrics_copy = pool->metrics_fd >= 0 ? fcntl(pool->metrics_fd, F_DUPFD_CLOEXEC, 10) : -1;
	if (listen_copy < 0 || ipc_copy < 0 || dup2(listen_copy, 3) < 0 ||
	    dup2(ipc_copy, 4) < 0 || (metrics_copy >= 0 && dup2(metrics_copy, 5) < 0))
		_exit(1);
	close_range(metrics_copy >= 0 ? 6 : 5, ~0U, 0);
	snprintf(slot_text, sizeof slot_text, "%d", slot);
	execv(pool->self_exe, argv);
	_exit(127);
}

static void worker_spawn(struct pool *pool, int slot)
{
	struct worker *w = &pool->workers[slot];
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
		child_exec(pool, slot, sv[1], parent);
	close(sv[1]);
	evutil_make_socket_nonblocking(sv[0]);
	w->pid = pid;
	w->ready = 0;
	w->retiring = 0;
	w->broken = 0;
	w->started = clock_monotonic();
	{
		/* Written at the end of each loop turn: one write per worker
		 * per turn instead of one per message. */
		const struct peer_options o = {
			.max_message = ipc_max_message(pool->cfg->max_message_bytes,
						       pool->cfg->backend_max_frame_bytes),
			.hello = IPC_HELLO_WORKER,
			.flush_priority = -1,
		};
		static const struct peer_callbacks cb = {
			.message = worker_message, .ended = worker_ended,
		};

		w->peer = peer_new(pool->base, sv[0], &o, &cb, w);
	}
	worker_send_hello(pool, w);
	log_info("worker %d started (pid %d)", slot, (int)pid);
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct pool *pool = w->pool;

	(void)fd;
	(void)what;
	if (!pool->stopping && w->pid == 0 && w->slot <= config_worker_count(pool->cfg))
		worker_spawn(pool, w->slot);
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

/* Returns 1 when w cannot work with this configuration and no worker runs
 * any more. */
static int worker_exited(struct pool *pool, struct worker *w, int status)
{
	char how[96];
	double uptime = clock_monotonic() - w->started, delay;
	int was_retiring = w->retiring;

	describe_status(status, how, sizeof how);
	worker_drop_ipc(w);
	w->pid = 0;
	w->ready = 0;
	w->retiring = 0;
	if (pool->stopping || was_retiring) {
		log_info("worker %d %s", w->slot, how);
		return 0;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_CONFIG) {
		log_error("worker %d %s: it cannot work with this configuration; "
			  "not restarting it", w->slot, how);
		return pool_running(pool) == 0;
	}
	pool->restarts.crash++;
	w->has_stats = 0;
	if (uptime >= RESPAWN_STABLE_SECONDS)
		w->crashes = 0;
	w->crashes++;
	delay = RESPAWN_FIRST_DELAY;
	for (int i = 1; i < w->crashes && delay < pool->cfg->respawn_max_delay; i++)
		delay *= 2;
	if (delay > pool->cfg->respawn_max_delay)
		delay = pool->cfg->respawn_max_delay;
	log_warn("worker %d (uptime %.1f s) %s; restarting it in %.2f s", w->slot,
		 uptime, how, delay);
	if (w->respawn_timer == NULL)
		w->respawn_timer = evtimer_new(pool->base, respawn_cb, w);
	struct timeval tv = seconds_tv(delay);
	evtimer_add(w->respawn_timer, &tv);
	return 0;
}

int pool_reaped(struct pool *pool, pid_t pid, int status)
{
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++)
		if (pool->workers[i].pid == pid)
			return worker_exited(pool, &pool->workers[i], status);
	return 0;
}

void pool_resize(struct pool *pool)
{
	int want = config_worker_count(pool->cfg);

	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &pool->workers[i];

		if (i <= want && w->pid == 0 &&
		    (w->respawn_timer == NULL || !evtimer_pending(w->respawn_timer, NULL)))
			worker_spawn(pool, i);
		if (i > want) {
			if (w->respawn_timer != NULL)
				evtimer_del(w->respawn_timer);
			if (w->pid != 0 && !w->retiring) {
				log_info("worker %d: draining (workers = %d)", i, want);
				worker_retire(w);
			}
		}
	}
}

void pool_drain(struct pool *pool)
{
	pool->stopping = 1;
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &pool->workers[i];
		if (w->respawn_timer != NULL)
			evtimer_del(w->respawn_timer);
		if (w->pid != 0)
			worker_retire(w);
	}
}

void pool_kill(struct pool *pool)
{
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		if (pool->workers[i].pid != 0) {
			log_warn("worker %d did not drain within %.1f s; killing it",
				 i, pool->cfg->shutdown_timeout);
			kill(pool->workers[i].pid, SIGKILL);
		}
	}
}

void pool_stop(struct pool *pool)
{
	for (int i = 1; i <= CONFIG_MAX_WORKERS; i++) {
		struct worker *w = &pool->workers[i];
		if (w->pid != 0) {
			kill(w->pid, SIGKILL);
			waitpid(w->pid, NULL, 0);
		}
		worker_drop_ipc(w);
	}
}

int pool_worker_state(const struct pool *pool, int slot,
		      const struct worker_stats **stats)
{
	const struct worker *w = &pool->workers[slot];

	*stats = w->has_stats ? &w->stats : NULL;
	return w->pid != 0;
}

const struct pool_restarts *pool_restarts(const struct pool *pool)
{
	return &pool->restarts;
}
