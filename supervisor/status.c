/* "mephisto-router status": a read-only summary of the state database,
 * safe while the router runs (WAL readers do not block the writer). The
 * queries are the ones README.md shows for the sqlite3 CLI. */
#include "status.h"

#include "../core/clock.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int status_running; /* the router runs (router_running()) */

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
			clock_epoch() - stopped);
	else if (pid > 0)
		fprintf(out, "router:                not running (pid %d is gone: it did not "
			"stop cleanly)\n", pid);
	else
		fprintf(out, "router:                not running\n");
	return 0;
}

/* ---- the live figures: the running router's /metrics ---- */

struct sample {
	char *key; /* name{labels} */
	double value;
};

struct live {
	struct sample *s;
	size_t n;
	char why[160]; /* when there are none: why not */
};

static void got_metrics(struct evhttp_request *req, void *arg)
{
	struct evbuffer *body = req ? evhttp_request_get_input_buffer(req) : NULL;
	char **text = arg;
	size_t len;

	if (req == NULL || evhttp_request_get_response_code(req) != 200 || body == NULL)
		return;
	len = evbuffer_get_length(body);
	if ((*text = malloc(len + 1)) == NULL)
		return;
	evbuffer_remove(body, *text, len);
	(*text)[len] = '\0';
}

/* GET http://<listen>/metrics, 2 s at most; the body or NULL. */
static char *fetch_metrics(const char *listen)
{
	char host[80], *colon, *text = NULL;
	struct event_base *base = event_base_new();
	struct evhttp_connection *conn = NULL;
	struct evhttp_request *req;
	int port;

	snprintf(host, sizeof host, "%s", listen);
	if (base == NULL || (colon = strrchr(host, ':')) == NULL)
		goto out;
	*colon = '\0';
	port = atoi(colon + 1);
	if (host[0] == '[') { /* [v6]:port */
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0 || host[0] == '\0')
		snprintf(host, sizeof host, "127.0.0.1");
	else if (strcmp(host, "::") == 0)
		snprintf(host, sizeof host, "::1");
	conn = evhttp_connection_base_new(base, NULL, host, (unsigned short)port);
	if (conn == NULL)
		goto out;
	evhttp_connection_set_timeout(conn, 2);
	evhttp_connection_set_retries(conn, 0);
	if ((req = evhttp_request_new(got_metrics, &text)) == NULL)
		goto out;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Host", host);
	if (evhttp_make_request(conn, req, EVHTTP_REQ_GET, "/metrics") == 0)
		event_base_dispatch(base);
out:
	if (conn != NULL)
		evhttp_connection_free(conn);
	if (base != NULL)
		event_base_free(base);
	return text;
}

static double live_get(const struct live *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->s[i].key, key) == 0)
			return l->s[i].value;
	return NAN;
}

/* The sum of the samples whose key starts with prefix. */
static double live_sum(const struct live *l, const char *prefix)
{
	size_t n = strlen(prefix);
	double sum = 0;

	for (size_t i = 0; i < l->n; i++)
		if (strncmp(l->s[i].key, prefix, n) == 0)
			sum += l->s[i].value;
	return sum;
}

static void live_free(struct live *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->s[i].key);
	free(l->s);
	l->s = NULL;
	l->n = 0;
}

/* The figures of the router that wrote the database, from its metrics
 * listener: only when it runs, and only when the metrics come from that
 * very router (its start time is the database's started_at). */
static void live_load(struct live *l, sqlite3 *db, const char *listen)
{
	char *text, *line, *save = NULL;
	double started;

	memset(l, 0, sizeof *l);
	if (!status_running) {
		snprintf(l->why, sizeof l->why, "the router does not run");
		return;
	}
	if (listen == NULL || listen[0] == '\0' || strcmp(listen, "none") == 0) {
		snprintf(l->why, sizeof l->why, "metrics_listen is none");
		return;
	}
	if ((text = fetch_metrics(listen)) == NULL) {
		snprintf(l->why, sizeof l->why, "no answer from http://%s/metrics", listen);
		return;
	}
	/* Prometheus text: "# ..." comments, else "name{labels} value". */
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *space = strrchr(line, ' ');
		struct sample *grown;

		if (line[0] == '#' || space == NULL)
			continue;
		if ((grown = realloc(l->s, (l->n + 1) * sizeof *l->s)) == NULL)
			break;
		l->s = grown;
		*space = '\0';
		l->s[l->n].key = strdup(line);
		l->s[l->n].value = strtod(space + 1, NULL);
		if (l->s[l->n].key == NULL)
			break;
		l->n++;
	}
	free(text);
	started = live_get(l, "mephisto_router_start_time_seconds");
	if (isnan(started) || fabs(started - meta_number(db, "started_at")) > 1) {
		live_free(l);
		snprintf(l->why, sizeof l->why,
			 "http://%s/metrics is another router's (check --config)", listen);
	}
}

static void print_live(const struct live *l, const char *listen, FILE *out)
{
	static const char *const reasons[] = {
		"max_connections", "max_connections_per_address", "backend_allow",
		"body_memory_bytes", "max_agents", "body_timeout",
	};
	double hb = live_get(l, "mephisto_router_heartbeat_answer_seconds_count");
	char key[160];
	int any = 0;

	if (l->n == 0) {
		fprintf(out, "\nlive figures:          (not available: %s)\n", l->why);
		return;
	}
	fprintf(out, "\nlive figures (http://%s/metrics):\n", listen);
	for (size_t i = 0; i < l->n; i++)
		if (strncmp(l->s[i].key, "mephisto_router_build_info{", 27) == 0)
			fprintf(out, "  %-22s %.*s\n", "build", (int)strlen(l->s[i].key) - 28,
				l->s[i].key + 27);
	fprintf(out, "  %-22s %.0f of %.0f running; restarted: %.0f crashed, %.0f stalled, "
		"%.0f broken IPC\n", "workers", live_get(l, "mephisto_router_workers"),
		live_get(l, "mephisto_router_workers_configured"),
		live_get(l, "mephisto_router_worker_restarts_total{cause=\"crash\"}"),
		live_get(l, "mephisto_router_worker_restarts_total{cause=\"stalled\"}"),
		live_get(l, "mephisto_router_worker_restarts_total{cause=\"broken_ipc\"}"));
	for (int w = 1; w <= 1024; w++) {
		char name[32];
		double v[6];
		static const char *const f[6] = { "connections", "websockets", "packets_in_total",
						  "packets_out_total", "http_requests_total",
						  "http_errors_total" };

		for (int k = 0; k < 6; k++) {
			snprintf(key, sizeof key, "mephisto_router_%s{worker=\"%d\"}", f[k], w);
			v[k] = live_get(l, key);
		}
		if (isnan(v[0]))
			continue;
		snprintf(name, sizeof name, "worker %d", w);
		fprintf(out, "  %-22s %.0f connections, %.0f WebSockets, packets %.0f in, %.0f out, "
			"HTTP %.0f (%.0f errors)\n", name, v[0], v[1], v[2], v[3], v[4], v[5]);
	}
	fprintf(out, "  %-22s %s\n", "backend",
		live_get(l, "mephisto_router_backend_attached") == 1 ? "attached" : "away");
	fprintf(out, "  %-22s %.0f packets, %.0f bytes, oldest %.1f s\n", "backend queue",
		live_get(l, "mephisto_router_backend_queue_packets"),
		live_get(l, "mephisto_router_backend_queue_bytes"),
		live_get(l, "mephisto_router_backend_queue_oldest_age_seconds"));
	fprintf(out, "  %-22s %.0f agents, %.0f packets, %.0f bytes, oldest %.1f s, deepest %.0f\n",
		"agent queues", live_get(l, "mephisto_router_agent_queues"),
		live_get(l, "mephisto_router_agent_queue_packets"),
		live_get(l, "mephisto_router_agent_queue_bytes"),
		live_get(l, "mephisto_router_agent_queue_oldest_age_seconds"),
		live_get(l, "mephisto_router_agent_queue_deepest_packets"));
	fprintf(out, "  %-22s %.0f received, %.0f routed, %.0f queued, %.0f dropped, "
		"%.0f refused\n", "packets", live_sum(l, "mephisto_router_packets_received_total{"),
		live_get(l, "mephisto_router_packets_routed_total"),
		live_get(l, "mephisto_router_packets_queued_total"),
		live_get(l, "mephisto_router_packets_dropped_total"),
		live_get(l, "mephisto_router_packets_refused_total"));
	fprintf(out, "  %-22s", "refused (all workers)");
	for (size_t k = 0; k < sizeof reasons / sizeof reasons[0]; k++) {
		double n = 0;

		for (size_t i = 0; i < l->n; i++) {
			const char *r = strstr(l->s[i].key, ",reason=\"");

			if (strncmp(l->s[i].key, "mephisto_router_refused_total{", 30) == 0 && r &&
			    strncmp(r + 9, reasons[k], strlen(reasons[k])) == 0 &&
			    r[9 + strlen(reasons[k])] == '"')
				n += l->s[i].value;
		}
		if (n > 0)
			fprintf(out, "%s %s %.0f", any++ ? "," : "", reasons[k], n);
	}
	fprintf(out, "%s\n", any ? "" : " (none)");
	fprintf(out, "  %-22s %.0f, mean %.2f ms\n", "heartbeat answers", hb,
		hb > 0 ? live_get(l, "mephisto_router_heartbeat_answer_seconds_sum") / hb * 1000
		       : 0);
	fprintf(out, "  %-22s %.0f commits, %.0f failures%s\n", "database",
		live_get(l, "mephisto_router_db_commits_total"),
		live_get(l, "mephisto_router_db_commit_failures_total"),
		live_get(l, "mephisto_router_db_given_up") == 1 ? ", GIVEN UP (restart)" : "");
}

static void print_meta(sqlite3_stmt *st, void *arg)
{
	const char *key = (const char *)sqlite3_column_text(st, 0);
	double value = sqlite3_column_double(st, 1);
	FILE *out = arg;

	if (strcmp(key, "started_at") == 0)
		fprintf(out, "router started:        %.0f s ago%s\n", clock_epoch() - value,
			status_running ? "" : " (its last start)");
	else if (strcmp(key, "last_backend_ping") == 0)
		fprintf(out, "backend last polled:   %.1f s ago\n", clock_epoch() - value);
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
		clock_epoch() - sqlite3_column_double(st, 2));
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

int status_print(const char *path, const char *listen, FILE *out, char *err,
		 size_t errlen)
{
	sqlite3 *db = NULL;
	struct live live;
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
	live_load(&live, db, listen);
	print_live(&live, listen, out);
	live_free(&live);
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
				      clock_epoch() - sqlite3_column_double(st, 2)));
}

static void json_total(sqlite3_stmt *st, void *arg)
{
	*(json_int_t *)arg = sqlite3_column_int64(st, 0);
}

int status_print_json(const char *path, const char *listen, FILE *out, char *err,
		      size_t errlen)
{
	struct live live = { 0 };
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
	status_running = router_running(db, devnull);
	json_object_set_new(o, "running", json_boolean(status_running));
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
	live_load(&live, db, listen);
	if (live.n > 0) {
		json_t *samples = json_object();

		for (size_t i = 0; i < live.n; i++)
			json_object_set_new(samples, live.s[i].key, json_real(live.s[i].value));
		json_object_set_new(o, "live", samples);
	} else {
		json_object_set_new(o, "live_unavailable", json_string(live.why));
	}
	live_free(&live);
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
