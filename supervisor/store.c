#include "store.h"

#include "../core/log.h"
#include "../core/map.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern const char store_schema_sql[];

struct staged_packet {
	char *dest;
	double created;
	char *data;
	size_t len;
};

struct store {
	sqlite3 *db;
	sqlite3_stmt *set_meta, *upsert_agent, *delete_agent, *insert_packet,
		*delete_packet;
	/* staged changes */
	struct map *agents;  /* agent id -> (void *)1 */
	struct map *added;   /* seq -> struct staged_packet */
	struct map *removed; /* seq -> (void *)1 */
	struct map *meta;    /* key -> value (malloc'ed) */
	int failing;         /* the last commit failed */
	uint64_t failures;
	time_t last_failure_log;
};

static int exec(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static int user_version(sqlite3 *db, int *version, char *err, size_t errlen)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "%s", sqlite3_errmsg(db));
		return -1;
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*version = sqlite3_column_int(st, 0);
	else
		snprintf(err, errlen, "%s", sqlite3_errmsg(db));
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : -1;
}

static int check_version(sqlite3 *db, char *err, size_t errlen)
{
	int version = 0;

	if (user_version(db, &version, err, errlen) < 0)
		return -1;
	if (version > STORE_SCHEMA_VERSION) {
		snprintf(err, errlen,
			 "schema version %d is newer than this binary's %d; "
			 "use a newer mephisto-router or another state_path",
			 version, STORE_SCHEMA_VERSION);
		return -1;
	}
	return 0;
}

static int apply_schema(sqlite3 *db, char *err, size_t errlen)
{
	if (exec(db, "BEGIN IMMEDIATE", err, errlen) < 0)
		return -1;
	if (exec(db, store_schema_sql, err, errlen) < 0) {
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
		return -1;
	}
	return exec(db, "COMMIT", err, errlen);
}

static int prepare(sqlite3 *db, sqlite3_stmt **st, const char *sql)
{
	return sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK ? 0 : -1;
}

struct store *store_open(const char *path, char *err, size_t errlen)
{
	struct store *s = calloc(1, sizeof *s);
	char why[512];
	char now[32];

	if (s == NULL)
		fatal("out of memory");
	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
			    NULL) != SQLITE_OK) {
		snprintf(why, sizeof why, "%s",
			 s->db ? sqlite3_errmsg(s->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(s->db, 5000);
	/* The version first: a database this binary refuses is left as it is.
	 * journal_mode answers with a row; exec ignores it, a failure is an
	 * error. */
	if (check_version(s->db, why, sizeof why) < 0 ||
	    exec(s->db, "PRAGMA journal_mode=WAL", why, sizeof why) < 0 ||
	    exec(s->db, "PRAGMA synchronous=NORMAL", why, sizeof why) < 0 ||
	    apply_schema(s->db, why, sizeof why) < 0)
		goto fail;
	if (prepare(s->db, &s->set_meta,
		    "INSERT INTO router_meta (key, value) VALUES (?1, ?2) "
		    "ON CONFLICT (key) DO UPDATE SET value = excluded.value") < 0 ||
	    prepare(s->db, &s->upsert_agent,
		    "INSERT INTO agents (agent_id, status, attached_worker, attached_conn, "
		    "is_alive, last_ping, disconnect_time, created_at, updated_at) "
		    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) "
		    "ON CONFLICT (agent_id) DO UPDATE SET status = excluded.status, "
		    "attached_worker = excluded.attached_worker, "
		    "attached_conn = excluded.attached_conn, is_alive = excluded.is_alive, "
		    "last_ping = excluded.last_ping, "
		    "disconnect_time = excluded.disconnect_time, "
		    "updated_at = excluded.updated_at") < 0 ||
	    prepare(s->db, &s->delete_agent, "DELETE FROM agents WHERE agent_id = ?1") < 0 ||
	    prepare(s->db, &s->insert_packet,
		    "INSERT OR REPLACE INTO queued_packets (seq, destination, packet, "
		    "created_at) VALUES (?1, ?2, ?3, ?4)") < 0 ||
	    prepare(s->db, &s->delete_packet, "DELETE FROM queued_packets WHERE seq = ?1") < 0) {
		snprintf(why, sizeof why, "%s", sqlite3_errmsg(s->db));
		goto fail;
	}
	s->agents = map_new();
	s->added = map_new();
	s->removed = map_new();
	s->meta = map_new();
	snprintf(now, sizeof now, "%lld", (long long)time(NULL));
	if (store_set_meta(s, "schema_version", "1") < 0 ||
	    store_set_meta(s, "started_at", now) < 0 ||
	    store_set_meta(s, "backend_attached", "0") < 0) {
		snprintf(why, sizeof why, "%s", sqlite3_errmsg(s->db));
		goto fail;
	}
	return s;
fail:
	snprintf(err, errlen, "cannot use state database %s: %s", path, why);
	store_close(s);
	return NULL;
}

static void staged_clear(struct store *s)
{
	size_t pos = 0;
	void *value;

	if (s->added == NULL)
		return;
	while (map_next(s->added, &pos, NULL, NULL, &value)) {
		struct staged_packet *p = value;
		free(p->dest);
		free(p->data);
		free(p);
	}
	pos = 0;
	while (map_next(s->meta, &pos, NULL, NULL, &value))
		free(value);
	map_free(s->agents);
	map_free(s->added);
	map_free(s->removed);
	map_free(s->meta);
	s->agents = map_new();
	s->added = map_new();
	s->removed = map_new();
	s->meta = map_new();
}

void store_close(struct store *s)
{
	if (s == NULL)
		return;
	staged_clear(s);
	map_free(s->agents);
	map_free(s->added);
	map_free(s->removed);
	map_free(s->meta);
	sqlite3_finalize(s->set_meta);
	sqlite3_finalize(s->upsert_agent);
	sqlite3_finalize(s->delete_agent);
	sqlite3_finalize(s->insert_packet);
	sqlite3_finalize(s->delete_packet);
	sqlite3_close(s->db);
	free(s);
}

/* ---- staging ---- */

static char *copy_bytes(const char *data, size_t len)
{
	char *c = malloc(len + 1);

	if (c == NULL)
		fatal("out of memory");
	memcpy(c, data, len);
	c[len] = '\0';
	return c;
}

void store_stage(struct store *s, const struct route_change *c, size_t n)
{
	for (size_t i = 0; i < n; i++, c++) {
		struct staged_packet *p;
		void *old;

		switch (c->kind) {
		case ROUTE_CHANGE_AGENT:
			/* with its NUL: the key is used as a C string */
			map_put(s->agents, c->key, strlen(c->key) + 1, s);
			break;
		case ROUTE_CHANGE_QUEUED:
			p = malloc(sizeof *p);
			if (p == NULL)
				fatal("out of memory");
			p->dest = copy_bytes(c->key, strlen(c->key));
			p->created = c->created;
			p->data = copy_bytes(c->data, c->len);
			p->len = c->len;
			old = map_put(s->added, &c->seq, sizeof c->seq, p);
			if (old != NULL) {
				free(((struct staged_packet *)old)->dest);
				free(((struct staged_packet *)old)->data);
				free(old);
			}
			break;
		case ROUTE_CHANGE_UNQUEUED:
			/* Queued and gone before it was written: never write it. */
			p = map_del(s->added, &c->seq, sizeof c->seq);
			if (p != NULL) {
				free(p->dest);
				free(p->data);
				free(p);
			}
			map_put(s->removed, &c->seq, sizeof c->seq, s);
			break;
		case ROUTE_CHANGE_META:
			old = map_put(s->meta, c->key, strlen(c->key),
				      copy_bytes(c->data, c->len));
			free(old);
			break;
		}
	}
}

int store_has_staged(const struct store *s)
{
	return map_count(s->agents) || map_count(s->added) || map_count(s->removed) ||
	       map_count(s->meta);
}

static int step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

static int write_agent(struct store *s, const struct route *r, const char *id,
		       double now)
{
	struct route_agent_info info;
	sqlite3_stmt *st;

	if (route_agent_info(r, id, &info) < 0) {
		st = s->delete_agent;
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		return step_done(st);
	}
	st = s->upsert_agent;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, info.status, -1, SQLITE_STATIC);
	if (info.attached) {
		sqlite3_bind_int64(st, 3, info.worker);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)info.conn);
	}
	sqlite3_bind_int(st, 5, info.attached);
	sqlite3_bind_double(st, 6, info.last_ping);
	sqlite3_bind_double(st, 7, info.disconnect_time);
	sqlite3_bind_double(st, 8, now);
	return step_done(st);
}

static int write_staged(struct store *s, const struct route *r, double now)
{
	size_t pos = 0, len;
	const void *key;
	void *value;

	while (map_next(s->removed, &pos, &key, NULL, &value)) {
		uint64_t seq;
		memcpy(&seq, key, sizeof seq);
		sqlite3_bind_int64(s->delete_packet, 1, (sqlite3_int64)seq);
		if (step_done(s->delete_packet) < 0)
			return -1;
	}
	pos = 0;
	while (map_next(s->added, &pos, &key, NULL, &value)) {
		const struct staged_packet *p = value;
		uint64_t seq;
		memcpy(&seq, key, sizeof seq);
		sqlite3_bind_int64(s->insert_packet, 1, (sqlite3_int64)seq);
		sqlite3_bind_text(s->insert_packet, 2, p->dest, -1, SQLITE_STATIC);
		sqlite3_bind_text(s->insert_packet, 3, p->data, (int)p->len, SQLITE_STATIC);
		sqlite3_bind_double(s->insert_packet, 4, p->created);
		if (step_done(s->insert_packet) < 0)
			return -1;
	}
	pos = 0;
	while (map_next(s->agents, &pos, &key, NULL, NULL))
		if (write_agent(s, r, key, now) < 0)
			return -1;
	pos = 0;
	while (map_next(s->meta, &pos, &key, &len, &value)) {
		sqlite3_bind_text(s->set_meta, 1, key, (int)len, SQLITE_STATIC);
		sqlite3_bind_text(s->set_meta, 2, value, -1, SQLITE_STATIC);
		if (step_done(s->set_meta) < 0)
			return -1;
	}
	return 0;
}

int store_commit(struct store *s, const struct route *r, double now)
{
	char *msg = NULL;

	if (!store_has_staged(s))
		return 0;
	if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK ||
	    write_staged(s, r, now) < 0 ||
	    sqlite3_exec(s->db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
		s->failures++;
		if (!s->failing || time(NULL) - s->last_failure_log >= 60) {
			log_error("state database: cannot write (%s); routing goes on in "
				  "memory and the write is retried (%llu failures so far)",
				  msg ? msg : sqlite3_errmsg(s->db),
				  (unsigned long long)s->failures);
			s->last_failure_log = time(NULL);
		}
		sqlite3_free(msg);
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		s->failing = 1;
		return -1;
	}
	if (s->failing)
		log_info("state database: writing again after %llu failures",
			 (unsigned long long)s->failures);
	s->failing = 0;
	staged_clear(s);
	return 0;
}

/* ---- recovery ---- */

int store_load(struct store *s, struct route *r, double now, size_t *agents,
	       size_t *packets, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc;

	*agents = *packets = 0;
	if (prepare(s->db, &st,
		    "SELECT agent_id, status, attached_worker IS NOT NULL, last_ping, "
		    "disconnect_time FROM agents") < 0)
		goto fail;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		route_restore_agent(r, (const char *)sqlite3_column_text(st, 0),
				    (const char *)sqlite3_column_text(st, 1),
				    sqlite3_column_double(st, 3),
				    sqlite3_column_double(st, 4),
				    sqlite3_column_int(st, 2), now);
		(*agents)++;
	}
	if (rc != SQLITE_DONE)
		goto fail;
	sqlite3_finalize(st);
	if (prepare(s->db, &st,
		    "SELECT seq, destination, packet, created_at FROM queued_packets "
		    "ORDER BY seq") < 0)
		goto fail;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		route_restore_packet(r, (const char *)sqlite3_column_text(st, 1),
				     (uint64_t)sqlite3_column_int64(st, 0),
				     sqlite3_column_double(st, 3),
				     (const char *)sqlite3_column_text(st, 2),
				     (size_t)sqlite3_column_bytes(st, 2), now);
		(*packets)++;
	}
	if (rc != SQLITE_DONE)
		goto fail;
	sqlite3_finalize(st);
	return 0;
fail:
	snprintf(err, errlen, "cannot load the state database: %s", sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	return -1;
}

int store_set_meta(struct store *s, const char *key, const char *value)
{
	int rc;

	sqlite3_bind_text(s->set_meta, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(s->set_meta, 2, value, -1, SQLITE_STATIC);
	rc = sqlite3_step(s->set_meta);
	sqlite3_reset(s->set_meta);
	sqlite3_clear_bindings(s->set_meta);
	if (rc != SQLITE_DONE) {
		log_error("state database: cannot set %s: %s", key,
			  sqlite3_errmsg(s->db));
		return -1;
	}
	return 0;
}
