/* Unit tests of the SQLite store: schema applied twice, a newer schema
 * refused, batched commits that coalesce, reload into a fresh router. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/route.h"
#include "../../supervisor/store.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1700000000.0

static char path[64];
static char err[512];

static const struct route_config cfg = {
	.reconnect_grace = 10, .heartbeat_timeout = 15, .request_timeout = 30,
	.max_agent_queue = 100, .max_backend_queue = 1000, .max_backend_queue_age = 0,
};

static int setup(void **state)
{
	(void)state;
	snprintf(path, sizeof path, "/tmp/mr-store-test-%d.db", (int)getpid());
	unlink(path);
	return 0;
}

static int teardown(void **state)
{
	char p[80];

	(void)state;
	unlink(path);
	snprintf(p, sizeof p, "%s-wal", path);
	unlink(p);
	snprintf(p, sizeof p, "%s-shm", path);
	unlink(p);
	return 0;
}

static long long query_int(const char *sql)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	long long v = -1;

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* The workers write every packet sent so far at once (route_ws_sent). */
static void write_sends(struct route *r)
{
	const struct route_action *a;
	size_t n = route_actions(r, &a), k = 0;
	struct route_action *sends = calloc(n + 1, sizeof *sends);

	assert_non_null(sends);
	for (size_t i = 0; i < n; i++)
		if (a[i].kind == ROUTE_SEND && a[i].seq != 0)
			sends[k++] = a[i];
	for (size_t i = 0; i < k; i++)
		route_ws_sent(r, sends[i].worker, sends[i].id, sends[i].seq);
	free(sends);
}

static void feed(struct route *r, uint32_t w, uint64_t c, enum packet_type type,
		 const char *subject, const char *status, double now)
{
	char payload[256];
	struct packet p = {
		.type = type, .subject_id = subject, .status = status,
		.client_timestamp = NAN, .server_timestamp = NAN,
		.router_incoming_timestamp = now, .payload = payload,
	};

	snprintf(payload, sizeof payload,
		 "{\"packet_type\":\"%s\",\"subject_id\":\"%s\",\"data\":{\"t\":%.3f}}",
		 packet_type_name(type), subject, now);
	p.len = strlen(payload);
	route_ws_packet(r, w, c, &p, now);
	write_sends(r);
}

/* What the supervisor does after each event. */
static void sync_store(struct store *s, struct route *r, double now)
{
	const struct route_change *c;
	size_t n = route_changes(r, &c);

	store_stage(s, c, n);
	route_clear_changes(r);
	route_clear_actions(r);
	assert_int_equal(store_commit(s, r, now), 0);
}

static void test_schema_applied_twice(void **state)
{
	struct store *s;

	(void)state;
	s = store_open(path, err, sizeof err);
	assert_non_null(s);
	store_close(s);
	s = store_open(path, err, sizeof err);
	assert_non_null(s);
	store_close(s);
	assert_int_equal(query_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
	assert_int_equal(query_int("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
				   "AND name IN ('agents', 'queued_packets', 'router_meta')"), 3);
	assert_int_equal(query_int("SELECT value FROM router_meta WHERE key = 'schema_version'"),
			 STORE_SCHEMA_VERSION);
}

static void test_newer_schema_refused(void **state)
{
	sqlite3 *db;

	(void)state;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_null(store_open(path, err, sizeof err));
	assert_non_null(strstr(err, "schema version 99 is newer"));
}

static void test_not_a_database_refused(void **state)
{
	FILE *f = fopen(path, "w");

	(void)state;
	assert_non_null(f);
	fputs("this is not an SQLite database, just some text that is long enough "
	      "to fill the header of one ....................................", f);
	fclose(f);
	assert_null(store_open(path, err, sizeof err));
	assert_non_null(strstr(err, "cannot use state database"));
}

static void test_unwritable_path_refused(void **state)
{
	(void)state;
	assert_null(store_open("/nonexistent-dir/state.db", err, sizeof err));
	assert_non_null(strstr(err, "/nonexistent-dir/state.db"));
}

static void test_batch_commit_coalesces(void **state)
{
	struct store *s = store_open(path, err, sizeof err);
	struct route *r = route_new(&cfg, T0);
	const struct route_change *c;
	size_t n;

	(void)state;
	assert_non_null(s);
	/* agent a1 attaches, heartbeats three times, gets a status: one row */
	feed(r, 1, 7, PKT_ALIVE, "a1", NULL, T0);
	feed(r, 1, 7, PKT_HEARTBEAT, "a1", NULL, T0 + 1);
	feed(r, 1, 7, PKT_HEARTBEAT, "a1", NULL, T0 + 2);
	/* no backend: two packets wait for it */
	feed(r, 1, 7, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 3);
	feed(r, 1, 7, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 4);
	n = route_changes(r, &c);
	assert_true(n >= 4); /* created, attached, two packets queued */
	store_stage(s, c, n);
	route_clear_changes(r);
	route_clear_actions(r);
	assert_true(store_has_staged(s));
	assert_int_equal(store_commit(s, r, T0 + 5), 0);
	assert_false(store_has_staged(s));
	assert_int_equal(query_int("SELECT count(*) FROM agents"), 1);
	assert_int_equal(query_int("SELECT attached_worker FROM agents"), 1);
	assert_int_equal(query_int("SELECT attached_conn FROM agents"), 7);
	assert_int_equal(query_int("SELECT count(*) FROM queued_packets WHERE "
				   "destination = 'mephisto'"), 2);

	/* A packet queued and delivered before the commit is never written:
	 * the backend attaches; both queued rows go, nothing else is added. */
	feed(r, 2, 9, PKT_ALIVE, "mephisto", NULL, T0 + 6);
	sync_store(s, r, T0 + 6);
	assert_int_equal(query_int("SELECT count(*) FROM queued_packets"), 0);
	feed(r, 1, 7, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 7);
	sync_store(s, r, T0 + 7);
	assert_int_equal(query_int("SELECT count(*) FROM queued_packets"), 0);
	assert_int_equal(query_int("SELECT value FROM router_meta WHERE key = 'backend_attached'"), 1);

	/* a heartbeat alone is not written */
	feed(r, 1, 7, PKT_HEARTBEAT, "a1", NULL, T0 + 7.5);
	assert_int_equal(route_changes(r, &c), 0);
	route_clear_actions(r);

	/* forgetting an agent deletes its row */
	route_http_request(r, 1, 1, IPC_HTTP_FORGET_AGENT, "a1", NULL, "{}", 2, T0 + 8);
	sync_store(s, r, T0 + 8);
	assert_int_equal(query_int("SELECT count(*) FROM agents"), 0);
	route_free(r);
	store_close(s);
}

static void test_reload_restores_state(void **state)
{
	struct store *s = store_open(path, err, sizeof err);
	struct route *r = route_new(&cfg, T0), *r2;
	size_t agents, packets;
	const struct route_action *a;
	size_t n;

	(void)state;
	assert_non_null(s);
	feed(r, 1, 7, PKT_ALIVE, "a1", NULL, T0);
	feed(r, 2, 9, PKT_ALIVE, "mephisto", NULL, T0);
	feed(r, 2, 9, PKT_UPDATE_STATUS, "a1", "in task", T0 + 1);
	route_ws_closed(r, 1, 7, T0 + 2); /* a1 detached */
	feed(r, 2, 9, PKT_CLIENT_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 3);
	feed(r, 2, 9, PKT_CLIENT_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 4);
	route_ws_closed(r, 2, 9, T0 + 5); /* no backend */
	feed(r, 1, 8, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a2", NULL, T0 + 6);
	sync_store(s, r, T0 + 6);
	route_free(r);
	store_close(s);

	s = store_open(path, err, sizeof err);
	assert_non_null(s);
	r2 = route_new(&cfg, T0 + 100);
	assert_int_equal(store_load(s, r2, T0 + 100, &agents, &packets, err, sizeof err), 0);
	assert_int_equal(agents, 1);
	assert_int_equal(packets, 3);
	assert_string_equal(route_agent_status(r2, "a1"), "in task");
	assert_int_equal(route_queue_length(r2, "a1"), 2);
	assert_int_equal(route_queue_length(r2, "mephisto"), 1);
	/* the grace starts at the reload: not disconnected 5 s later... */
	route_tick(r2, T0 + 105);
	assert_string_equal(route_agent_status(r2, "a1"), "in task");
	/* ...but 10 s later */
	route_tick(r2, T0 + 110);
	assert_string_equal(route_agent_status(r2, "a1"), "disconnect");
	route_clear_actions(r2);
	/* queued packets come out in their order on attach; new ones after */
	feed(r2, 3, 1, PKT_ALIVE, "mephisto", NULL, T0 + 111);
	n = route_actions(r2, &a);
	assert_int_equal(n, 1);
	assert_non_null(strstr(a[0].data, "a2"));
	route_clear_actions(r2);
	feed(r2, 3, 2, PKT_ALIVE, "a1", NULL, T0 + 112);
	n = route_actions(r2, &a);
	assert_int_equal(n, 3); /* update_status, then the two live updates */
	assert_non_null(strstr(a[0].data, "update_status"));
	assert_true(a[1].seq < a[2].seq);
	assert_non_null(strstr(a[1].data, "\"t\":1700000003"));
	route_clear_actions(r2);
	feed(r2, 3, 1, PKT_CLIENT_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 113);
	n = route_actions(r2, &a);
	assert_int_equal(n, 1);
	assert_true(a[0].seq > 3); /* sequence numbers continue after the reload */
	route_clear_actions(r2);
	sync_store(s, r2, T0 + 114);
	assert_int_equal(query_int("SELECT count(*) FROM queued_packets"), 0);
	route_free(r2);
	store_close(s);
}

/* A packet queued and dropped at a bound in the same batch: the store
 * still reads the change safely (ASan) and writes only the survivor. */
static void test_queued_then_dropped_in_one_batch(void **state)
{
	struct route_config small = cfg;
	struct store *s = store_open(path, err, sizeof err);
	struct route *r;

	(void)state;
	small.max_backend_queue = 1;
	r = route_new(&small, T0);
	assert_non_null(s);
	feed(r, 1, 7, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 1);
	feed(r, 1, 7, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", NULL, T0 + 2);
	route_clear_actions(r); /* as the supervisor may, before staging */
	sync_store(s, r, T0 + 3);
	assert_int_equal(query_int("SELECT count(*) FROM queued_packets"), 1);
	assert_int_equal(query_int("SELECT count(*) FROM queued_packets WHERE "
				   "packet LIKE '%1700000002%'"), 1);
	route_free(r);
	store_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_schema_applied_twice, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_a_database_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unwritable_path_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch_commit_coalesces, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reload_restores_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queued_then_dropped_in_one_batch, setup, teardown),
	};
	return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
