/* /metrics: the supervisor's figures and its workers' (sent every second,
 * IPC STATS) in the Prometheus text format. A worker serves the text on
 * metrics_listen (a socket the supervisor binds and passes to every
 * worker), so the supervisor does no client I/O. */
#ifndef MR_METRICS_H
#define MR_METRICS_H

#include "../core/ipc.h"
#include "../core/route.h"
#include "store.h"

#include <stddef.h>
#include <stdint.h>

struct metrics_worker {
	int slot;
	int running;
	const struct worker_stats *stats; /* the last STATS, or NULL */
};

struct metrics_input {
	const struct route *route;
	const struct store *store;
	const struct metrics_worker *workers;
	size_t nworkers;
	int workers_configured;
	uint64_t restarts_crash;       /* a worker died (signal, exit status) */
	uint64_t restarts_stalled;     /* ipc_stall_timeout or the IPC bound */
	uint64_t restarts_broken_ipc;  /* a malformed message */
	size_t uploads;
	double started;                /* epoch seconds */
	double now;
};

/* The text (malloc'ed), *len its length. */
char *metrics_render(const struct metrics_input *in, size_t *len);

#endif
