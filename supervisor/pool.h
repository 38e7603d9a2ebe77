/* The supervisor's worker pool: the worker processes in their slots
 * (1..CONFIG_MAX_WORKERS), each with the supervisor's end of its IPC (a
 * struct peer, core/peer.h, owned here). The pool starts, greets, drains,
 * restarts and retires them; what they say is the owner's (pool_callbacks:
 * the routing hub, wired by supervisor.c). */
#ifndef MR_POOL_H
#define MR_POOL_H

#include "../core/config.h"
#include "../core/ipc.h"

#include <event2/event.h>
#include <stdint.h>
#include <sys/types.h>

struct pool;

struct pool_callbacks {
	/* A message from the worker in slot, its hello and STATS excepted
	 * (those are the pool's). The message is valid during this call only
	 * (core/peer.h): what is made of it is sent before it returns. Also
	 * called for a dying worker's last words, while sends to it are
	 * dropped (pool_reachable() says 0). */
	void (*message)(int slot, const struct ipc_message *m, void *arg);
	/* The IPC of the worker in slot is gone, its last words read to the
	 * end: its connections and requests are gone with it. */
	void (*gone)(int slot, void *arg);
	/* Every configured worker has said hello (called after each hello
	 * once that holds). */
	void (*ready)(void *arg);
};

/* Workers restarted, by cause (for /metrics). */
struct pool_restarts {
	uint64_t crash;      /* it died (signal, exit status) */
	uint64_t stalled;    /* ipc_stall_timeout, or over 4 x ipc_buffer_bytes */
	uint64_t broken_ipc; /* a malformed message */
};

/* cfg is the running configuration (read at each use: a reload changes it
 * in place). Workers are executed from self_exe and get listen_fd, and
 * metrics_fd unless -1. Nothing starts before pool_resize(). */
struct pool *pool_new(struct event_base *base, const struct config *cfg,
		      const char *self_exe, int listen_fd, int metrics_fd,
		      const struct pool_callbacks *cb, void *arg);
void pool_free(struct pool *pool);

/* Start missing workers up to the configured count; drain those above it. */
void pool_resize(struct pool *pool);
/* A reload: every worker not retiring gets the configuration (IPC_CONFIG),
 * and the bound of one message from each rises with it. */
void pool_send_config(struct pool *pool);
/* Process pid ended (SIGCHLD) with status: when it was a worker, drop its
 * IPC and restart it with backoff, unless it was retiring, the pool is
 * stopping or it cannot work with this configuration (EXIT_CONFIG).
 * Returns 1 when it could not, and no worker runs any more. */
int pool_reaped(struct pool *pool, pid_t pid, int status);
/* Restart a worker that has not read its IPC for ipc_stall_timeout, or has
 * more than four times ipc_buffer_bytes unread (the tick). */
void pool_check_stalls(struct pool *pool);

/* SIGTERM/SIGINT: no more restarts; every running worker drains. */
void pool_drain(struct pool *pool);
/* SIGKILL every worker still running (one that did not drain in time). */
void pool_kill(struct pool *pool);
/* At exit: kill and reap those still running, drop every IPC (gone()). */
void pool_stop(struct pool *pool);

/* Workers whose process runs. */
int pool_running(const struct pool *pool);
/* Whether slot's IPC takes messages: not gone, not being dropped. */
int pool_reachable(const struct pool *pool, int slot);
/* One message to slot, written at the end of the loop turn (its peer's
 * flush); nothing when it is not reachable. */
void pool_send(struct pool *pool, int slot, const struct ipc_message *m);
/* Slot sent what it must not (a malformed message, one of the wrong
 * direction): a bug, logged; its IPC is dropped and it is restarted. */
void pool_broken(struct pool *pool, int slot, const char *why);

/* For /metrics: whether slot's process runs, and (*stats) the last STATS
 * from the slot, or NULL (none yet, or its worker crashed since). */
int pool_worker_state(const struct pool *pool, int slot,
		      const struct worker_stats **stats);
const struct pool_restarts *pool_restarts(const struct pool *pool);

#endif
