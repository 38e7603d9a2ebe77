#include "store.h"

#include "../core/clock.h"
#include "../core/log.h"
#include "../core/map.h"
#include "../core/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern const char store_schema_sql[];

#define STR(x) #x
#define XSTR(x) STR(x)
#define STORE_SCHEMA_VERSION_TEXT XSTR(STORE_SCHEMA_VERSION)

struct staged_upload {
	char *stored, *original, *field, *agent;
	uint64_t size, dev, ino;
	double created;
};

struct staged_packet {
	char *dest;
	double created;
	char *data;
	size_t len;
};

/* An agent's row as it was when its batch was made (the router's state
 * moves on meanwhile). */
struct agent_row {
	char *id;
	int exists; /* 0: delete the row */
	char *status;
	int attached;
	uint32_t worker;
	uint64_t conn;
	double last_ping, disconnect_time;
};

/* The changes of one transaction. */
struct batch {
	struct agent_row *rows;
	size_t nrows;
	struct map *added;   /* seq -> struct staged_packet */
	struct map *removed; /* seq -> (void *)1 */
	struct map *meta;    /* key -> value (malloc'ed) */
	struct map *uploads; /* stored name -> struct staged_upload, or (void *)1: gone */
	double now;
	int failed;
	double seconds; /* the transaction took */
	char error[256];
};

struct store {
	sqlite3 *db;
	sqlite3_stmt *set_meta, *upsert_agent, *delete_agent, *insert_packet,
		*delete_packet, *insert_upload, *delete_upload;
	/* staged changes, for the next batch */
	struct map *agents;  /* agent id -> (void *)1 */
	struct map *added;   /* seq -> struct staged_packet */
	struct map *removed; /* seq -> (void *)1 */
	struct map *meta;    /* key -> value (malloc'ed) */
	struct map *uploads; /* stored name -> struct staged_upload, or GONE */
	int failing;         /* the last commit failed */
	uint64_t failures;
	struct store_stats stats;
	time_t last_failure_log;
	/* the writer thread: it alone uses db once started */
	pthread_t thread;
	int started;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct batch *handed; /* handed to the thread, not taken yet */
	struct batch *done;   /* handed back */
	struct batch *busy;   /* in the thread's hands (taken, being written) */
	int stopping;
	int dead;             /* the thread died of SIGBUS: the store is not used */
	int gave_up;          /* the loop saw it: nothing is staged any more */
	int notify[2];        /* the thread writes a byte when a batch is done */
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

int store_check_file(const char *path, char *err, size_t errlen)
{
	sqlite3 *db = NULL;
	char why[256] = "";
	int rc = -1;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
		snprintf(why, sizeof why, "%s", db ? sqlite3_errmsg(db) : "out of memory");
	} else {
		sqlite3_busy_timeout(db, 2000);
		/* reading the schema is what tells a database from another file */
		if (exec(db, "SELECT count(*) FROM sqlite_master", why, sizeof why) == 0 &&
		    check_version(db, why, sizeof why) == 0)
			rc = 0;
	}
	if (rc < 0)
		snprintf(err, errlen, "state_path %s: %s", path, why);
	sqlite3_close(db);
	return rc;
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

/* The database holds every submission: readable by its owner only. A new
 * file is created 0600 (SQLite gives its -wal and -shm files the same
 * mode); once it proved usable, an existing one and those files are made
 * 0600 (owner_only_fix). */
static int is_file_path(const char *path)
{
	return strcmp(path, ":memory:") != 0 && strncmp(path, "file:", 5) != 0;
}

static int owner_only_create(const char *path, char *why, size_t whylen)
{
	int fd;

	if (!is_file_path(path) || access(path, F_OK) == 0)
		return 0;
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(why, whylen, "%s", strerror(errno));
		return -1;
	}
	close(fd);
	return 0;
}

static void owner_only_fix(const char *path)
{
	static const char *const suffix[] = { "", "-wal", "-shm" };
	char name[PATH_MAX + 8];
	struct stat st;

	if (!is_file_path(path))
		return;
	for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
		snprintf(name, sizeof name, "%s%s", path, suffix[i]);
		if (stat(name, &st) == 0 && (st.st_mode & 077) != 0 &&
		    chmod(name, st.st_mode & 0700) == 0)
			log_warn("state database: %s was readable by others; made 0600", name);
	}
}

static void staged_new(struct store *s);

struct store *store_open(const char *path, char *err, size_t errlen)
{
	struct store *s = xcalloc(1, sizeof *s);
	char why[512];
	char now[32];

	if (owner_only_create(path, why, sizeof why) < 0)
		goto fail;
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
	    prepare(s->db, &s->delete_packet, "DELETE FROM queued_packets WHERE seq = ?1") < 0 ||
	    prepare(s->db, &s->insert_upload,
		    "INSERT OR REPLACE INTO uploads (stored_name, original_name, field, "
		    "agent_id, size, device, inode, created_at) "
		    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)") < 0 ||
	    prepare(s->db, &s->delete_upload, "DELETE FROM uploads WHERE stored_name = ?1") < 0) {
		snprintf(why, sizeof why, "%s", sqlite3_errmsg(s->db));
		goto fail;
	}
	owner_only_fix(path);
	staged_new(s);
	snprintf(now, sizeof now, "%lld", (long long)clock_epoch()); /* whole seconds */
	if (store_set_meta(s, "schema_version", STORE_SCHEMA_VERSION_TEXT) < 0 ||
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

/* The mark of a staged upload row to delete. */
static char gone_marker;
#define UPLOAD_GONE ((void *)&gone_marker)

static void uploads_free_one(struct staged_upload *u)
{
	free(u->stored);
	free(u->original);
	free(u->field);
	free(u->agent);
	free(u);
}

static void uploads_free(struct map *m)
{
	size_t pos = 0;
	void *value;

	while (map_next(m, &pos, NULL, NULL, &value))
		if (value != UPLOAD_GONE)
			uploads_free_one(value);
	map_free(m);
}

static void packets_free(struct map *m);
static void meta_free(struct map *m);

static void staged_free(struct store *s)
{
	if (s->added == NULL)
		return;
	packets_free(s->added);
	meta_free(s->meta);
	uploads_free(s->uploads);
	map_free(s->agents);
	map_free(s->removed);
	s->agents = s->added = s->removed = s->meta = s->uploads = NULL;
}

static void staged_new(struct store *s)
{
	s->agents = map_new();
	s->added = map_new();
	s->removed = map_new();
	s->meta = map_new();
	s->uploads = map_new();
}

static void staged_clear(struct store *s)
{
	if (s->added == NULL)
		return;
	staged_free(s);
	staged_new(s);
}

static void batch_free(struct batch *b);

static void writer_stop(struct store *s)
{
	if (!s->started)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = 1;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	batch_free(s->done);
	s->done = NULL;
	close(s->notify[0]);
	close(s->notify[1]);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->wake);
	s->started = 0;
}

void store_close(struct store *s)
{
	int dead;

	if (s == NULL)
		return;
	dead = s->dead;
	writer_stop(s);
	staged_free(s);
	if (dead) { /* the connection may be stuck mid-call: leave it */
		free(s);
		return;
	}
	sqlite3_finalize(s->set_meta);
	sqlite3_finalize(s->insert_upload);
	sqlite3_finalize(s->delete_upload);
	sqlite3_finalize(s->upsert_agent);
	sqlite3_finalize(s->delete_agent);
	sqlite3_finalize(s->insert_packet);
	sqlite3_finalize(s->delete_packet);
	sqlite3_close(s->db);
	free(s);
}

/* ---- staging ---- */

void store_stage(struct store *s, const struct route_change *c, size_t n)
{
	if (s->gave_up)
		return;
	for (size_t i = 0; i < n; i++, c++) {
		struct staged_packet *p;
		void *old;

		switch (c->kind) {
		case ROUTE_CHANGE_AGENT:
			/* with its NUL: the key is used as a C string */
			map_put(s->agents, c->key, strlen(c->key) + 1, s);
			break;
		case ROUTE_CHANGE_QUEUED:
			p = xmalloc(sizeof *p);
			p->dest = xstrdup(c->key);
			p->created = c->created;
			p->data = xmemdup0(c->data, c->len);
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
				      xmemdup0(c->data, c->len));
			free(old);
			break;
		}
	}
}

void store_stage_meta(struct store *s, const char *key, const char *value)
{
	if (s->gave_up)
		return;
	free(map_put(s->meta, key, strlen(key), xstrdup(value)));
}

int store_has_staged(const struct store *s)
{
	return map_count(s->agents) || map_count(s->added) || map_count(s->removed) ||
	       map_count(s->meta) || map_count(s->uploads);
}

static int step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- batches: made on the loop, written by the thread ---- */

static void packets_free(struct map *m)
{
	size_t pos = 0;
	void *value;

	while (map_next(m, &pos, NULL, NULL, &value)) {
		struct staged_packet *p = value;
		free(p->dest);
		free(p->data);
		free(p);
	}
	map_free(m);
}

static void meta_free(struct map *m)
{
	size_t pos = 0;
	void *value;

	while (map_next(m, &pos, NULL, NULL, &value))
		free(value);
	map_free(m);
}

static void batch_free(struct batch *b)
{
	if (b == NULL)
		return;
	for (size_t i = 0; i < b->nrows; i++) {
		free(b->rows[i].id);
		free(b->rows[i].status);
	}
	free(b->rows);
	packets_free(b->added);
	map_free(b->removed);
	meta_free(b->meta);
	uploads_free(b->uploads);
	free(b);
}

/* Everything staged becomes a batch; agents' rows are read from r now. */
static struct batch *batch_make(struct store *s, const struct route *r, double now)
{
	struct batch *b = xcalloc(1, sizeof *b);
	size_t pos = 0, n = map_count(s->agents);
	const void *key;

	if (n > 0)
		b->rows = xcalloc(n, sizeof *b->rows);
	while (map_next(s->agents, &pos, &key, NULL, NULL)) {
		struct agent_row *row = &b->rows[b->nrows++];
		struct route_agent_info info;

		row->id = xstrdup(key);
		if (route_agent_info(r, key, &info) < 0)
			continue;
		row->exists = 1;
		row->status = xstrdup(info.status);
		row->attached = info.attached;
		row->worker = info.worker;
		row->conn = info.conn;
		row->last_ping = info.last_ping;
		row->disconnect_time = info.disconnect_time;
	}
	map_free(s->agents);
	b->added = s->added;
	b->removed = s->removed;
	b->meta = s->meta;
	b->uploads = s->uploads;
	b->now = now;
	s->agents = NULL; /* freed above */
	staged_new(s);
	return b;
}

/* A batch that could not be written goes back under what was staged
 * since, which is newer: it is written with the next batch. */
static void batch_restage(struct store *s, struct batch *b)
{
	size_t pos = 0, len;
	const void *key;
	void *value;

	for (size_t i = 0; i < b->nrows; i++)
		map_put(s->agents, b->rows[i].id, strlen(b->rows[i].id) + 1, s);
	while (map_next(b->removed, &pos, &key, &len, NULL))
		map_put(s->removed, key, len, s);
	pos = 0;
	while (map_next(b->added, &pos, &key, &len, &value)) {
		if (map_get(s->removed, key, len) == NULL && map_get(s->added, key, len) == NULL)
			map_put(s->added, key, len, value);
		else
			free(((struct staged_packet *)value)->dest),
				free(((struct staged_packet *)value)->data), free(value);
	}
	map_free(b->added);
	b->added = map_new();
	pos = 0;
	while (map_next(b->meta, &pos, &key, &len, &value)) {
		if (map_get(s->meta, key, len) == NULL)
			map_put(s->meta, key, len, value);
		else
			free(value);
	}
	map_free(b->meta);
	b->meta = map_new();
	pos = 0;
	while (map_next(b->uploads, &pos, &key, &len, &value)) {
		if (map_get(s->uploads, key, len) == NULL)
			map_put(s->uploads, key, len, value);
		else if (value != UPLOAD_GONE)
			uploads_free_one(value);
	}
	map_free(b->uploads);
	b->uploads = map_new();
	batch_free(b);
}

static int write_agent(struct store *s, const struct agent_row *row, double now)
{
	sqlite3_stmt *st;

	if (!row->exists) {
		st = s->delete_agent;
		sqlite3_bind_text(st, 1, row->id, -1, SQLITE_STATIC);
		return step_done(st);
	}
	st = s->upsert_agent;
	sqlite3_bind_text(st, 1, row->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, row->status, -1, SQLITE_STATIC);
	if (row->attached) {
		sqlite3_bind_int64(st, 3, row->worker);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)row->conn);
	}
	sqlite3_bind_int(st, 5, row->attached);
	sqlite3_bind_double(st, 6, row->last_ping);
	sqlite3_bind_double(st, 7, row->disconnect_time);
	sqlite3_bind_double(st, 8, now);
	return step_done(st);
}

static int write_batch(struct store *s, const struct batch *b)
{
	size_t pos = 0, len;
	const void *key;
	void *value;

	while (map_next(b->removed, &pos, &key, NULL, &value)) {
		uint64_t seq;
		memcpy(&seq, key, sizeof seq);
		sqlite3_bind_int64(s->delete_packet, 1, (sqlite3_int64)seq);
		if (step_done(s->delete_packet) < 0)
			return -1;
	}
	pos = 0;
	while (map_next(b->added, &pos, &key, NULL, &value)) {
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
	for (size_t i = 0; i < b->nrows; i++)
		if (write_agent(s, &b->rows[i], b->now) < 0)
			return -1;
	pos = 0;
	while (map_next(b->uploads, &pos, &key, &len, &value)) {
		const struct staged_upload *u = value;
		sqlite3_stmt *st = value == UPLOAD_GONE ? s->delete_upload : s->insert_upload;

		sqlite3_bind_text(st, 1, key, (int)len, SQLITE_STATIC);
		if (value != UPLOAD_GONE) {
			sqlite3_bind_text(st, 2, u->original, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 3, u->field, -1, SQLITE_STATIC);
			if (u->agent != NULL)
				sqlite3_bind_text(st, 4, u->agent, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 5, (sqlite3_int64)u->size);
			sqlite3_bind_int64(st, 6, (sqlite3_int64)u->dev);
			sqlite3_bind_int64(st, 7, (sqlite3_int64)u->ino);
			sqlite3_bind_double(st, 8, u->created);
		}
		if (step_done(st) < 0)
			return -1;
	}
	pos = 0;
	while (map_next(b->meta, &pos, &key, &len, &value)) {
		sqlite3_bind_text(s->set_meta, 1, key, (int)len, SQLITE_STATIC);
		sqlite3_bind_text(s->set_meta, 2, value, -1, SQLITE_STATIC);
		if (step_done(s->set_meta) < 0)
			return -1;
	}
	return 0;
}

/* One transaction; on failure b->failed and b->error say why. */
static void commit_batch(struct store *s, struct batch *b)
{
	char *msg = NULL;
	double started = clock_monotonic();

	if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK ||
	    write_batch(s, b) < 0 ||
	    sqlite3_exec(s->db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
		b->failed = 1;
		snprintf(b->error, sizeof b->error, "%s", msg ? msg : sqlite3_errmsg(s->db));
		sqlite3_free(msg);
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
	b->seconds = clock_monotonic() - started;
}

/* ---- the writer thread ----
 * SQLite maps the WAL index (state.db-shm) into memory: when that file is
 * truncated under the router, or its disk fails, reading it is a SIGBUS.
 * Only the writer thread touches it; the handler takes that thread out of
 * SQLite (nothing else in the process uses SQLite once it runs), the store
 * is given up, and routing goes on in memory. Elsewhere SIGBUS stays
 * fatal. */

static __thread sigjmp_buf *writer_jump;

static void sigbus_handler(int sig)
{
	if (writer_jump != NULL)
		siglongjmp(*writer_jump, 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void notify_loop(struct store *s)
{
	char byte = 1;

	while (write(s->notify[1], &byte, 1) < 0 && errno == EINTR)
		;
}

static void *writer_main(void *arg)
{
	struct store *s = arg;
	sigjmp_buf jump;
	sigset_t all;

	/* Signals are the loop's (SIGTERM, SIGCHLD, ...): a process signal
	 * delivered to this thread would take its default action once the
	 * loop has stopped handling it (a second SIGTERM while stopping). */
	sigfillset(&all);
	sigdelset(&all, SIGBUS);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	if (sigsetjmp(jump, 1) != 0) {
		writer_jump = NULL;
		pthread_mutex_lock(&s->lock);
		s->dead = 1;
		if (s->busy != NULL) {
			s->busy->failed = 1;
			snprintf(s->busy->error, sizeof s->busy->error,
				 "SIGBUS reading the database's WAL index (%s-shm truncated, "
				 "or its disk failed)", sqlite3_db_filename(s->db, "main"));
			s->done = s->busy;
			s->busy = NULL;
		}
		batch_free(s->handed); /* nobody will write it */
		s->handed = NULL;
		pthread_mutex_unlock(&s->lock);
		notify_loop(s);
		return NULL;
	}
	writer_jump = &jump;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct batch *b;

		while (s->handed == NULL && !s->stopping)
			pthread_cond_wait(&s->wake, &s->lock);
		if (s->handed == NULL)
			break;
		b = s->busy = s->handed;
		s->handed = NULL;
		pthread_mutex_unlock(&s->lock);
		commit_batch(s, b);
		pthread_mutex_lock(&s->lock);
		s->busy = NULL;
		s->done = b;
		pthread_mutex_unlock(&s->lock);
		notify_loop(s);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	writer_jump = NULL;
	return NULL;
}

int store_start(struct store *s, char *err, size_t errlen)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = sigbus_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_NODEFER;
	if (pipe2(s->notify, O_CLOEXEC | O_NONBLOCK) < 0 || sigaction(SIGBUS, &sa, NULL) < 0) {
		snprintf(err, errlen, "cannot start the database writer: %s", strerror(errno));
		return -1;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
	if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
		snprintf(err, errlen, "cannot start the database writer thread");
		return -1;
	}
	s->started = 1;
	return 0;
}

int store_notify_fd(const struct store *s) { return s->started ? s->notify[0] : -1; }

int store_busy(struct store *s)
{
	int busy;

	if (!s->started)
		return 0;
	pthread_mutex_lock(&s->lock);
	busy = s->handed != NULL || s->busy != NULL || s->done != NULL;
	pthread_mutex_unlock(&s->lock);
	return busy;
}

static void log_failure(struct store *s, const char *why)
{
	s->failures++;
	if (!s->failing || time(NULL) - s->last_failure_log >= 60) {
		log_error("state database: cannot write (%s); routing goes on in memory "
			  "and the write is retried (%llu failures so far)", why,
			  (unsigned long long)s->failures);
		s->last_failure_log = time(NULL);
	}
	s->failing = 1;
}

int store_commit_begin(struct store *s, const struct route *r, double now)
{
	struct batch *b;

	if (s->dead || !store_has_staged(s) || store_busy(s))
		return 0;
	b = batch_make(s, r, now);
	if (!s->started) { /* no thread (tests): here and now */
		commit_batch(s, b);
		s->done = b;
		return 1;
	}
	pthread_mutex_lock(&s->lock);
	s->handed = b;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	return 1;
}

int store_commit_end(struct store *s)
{
	struct batch *b;
	char drain[64];
	int dead;

	if (s->started)
		while (read(s->notify[0], drain, sizeof drain) > 0)
			;
	if (s->started)
		pthread_mutex_lock(&s->lock);
	b = s->done;
	s->done = NULL;
	dead = s->dead;
	if (s->started)
		pthread_mutex_unlock(&s->lock);
	if (b == NULL)
		return 0;
	if (dead) {
		s->gave_up = 1;
		log_error("state database: %s; it is not used any more: routing goes on "
			  "in memory, and nothing is stored until the router is restarted",
			  b->failed ? b->error : "its writer is gone");
		batch_free(b);
		staged_clear(s);
		return -1;
	}
	s->stats.last_commit_seconds = b->seconds;
	s->stats.commit_seconds += b->seconds;
	if (b->failed) {
		s->stats.failures++;
		log_failure(s, b->error);
		batch_restage(s, b);
		return -1;
	}
	s->stats.commits++;
	if (s->failing)
		log_info("state database: writing again after %llu failures",
			 (unsigned long long)s->failures);
	s->failing = 0;
	batch_free(b);
	return 1;
}

/* Wait until the writer holds no batch, and take its result. */
static int store_wait(struct store *s)
{
	struct timespec ms = { 0, 1000000 };

	while (s->started) {
		int pending;

		pthread_mutex_lock(&s->lock);
		pending = s->handed != NULL || s->busy != NULL;
		pthread_mutex_unlock(&s->lock);
		if (!pending)
			break;
		nanosleep(&ms, NULL);
	}
	return store_commit_end(s);
}

int store_commit(struct store *s, const struct route *r, double now)
{
	int rc = store_wait(s) < 0 ? -1 : 0;

	if (store_commit_begin(s, r, now) && store_wait(s) < 0)
		rc = -1;
	return s->dead ? -1 : rc;
}

int store_failed(const struct store *s) { return s->gave_up; }

const struct store_stats *store_get_stats(const struct store *s) { return &s->stats; }

/* ---- uploads ---- */

static void stage_upload_value(struct store *s, const char *stored, void *value)
{
	void *old;

	if (s->gave_up) {
		if (value != UPLOAD_GONE)
			uploads_free_one(value);
		return;
	}
	old = map_put(s->uploads, stored, strlen(stored), value);
	if (old != NULL && old != UPLOAD_GONE)
		uploads_free_one(old);
}

void store_stage_upload(struct store *s, const struct upload_record *r)
{
	struct staged_upload *u = xcalloc(1, sizeof *u);

	u->stored = xstrdup(r->stored);
	u->original = xstrdup(r->original);
	u->field = xstrdup(r->field);
	u->agent = r->agent ? xstrdup(r->agent) : NULL;
	u->size = r->size;
	u->dev = r->dev;
	u->ino = r->ino;
	u->created = r->created;
	stage_upload_value(s, r->stored, u);
}

void store_stage_upload_gone(struct store *s, const char *stored)
{
	stage_upload_value(s, stored, UPLOAD_GONE);
}

int store_load_uploads(struct store *s,
		       void (*cb)(void *arg, const struct upload_record *u), void *arg,
		       char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (prepare(s->db, &st,
		    "SELECT stored_name, original_name, field, agent_id, size, device, "
		    "inode, created_at FROM uploads") < 0)
		goto fail;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct upload_record u = {
			.stored = (const char *)sqlite3_column_text(st, 0),
			.original = (const char *)sqlite3_column_text(st, 1),
			.field = (const char *)sqlite3_column_text(st, 2),
			.agent = (const char *)sqlite3_column_text(st, 3),
			.size = (uint64_t)sqlite3_column_int64(st, 4),
			.dev = (uint64_t)sqlite3_column_int64(st, 5),
			.ino = (uint64_t)sqlite3_column_int64(st, 6),
			.created = sqlite3_column_double(st, 7),
		};
		cb(arg, &u);
	}
	if (rc != SQLITE_DONE)
		goto fail;
	sqlite3_finalize(st);
	return 0;
fail:
	snprintf(err, errlen, "cannot load the uploads: %s", sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	return -1;
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
