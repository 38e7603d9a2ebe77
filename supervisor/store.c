#include "store.h"

#include "../core/log.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

extern const char store_schema_sql[];

struct store {
	sqlite3 *db;
	sqlite3_stmt *set_meta;
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

static int apply_schema(sqlite3 *db, char *err, size_t errlen)
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
	if (exec(db, "BEGIN IMMEDIATE", err, errlen) < 0)
		return -1;
	if (exec(db, store_schema_sql, err, errlen) < 0) {
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
		return -1;
	}
	return exec(db, "COMMIT", err, errlen);
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
	/* journal_mode answers with a row; exec ignores it, a failure is an error. */
	if (exec(s->db, "PRAGMA journal_mode=WAL", why, sizeof why) < 0 ||
	    exec(s->db, "PRAGMA synchronous=NORMAL", why, sizeof why) < 0 ||
	    apply_schema(s->db, why, sizeof why) < 0)
		goto fail;
	if (sqlite3_prepare_v2(s->db,
			       "INSERT INTO router_meta (key, value) VALUES (?1, ?2) "
			       "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
			       -1, &s->set_meta, NULL) != SQLITE_OK) {
		snprintf(why, sizeof why, "%s", sqlite3_errmsg(s->db));
		goto fail;
	}
	snprintf(now, sizeof now, "%lld", (long long)time(NULL));
	if (store_set_meta(s, "schema_version", "1") < 0 ||
	    store_set_meta(s, "started_at", now) < 0) {
		snprintf(why, sizeof why, "%s", sqlite3_errmsg(s->db));
		goto fail;
	}
	return s;
fail:
	snprintf(err, errlen, "cannot use state database %s: %s", path, why);
	store_close(s);
	return NULL;
}

void store_close(struct store *s)
{
	if (s == NULL)
		return;
	sqlite3_finalize(s->set_meta);
	sqlite3_close(s->db);
	free(s);
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
