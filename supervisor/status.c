/* "mephisto-router status": a read-only summary of the state database,
 * safe while the router runs (WAL readers do not block the writer). The
 * queries are the ones README.md shows for the sqlite3 CLI. */
#include "status.h"

#include <jansson.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

static int status_running; /* the router runs (router_running()) */

static double now_epoch(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Run sql, calling row() for each row; the number of rows, or -1. */
static int each_row(sqlite3 *db, const char *sql,
		    void (*row)(sqlite3_stmt *st, void *arg), void *arg)
{
	sqlite3_stmt *st;
	int rc, n = 0;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -1;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		row(st, arg);
		n++;
	}
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? n : -1;
}

/* One router_meta value as a number (0 when absent). */
static double meta_number(sqlite3 *db, const char *key)
{
	sqlite3_stmt *st;
	double v = 0;

	if (sqlite3_prepare_v2(db, "SELECT value FROM router_meta WHERE key = ?1", -1, &st,
			       NULL) != SQLITE_OK)
		return 0;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_double(st, 0);
	sqlite3_finalize(st);
	return v;
}

static int same_file(const char *a, const char *b)
{
	struct stat sa, sb;

	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
	       sa.st_ino == sb.st_ino;
}

/* Whether the router that wrote the database runs: its supervisor's pid
 * is alive and is a mephisto-router, and it has not recorded a stop. */
static int router_running(sqlite3 *db, FILE *out)
{
	int pid = (int)meta_number(db, "pid");
	double stopped = meta_number(db, "stopped_at");
	char path[64], cmd[256] = "";
	FILE *f;
	size_t n = 0;

	snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
	if (pid > 0 && (f = fopen(path, "r")) != NULL) {
		n = fread(cmd, 1, sizeof cmd - 1, f);
		fclose(f);
	}
	cmd[n] = '\0';
	snprintf(path, sizeof path, "/proc/%d/exe", pid);
	if (pid > 0 && stopped == 0 && kill(pid, 0) == 0 &&
	    (strstr(cmd, "mephisto-router") || same_file(path, "/proc/self/exe"))) {
		fprintf(out, "router:                running (pid %d)\n", pid);
		return 1;
	}
	if (stopped > 0)
		fprintf(out, "router:                not running (stopped %.0f s ago)\n",
			now_epoch() - stopped);
	else if (pid > 0)
		fprintf(out, "router:                not running (pid %d is gone: it did not "
			"stop cleanly)\n", pid);
	else
		fprintf(out, "router:                not running\n");
	return 0;
}

static void print_meta(sqlite3_stmt *st, void *arg)
{
	const char *key = (const char *)sqlite3_column_text(st, 0);
	double value = sqlite3_column_double(st, 1);
	FILE *out = arg;

	if (strcmp(key, "started_at") == 0)
		fprintf(out, "router started:        %.0f s ago%s\n", now_epoch() - value,
			status_running ? "" : " (its last start)");
	else if (strcmp(key, "last_backend_ping") == 0)
		fprintf(out, "backend last polled:   %.1f s ago\n", now_epoch() - value);
	else if (strcmp(key, "backend_attached") == 0)
		fprintf(out, "backend attached:      %s\n", value != 0 ? "yes" : "no");
}

static void print_count(sqlite3_stmt *st, void *arg)
{
	fprintf(arg, "  %-22s %lld\n", (const char *)sqlite3_column_text(st, 0),
		(long long)sqlite3_column_int64(st, 1));
}

static void print_worker(sqlite3_stmt *st, void *arg)
{
	fprintf(arg, "  worker %-15lld %lld\n", (long long)sqlite3_column_int64(st, 0),
		(long long)sqlite3_column_int64(st, 1));
}

static void print_queue(sqlite3_stmt *st, void *arg)
{
	fprintf(arg, "  %-22s %lld, oldest %.1f s\n", (const char *)sqlite3_column_text(st, 0),
		(long long)sqlite3_column_int64(st, 1),
		now_epoch() - sqlite3_column_double(st, 2));
}

static void print_total(sqlite3_stmt *st, void *arg)
{
	fprintf(arg, "%lld", (long long)sqlite3_column_int64(st, 0));
}

/* The summary, section by section: a heading, then the rows of a query. */
static const struct section {
	const char *heading;
	const char *sql;
	void (*row)(sqlite3_stmt *st, void *arg);
} sections[] = {
	{ "", "SELECT key, value FROM router_meta ORDER BY key", print_meta },
	{ "agents:                ", "SELECT count(*) FROM agents", print_total },
	{ "\nagents per status:\n",
	  "SELECT status, count(*) FROM agents GROUP BY status ORDER BY count(*) DESC",
	  print_count },
	{ "attached agents per worker:\n",
	  "SELECT attached_worker, count(*) FROM agents WHERE attached_worker IS NOT NULL "
	  "GROUP BY attached_worker ORDER BY attached_worker", print_worker },
	{ "queued packets:        ", "SELECT count(*) FROM queued_packets", print_total },
	{ "\nqueued per destination:\n",
	  "SELECT destination, count(*), min(created_at) FROM queued_packets "
	  "GROUP BY destination ORDER BY count(*) DESC LIMIT 20", print_queue },
};

int status_print(const char *path, FILE *out, char *err, size_t errlen)
{
	sqlite3 *db = NULL;
	int rc = -1;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(db, 2000);
	fprintf(out, "state database:        %s\n", path);
	status_running = router_running(db, out);
	for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
		int n;

		fputs(sections[i].heading, out);
		if ((n = each_row(db, sections[i].sql, sections[i].row, out)) < 0)
			goto fail;
		if (n == 0 && sections[i].heading[strlen(sections[i].heading) - 1] == '\n')
			fputs("  (none)\n", out); /* a list with nothing in it */
	}
	rc = 0;
fail:
	if (rc < 0)
		snprintf(err, errlen, "cannot read state database %s: %s", path,
			 db ? sqlite3_errmsg(db) : "out of memory");
	sqlite3_close(db);
	return rc;
}

/* ---- --json ---- */

static void json_meta(sqlite3_stmt *st, void *arg)
{
	json_object_set_new(arg, (const char *)sqlite3_column_text(st, 0),
			    json_real(sqlite3_column_double(st, 1)));
}

static void json_count(sqlite3_stmt *st, void *arg)
{
	json_object_set_new(arg, (const char *)sqlite3_column_text(st, 0),
			    json_integer(sqlite3_column_int64(st, 1)));
}

static void json_queue(sqlite3_stmt *st, void *arg)
{
	json_object_set_new(arg, (const char *)sqlite3_column_text(st, 0),
			    json_pack("{s:I, s:f}", "packets",
				      (json_int_t)sqlite3_column_int64(st, 1), "oldest_age_seconds",
				      now_epoch() - sqlite3_column_double(st, 2)));
}

static void json_total(sqlite3_stmt *st, void *arg)
{
	*(json_int_t *)arg = sqlite3_column_int64(st, 0);
}

int status_print_json(const char *path, FILE *out, char *err, size_t errlen)
{
	sqlite3 *db = NULL;
	json_t *o = json_object(), *meta = json_object(), *per_status = json_object(),
	       *per_worker = json_object(), *per_dest = json_object();
	json_int_t agents = 0, queued = 0;
	FILE *devnull = fopen("/dev/null", "w");
	char *text;
	int rc = -1;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK || !devnull)
		goto fail;
	sqlite3_busy_timeout(db, 2000);
	json_object_set_new(o, "state_database", json_string(path));
	json_object_set_new(o, "running", json_boolean(router_running(db, devnull)));
	if (each_row(db, "SELECT key, value FROM router_meta ORDER BY key", json_meta, meta) < 0 ||
	    each_row(db, "SELECT count(*) FROM agents", json_total, &agents) < 0 ||
	    each_row(db, "SELECT status, count(*) FROM agents GROUP BY status", json_count,
		     per_status) < 0 ||
	    each_row(db, "SELECT CAST(attached_worker AS TEXT), count(*) FROM agents WHERE "
		     "attached_worker IS NOT NULL GROUP BY attached_worker", json_count,
		     per_worker) < 0 ||
	    each_row(db, "SELECT count(*) FROM queued_packets", json_total, &queued) < 0 ||
	    each_row(db, "SELECT destination, count(*), min(created_at) FROM queued_packets "
		     "GROUP BY destination ORDER BY count(*) DESC LIMIT 1000", json_queue,
		     per_dest) < 0)
		goto fail;
	json_object_set(o, "router_meta", meta);
	json_object_set_new(o, "agents", json_integer(agents));
	json_object_set(o, "agents_per_status", per_status);
	json_object_set(o, "attached_agents_per_worker", per_worker);
	json_object_set_new(o, "queued_packets", json_integer(queued));
	json_object_set(o, "queued_per_destination", per_dest);
	text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (text == NULL)
		goto fail;
	fprintf(out, "%s\n", text);
	free(text);
	rc = 0;
fail:
	if (rc < 0)
		snprintf(err, errlen, "cannot read state database %s: %s", path,
			 db ? sqlite3_errmsg(db) : "out of memory");
	if (devnull != NULL)
		fclose(devnull);
	json_decref(meta);
	json_decref(per_status);
	json_decref(per_worker);
	json_decref(per_dest);
	json_decref(o);
	sqlite3_close(db);
	return rc;
}
