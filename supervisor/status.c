/* "mephisto-router status": a read-only summary of the state database,
 * safe while the router runs (WAL readers do not block the writer). The
 * queries are the ones README.md shows for the sqlite3 CLI. */
#include "status.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

static double now_epoch(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Run sql, calling row() for each row. */
static int each_row(sqlite3 *db, const char *sql,
		    void (*row)(sqlite3_stmt *st, void *arg), void *arg)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -1;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		row(st, arg);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

static void print_meta(sqlite3_stmt *st, void *arg)
{
	const char *key = (const char *)sqlite3_column_text(st, 0);
	double value = sqlite3_column_double(st, 1);
	FILE *out = arg;

	if (strcmp(key, "started_at") == 0)
		fprintf(out, "router started:        %.0f s ago\n", now_epoch() - value);
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
	for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
		fputs(sections[i].heading, out);
		if (each_row(db, sections[i].sql, sections[i].row, out) < 0)
			goto fail;
	}
	rc = 0;
fail:
	if (rc < 0)
		snprintf(err, errlen, "cannot read state database %s: %s", path,
			 db ? sqlite3_errmsg(db) : "out of memory");
	sqlite3_close(db);
	return rc;
}
