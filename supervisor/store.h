/* The SQLite agent-state database, owned by the supervisor alone.
 *
 * The routing state machine reports what changed (route_changes()); the
 * store stages those changes in memory, coalescing them (an agent changed
 * ten times is written once; a packet queued and delivered before the
 * commit is never written), and writes them in one transaction at a time,
 * on a thread of its own (store_start()), so that a slow or stalled disk
 * never holds up routing: while one batch is written, the next is staged.
 * When a commit fails (disk full, read-only, I/O error) its changes are
 * staged again and retried; routing goes on in memory meanwhile. A SIGBUS
 * in SQLite's memory-mapped WAL index (the -shm file truncated, a failing
 * disk) ends the writer thread, not the process: the store is then given
 * up (store_failed()) until a restart. */
#ifndef MR_STORE_H
#define MR_STORE_H

#include "../core/route.h"

#include <stddef.h>
#include <stdint.h>

#define STORE_SCHEMA_VERSION 2

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

/* An upload as recorded. */
struct upload_record {
	const char *stored, *original, *field, *agent; /* agent may be NULL */
	uint64_t size, dev, ino;
	double created;
};

/* Call cb for every recorded upload (at start, before store_start()). */
int store_load_uploads(struct store *s,
		       void (*cb)(void *arg, const struct upload_record *u), void *arg,
		       char *err, size_t errlen);
/* Stage an upload's row, or its deletion. */
void store_stage_upload(struct store *s, const struct upload_record *u);
void store_stage_upload_gone(struct store *s, const char *stored);

/* Start the writer thread; from then on only it uses the database. */
int store_start(struct store *s, char *err, size_t errlen);

/* Stage route changes (copied). */
void store_stage(struct store *s, const struct route_change *c, size_t n);
int store_has_staged(const struct store *s);

/* Hand everything staged to the writer as one transaction, reading agents'
 * current state from r now. Returns 1, or 0 when there is nothing staged
 * or the writer still has a batch. Its end is signalled on
 * store_notify_fd() (readable), after which store_commit_end() returns 1
 * (committed), -1 (failed: logged, staged again; or the store was given
 * up), or 0 (nothing finished yet). Without store_start() the batch is
 * written at once, and store_commit_end() gives its result. */
int store_commit_begin(struct store *s, const struct route *r, double now);
int store_notify_fd(const struct store *s);
int store_commit_end(struct store *s);
int store_failed(const struct store *s);

struct store_stats {
	uint64_t commits, failures;
	double commit_seconds;      /* all commits, added up */
	double last_commit_seconds;
};
const struct store_stats *store_get_stats(const struct store *s);

/* Both, waiting for the writer: everything staged is written (or failed)
 * when it returns 0 (or -1). */
int store_commit(struct store *s, const struct route *r, double now);

/* Stage one router_meta row (written with the next commit). */
void store_stage_meta(struct store *s, const char *key, const char *value);

/* Set one router_meta row now (before store_start()). Returns 0 or -1
 * (logged). */
int store_set_meta(struct store *s, const char *key, const char *value);

/* Whether the file at path is a state database this binary can use: an
 * SQLite database whose schema version is not newer than its own (opened
 * read-only; --check-config, before a start or a reload). */
int store_check_file(const char *path, char *err, size_t errlen);

#endif
