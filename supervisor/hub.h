/* The supervisor's routing hub: the workers' messages become calls of the
 * routing state machine (core/route.c), and the actions it returns become
 * messages to the workers (through the pool); the state changes it reports
 * go to the store's writer once per loop turn. It also answers the workers'
 * own questions (/metrics text, whether an upload is recorded) and keeps
 * the record of uploads. */
#ifndef MR_HUB_H
#define MR_HUB_H

#include "../core/config.h"
#include "../core/ipc.h"
#include "../core/route.h"
#include "pool.h"
#include "store.h"

#include <event2/event.h>
#include <stddef.h>

struct hub;

/* route, store and pool are the caller's and outlive the hub; cfg is the
 * running configuration (changed in place by a reload); started is the
 * epoch time the router started (for /metrics). */
struct hub *hub_new(struct event_base *base, const struct config *cfg,
		    struct route *route, struct store *store, struct pool *pool,
		    double started);
void hub_free(struct hub *h);

/* Load the record of uploads from the store (after store_load(), before
 * store_start()). Returns 0, or -1 with the reason in err. */
int hub_load_uploads(struct hub *h, char *err, size_t errlen);
/* The store's writer runs (store_start()): hear the end of each batch, and
 * send the actions the loaded state already has. */
void hub_start(struct hub *h);

/* A message from the worker in slot (pool_callbacks.message). Its pointers
 * are valid during this call only (core/peer.h): the actions route.c made
 * of it are sent before it returns. */
void hub_worker_message(struct hub *h, int slot, const struct ipc_message *m);
/* The worker in slot is gone, its last words handled (pool_callbacks.gone):
 * its connections and waiting requests are gone with it. */
void hub_worker_gone(struct hub *h, int slot);

/* Carry out what the state machine decided: its state changes staged for
 * the next commit, its actions sent to the workers that are reachable. */
void hub_dispatch(struct hub *h);
/* The tick: the state machine's timers (liveness, deadlines), then
 * hub_dispatch(). */
void hub_tick(struct hub *h);
/* Apply upload_retention (the tick; at most once per the shorter of a
 * minute and upload_retention). */
void hub_expire_uploads(struct hub *h);

#endif
