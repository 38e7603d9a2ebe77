/* The SQLite agent-state database, owned by the supervisor alone.
 *
 * The routing state machine reports what changed (route_changes()); the
 * store stages those changes in memory, coalescing them (an agent changed
 * ten times is written once; a packet queued and delivered before the
 * commit is never written), and writes them in one transaction per loop
 * turn. When a commit fails (disk full, I/O error) the staged changes are
 * kept and retried; routing goes on in memory meanwhile. */
#ifndef MR_STORE_H
#define MR_STORE_H

#include "../core/route.h"

#include <stddef.h>

#define STORE_SCHEMA_VERSION 1

struct store;

/* Open (creating if needed) the database at path, in WAL mode, and apply
 * schema.sql. Returns NULL with the reason in err when the file cannot be
 * opened or written, is not a database, or has a newer schema. */
struct store *store_open(const char *path, char *err, size_t errlen);
void store_close(struct store *s);

/* Load the agents and queued packets into r (recovery). Returns 0, or -1
 * with the reason in err. */
int store_load(struct store *s, struct route *r, double now, size_t *agents,
	       size_t *packets, char *err, size_t errlen);

/* Stage route changes (copied). */
void store_stage(struct store *s, const struct route_change *c, size_t n);
/* Write everything staged in one transaction, reading agents' current
 * state from r. Returns 0 (also when there was nothing to write) or -1
 * (logged; the changes stay staged for the next try). */
int store_commit(struct store *s, const struct route *r, double now);
int store_has_staged(const struct store *s);

/* Set one router_meta row now. Returns 0 or -1 (logged). */
int store_set_meta(struct store *s, const char *key, const char *value);

#endif
