/* Unit tests of the routing state machine (core/route.h) against its
 * documented contract and ../shared/PROTOCOL.md, with a fake clock: packets
 * go in through route_ws_packet() and the other events, actions come out
 * through route_actions(), and their JSON is checked with jansson.
 *
 * Every string handed to the router is a private copy: subject ids,
 * statuses, request ids and versions are freed as soon as the call returns;
 * payloads live until the next clear(), as route.h requires (an action's
 * data may point into the payload of the event that produced it). A router that keeps a pointer it should have copied shows up under ASan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/route.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1700000000.0 /* the router's start time in every test */
#define BW 0u           /* the backend's worker slot */
#define BC 1000u        /* the backend's connection id */
#define MS_EPS 1.0      /* ms tolerance for last_mephisto_ping */
#define TS_EPS 1e-3     /* s tolerance for timestamps echoed in JSON */

static const struct route_config default_cfg = {
	.reconnect_grace = 10,
	.heartbeat_timeout = 15,
	.request_timeout = 30,
	.max_agent_queue = 100,
	.max_backend_queue = 1000,
	.max_backend_queue_age = 3600,
};

/* ---- harness ---- */

static struct {
	struct route *r;
	char **strs;
	size_t nstrs;
	json_t **js;
	size_t njs;
	char **inputs; /* payloads handed to the router, freed by clear() */
	size_t ninputs;
	int free_inputs_now;
} F;

static int setup(void **state)
{
	(void)state;
	memset(&F, 0, sizeof F);
	F.r = route_new(&default_cfg, T0);
	return F.r == NULL ? -1 : 0;
}

static void free_inputs(void)
{
	for (size_t i = 0; i < F.ninputs; i++)
		free(F.inputs[i]);
	F.ninputs = 0;
}

static int teardown(void **state)
{
	(void)state;
	route_free(F.r);
	free_inputs();
	free(F.inputs);
	for (size_t i = 0; i < F.nstrs; i++)
		free(F.strs[i]);
	free(F.strs);
	for (size_t i = 0; i < F.njs; i++)
		json_decref(F.js[i]);
	free(F.js);
	memset(&F, 0, sizeof F);
	return 0;
}

/* Replace the test's router by one with cfg. */
static void renew(const struct route_config *cfg)
{
	route_free(F.r);
	F.r = route_new(cfg, T0);
	assert_non_null(F.r);
}

/* Room for one more pointer in *arr (n used): doubling, so that tests
 * with tens of thousands of agents stay linear (also under ASan, whose
 * realloc always moves). */
static void *grow(void *arr, size_t n, size_t size)
{
	if (n == 0 || (n & (n - 1)) == 0) {
		arr = realloc(arr, (n ? 2 * n : 8) * size);
		assert_non_null(arr);
	}
	return arr;
}

static const char *keep(char *s)
{
	F.strs = grow(F.strs, F.nstrs, sizeof *F.strs);
	F.strs[F.nstrs++] = s;
	return s;
}

static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...)
{
	va_list ap;
	char *s;

	va_start(ap, f);
	assert_true(vasprintf(&s, f, ap) >= 0);
	va_end(ap);
	return keep(s);
}

/* A private copy of a payload for the router: freed by done_input(). */
static char *input_copy(const char *data, size_t len)
{
	char *d = malloc(len + 1);

	assert_non_null(d);
	memcpy(d, data, len);
	d[len] = '\0';
	return d;
}

static void done_input(char *d)
{
	if (F.free_inputs_now) {
		free(d);
		return;
	}
	F.inputs = grow(F.inputs, F.ninputs, sizeof *F.inputs);
	F.inputs[F.ninputs++] = d;
}

static char *dup_or_null(const char *s)
{
	char *d;

	if (s == NULL)
		return NULL;
	d = strdup(s);
	assert_non_null(d);
	return d;
}

/* route_ws_packet() with private copies of every string. */
static void feed(uint32_t w, uint64_t c, enum packet_type type, const char *subject,
		 const char *status, const char *request_id, double cts, double sts,
		 double rit, const char *payload, double now)
{
	struct packet p;
	char *s = dup_or_null(subject), *st = dup_or_null(status);
	char *rq = dup_or_null(request_id), *pl = input_copy(payload, strlen(payload));

	memset(&p, 0, sizeof p);
	p.type = type;
	p.subject_id = s;
	p.status = st;
	p.request_id = rq;
	p.client_timestamp = cts;
	p.server_timestamp = sts;
	p.router_incoming_timestamp = rit;
	p.payload = pl;
	p.len = strlen(payload);
	route_ws_packet(F.r, w, c, &p, now);
	free(s);
	free(st);
	free(rq);
	done_input(pl);
}

/* A packet's JSON text with a data member. */
static const char *packet_json(enum packet_type type, const char *subject,
			       const char *data, double now)
{
	return fmt("{\"packet_type\":\"%s\",\"subject_id\":\"%s\",\"data\":%s,"
		   "\"router_incoming_timestamp\":%.6f}",
		   packet_type_name(type), subject, data, now);
}

static const char *alive(uint32_t w, uint64_t c, const char *subject, double now)
{
	const char *pl = packet_json(PKT_ALIVE, subject, "{}", now);

	feed(w, c, PKT_ALIVE, subject, NULL, NULL, NAN, NAN, now, pl, now);
	return pl;
}

static void attach_backend(double now)
{
	alive(BW, BC, PACKET_MEPHISTO, now);
}

/* A heartbeat (no data member); cts NAN: no client_timestamp. */
static const char *heartbeat(uint32_t w, uint64_t c, const char *subject,
			     double cts, double now)
{
	const char *pl;

	if (isnan(cts))
		pl = fmt("{\"packet_type\":\"heartbeat\",\"subject_id\":\"%s\","
			 "\"router_incoming_timestamp\":%.6f}", subject, now);
	else
		pl = fmt("{\"packet_type\":\"heartbeat\",\"subject_id\":\"%s\","
			 "\"client_timestamp\":%.6f,\"router_incoming_timestamp\":%.6f}",
			 subject, cts, now);
	feed(w, c, PKT_HEARTBEAT, subject, NULL, NULL, cts, NAN, now, pl, now);
	return pl;
}

/* Any packet of type with data {"tag": tag} from (w, c). */
static const char *send_tagged(uint32_t w, uint64_t c, enum packet_type type,
			       const char *subject, const char *tag, double now)
{
	const char *pl = packet_json(type, subject, fmt("{\"tag\":\"%s\"}", tag), now);

	feed(w, c, type, subject, NULL, NULL, NAN, NAN, now, pl, now);
	return pl;
}

/* From an agent's connection: mephisto_bound_live_update or log_error. */
static const char *to_backend(uint32_t w, uint64_t c, enum packet_type type,
			      const char *subject, const char *tag, double now)
{
	return send_tagged(w, c, type, subject, tag, now);
}

/* From the channel: client_bound_live_update. */
static const char *cblu(const char *agent, const char *tag, double now)
{
	return send_tagged(BW, BC, PKT_CLIENT_BOUND_LIVE_UPDATE, agent, tag, now);
}

/* update_status from (w, c); status NULL: data without a status. */
static const char *update_status_from(uint32_t w, uint64_t c, const char *agent,
				      const char *status, const char *tag, double now)
{
	const char *data = status != NULL
		? fmt("{\"status\":\"%s\",\"tag\":\"%s\"}", status, tag)
		: fmt("{\"tag\":\"%s\"}", tag);
	const char *pl = packet_json(PKT_UPDATE_STATUS, agent, data, now);

	feed(w, c, PKT_UPDATE_STATUS, agent, status, NULL, NAN, NAN, now, pl, now);
	return pl;
}

static const char *update_status(const char *agent, const char *status,
				 const char *tag, double now)
{
	return update_status_from(BW, BC, agent, status, tag, now);
}

static const char *agent_details_from(uint32_t w, uint64_t c, const char *request_id,
				      const char *agent, double now)
{
	const char *pl = packet_json(PKT_AGENT_DETAILS, request_id,
				     fmt("{\"request_id\":\"%s\",\"agent_id\":\"%s\"}",
					 request_id, agent), now);

	feed(w, c, PKT_AGENT_DETAILS, request_id, NULL, request_id, NAN, NAN, now, pl, now);
	return pl;
}

static const char *agent_details(const char *request_id, const char *agent, double now)
{
	return agent_details_from(BW, BC, request_id, agent, now);
}

static const char *request_statuses_from(uint32_t w, uint64_t c, double sts, double now)
{
	const char *pl = fmt("{\"packet_type\":\"request_statuses\",\"subject_id\":"
			     "\"mephisto\",\"data\":{},\"server_timestamp\":%.6f,"
			     "\"router_incoming_timestamp\":%.6f}", sts, now);

	feed(w, c, PKT_REQUEST_STATUSES, PACKET_MEPHISTO, NULL, NULL, NAN, sts, now, pl, now);
	return pl;
}

static const char *request_statuses(double sts, double now)
{
	return request_statuses_from(BW, BC, sts, now);
}

static void http(uint32_t w, uint64_t req, unsigned int flags, const char *agent_id,
		 const char *request_id, const char *payload, double now)
{
	char *a = dup_or_null(agent_id), *rq = dup_or_null(request_id);
	char *pl = input_copy(payload, strlen(payload));

	route_http_request(F.r, w, req, flags, a, rq, pl, strlen(payload), now);
	free(a);
	free(rq);
	done_input(pl);
}


static void version_mismatch(const char *version, const char *payload, double now)
{
	char *v = dup_or_null(version), *pl = input_copy(payload, strlen(payload));

	route_version_mismatch(F.r, v, pl, strlen(payload), now);
	free(v);
	done_input(pl);
}

static void dump_actions(void)
{
	const struct route_action *a;
	size_t n = route_actions(F.r, &a);

	for (size_t i = 0; i < n; i++)
		print_message("  action %zu: kind %d worker %u id %llu dest %s seq %llu "
			      "status %u data %.*s\n", i, (int)a[i].kind, a[i].worker,
			      (unsigned long long)a[i].id,
			      a[i].dest ? a[i].dest : "(null)",
			      (unsigned long long)a[i].seq, a[i].status,
			      a[i].data ? (int)a[i].len : 6,
			      a[i].data ? a[i].data : "(null)");
}

/* The pending actions; there must be exactly n. */
static const struct route_action *actions(size_t n)
{
	const struct route_action *a = NULL;
	size_t got = route_actions(F.r, &a);

	if (got != n) {
		print_message("expected %zu actions, got %zu:\n", n, got);
		dump_actions();
	}
	assert_int_equal(got, n);
	return a;
}

/* The actions are done with, and the sends not yet written: in flight. */
static void clear_unwritten(void)
{
	route_clear_actions(F.r);
	free_inputs();
}

/* Every send of the actions so far reported written, as a worker does
 * after writing them (route_ws_sent); its own actions are added. */
static void write_sends(void)
{
	const struct route_action *a;
	size_t n = route_actions(F.r, &a), k = 0;
	struct route_action *sends = calloc(n + 1, sizeof *sends);

	assert_non_null(sends);
	for (size_t i = 0; i < n; i++)
		if (a[i].kind == ROUTE_SEND && a[i].seq != 0)
			sends[k++] = a[i];
	for (size_t i = 0; i < k; i++)
		route_ws_sent(F.r, sends[i].worker, sends[i].id, sends[i].seq);
	free(sends);
}

/* The actions are done with, and every send was written. */
static void clear(void)
{
	write_sends();
	clear_unwritten();
}

static void assert_str(const char *seen, const char *expected)
{
	if (seen == NULL)
		print_message("expected \"%s\", got NULL\n", expected);
	assert_non_null(seen);
	assert_string_equal(seen, expected);
}

static void assert_near(double seen, double expected, double eps)
{
	if (!(fabs(seen - expected) <= eps))
		print_message("expected %.6f (+-%g), got %.6f\n", expected, eps, seen);
	assert_true(fabs(seen - expected) <= eps);
}

/* A SEND on (w, c); dest and payload checked when not NULL. */
static void assert_send(const struct route_action *a, uint32_t w, uint64_t c,
			const char *dest, const char *payload)
{
	assert_int_equal(a->kind, ROUTE_SEND);
	assert_int_equal(a->worker, w);
	assert_true(a->id == c);
	if (dest != NULL)
		assert_str(a->dest, dest);
	if (payload != NULL) {
		assert_non_null(a->data);
		if (a->len != strlen(payload) || memcmp(a->data, payload, a->len) != 0)
			print_message("expected payload %s\ngot %.*s\n", payload,
				      (int)a->len, a->data);
		assert_int_equal(a->len, strlen(payload));
		assert_memory_equal(a->data, payload, a->len);
	}
}

static json_t *parse(const char *data, size_t len)
{
	json_error_t e;
	json_t *j;

	assert_non_null(data);
	j = json_loadb(data, len, 0, &e);
	if (j == NULL)
		print_message("not JSON (%s): %.*s\n", e.text, (int)len, data);
	assert_non_null(j);
	F.js = realloc(F.js, (F.njs + 1) * sizeof *F.js);
	assert_non_null(F.js);
	F.js[F.njs++] = j;
	assert_true(json_is_object(j));
	return j;
}

static json_t *action_json(const struct route_action *a)
{
	return parse(a->data, a->len);
}

static const char *jstr(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

static double jnum(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_number(v))
		print_message("member %s is not a number\n", key);
	assert_true(json_is_number(v));
	return json_number_value(v);
}

static json_t *jobj(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_object(v))
		print_message("member %s is not an object\n", key);
	assert_true(json_is_object(v));
	return v;
}

/* The update_status the router itself sends an agent: {"packet_type":
 * "update_status", "subject_id": agent, "data": {"status": status}}. */
static void assert_update_status(const struct route_action *a, uint32_t w, uint64_t c,
				 const char *agent, const char *status)
{
	json_t *j, *data;

	assert_send(a, w, c, NULL, NULL);
	j = action_json(a);
	assert_str(jstr(j, "packet_type"), "update_status");
	assert_str(jstr(j, "subject_id"), agent);
	data = jobj(j, "data");
	assert_str(jstr(data, "status"), status);
}

/* A heartbeat answer on (w, c): dest "", the fields of the heartbeat kept,
 * data = {last_mephisto_ping[, status]}. status NULL: no status member. */
static json_t *assert_heartbeat_answer(const struct route_action *a, uint32_t w,
				       uint64_t c, const char *hb_payload,
				       const char *status, double ping_ms)
{
	json_t *j, *hb, *data, *v;
	const char *key;

	assert_send(a, w, c, "", NULL);
	j = action_json(a);
	hb = parse(hb_payload, strlen(hb_payload));
	json_object_foreach(hb, key, v) {
		json_t *seen = json_object_get(j, key);
		if (seen == NULL)
			print_message("heartbeat answer lost member %s\n", key);
		assert_non_null(seen);
		if (json_is_number(v))
			assert_near(json_number_value(seen), json_number_value(v), TS_EPS);
		else
			assert_true(json_equal(seen, v));
	}
	data = jobj(j, "data");
	assert_near(jnum(data, "last_mephisto_ping"), ping_ms, MS_EPS);
	if (status == NULL) {
		assert_null(json_object_get(data, "status"));
		assert_int_equal(json_object_size(data), 1);
	} else {
		assert_str(jstr(data, "status"), status);
		assert_int_equal(json_object_size(data), 2);
	}
	return j;
}

static struct route_stats stats(void)
{
	const struct route_stats *s = route_get_stats(F.r);

	assert_non_null(s);
	return *s;
}

/* An agent attached on (w, c) with the given status (set by the backend). */
static void agent_with_status(uint32_t w, uint64_t c, const char *agent,
			      const char *status, double now)
{
	alive(w, c, agent, now);
	if (status != NULL && strcmp(status, "none") != 0)
		update_status(agent, status, "setup", now);
	assert_str(route_agent_status(F.r, agent), status ? status : "none");
	clear();
}

/* ---- alive ---- */

static void test_alive_mephisto_makes_channel(void **state)
{
	const char *pl;
	const struct route_action *a;

	(void)state;
	assert_false(route_backend_attached(F.r));
	attach_backend(T0 + 1);
	actions(0);
	assert_true(route_backend_attached(F.r));
	assert_int_equal(route_agent_count(F.r), 0); /* "mephisto" is not an agent */

	agent_with_status(1, 1, "a1", "none", T0 + 1);
	pl = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "x", T0 + 2);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, pl);
}

static void test_alive_mephisto_replaces_channel(void **state)
{
	const char *pl;
	const struct route_action *a;

	(void)state;
	agent_with_status(1, 1, "a1", "none", T0);
	attach_backend(T0 + 1);
	alive(2, 2000, PACKET_MEPHISTO, T0 + 2);
	actions(0);
	assert_true(route_backend_attached(F.r));

	pl = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "x", T0 + 3);
	a = actions(1);
	assert_send(&a[0], 2, 2000, PACKET_MEPHISTO, pl);
	clear();

	/* The replaced connection closing does not take the channel away. */
	route_ws_closed(F.r, BW, BC, T0 + 4);
	assert_true(route_backend_attached(F.r));
	pl = to_backend(1, 1, PKT_LOG_ERROR, "a1", "y", T0 + 5);
	a = actions(1);
	assert_send(&a[0], 2, 2000, PACKET_MEPHISTO, pl);
}

static void test_backend_queue_flushed_in_order_once_on_attach(void **state)
{
	const char *p1, *p2, *p3, *p4;
	const struct route_action *a;

	(void)state;
	agent_with_status(1, 1, "a1", "none", T0);
	p1 = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "1", T0 + 1);
	p2 = to_backend(1, 1, PKT_LOG_ERROR, "a1", "2", T0 + 2);
	p3 = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "3", T0 + 3);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 3);

	attach_backend(T0 + 4);
	a = actions(3);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p1);
	assert_send(&a[1], BW, BC, PACKET_MEPHISTO, p2);
	assert_send(&a[2], BW, BC, PACKET_MEPHISTO, p3);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 0);
	clear();

	p4 = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "4", T0 + 5);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p4);
	clear();

	/* A new channel does not get the already-sent packets again. */
	alive(2, 2000, PACKET_MEPHISTO, T0 + 6);
	actions(0);
}

static void test_alive_agent_created_with_status_none(void **state)
{
	const struct route_action *a;

	(void)state;
	assert_null(route_agent_status(F.r, "a1"));
	alive(1, 7, "a1", T0 + 1);
	assert_int_equal(route_agent_count(F.r), 1);
	assert_str(route_agent_status(F.r, "a1"), "none");
	assert_true(route_agent_attached(F.r, "a1"));
	a = actions(1);
	assert_update_status(&a[0], 1, 7, "a1", "none");
}

static void test_alive_agent_update_status_then_queue_in_order(void **state)
{
	const char *p1, *p2, *p3, *p4;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	p1 = cblu("a1", "1", T0 + 1);
	p2 = update_status("a1", "waiting", "2", T0 + 2);
	p3 = cblu("a1", "3", T0 + 3);
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 3);
	assert_str(route_agent_status(F.r, "a1"), "waiting");

	alive(1, 7, "a1", T0 + 4);
	a = actions(4);
	/* The update_status carries the current status and names the agent. */
	assert_update_status(&a[0], 1, 7, "a1", "waiting");
	assert_send(&a[1], 1, 7, "a1", p1);
	assert_send(&a[2], 1, 7, "a1", p2);
	assert_send(&a[3], 1, 7, "a1", p3);
	assert_int_equal(route_queue_length(F.r, "a1"), 0);
	assert_true(route_agent_attached(F.r, "a1"));
	clear();

	p4 = cblu("a1", "4", T0 + 5);
	a = actions(1);
	assert_send(&a[0], 1, 7, "a1", p4);
}

/* ---- heartbeat ---- */

static void test_heartbeat_unknown_agent_answered_without_status(void **state)
{
	const char *hb;
	const struct route_action *a;

	(void)state;
	hb = heartbeat(3, 77, "ghost", NAN, T0 + 2);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 3, 77, hb, NULL, T0 * 1000);
	/* No agent is created by a heartbeat. */
	assert_int_equal(route_agent_count(F.r), 0);
	assert_null(route_agent_status(F.r, "ghost"));
}

static void test_heartbeat_answer_keeps_fields_and_goes_to_asking_conn(void **state)
{
	const char *hb;
	const struct route_action *a;
	json_t *j;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 5, "a1", "in task", T0);
	/* Asked on the connection the agent is attached to... */
	hb = heartbeat(1, 5, "a1", T0 + 1.5, T0 + 1);
	a = actions(1);
	/* last poll T0, browser 0.5 s ahead */
	j = assert_heartbeat_answer(&a[0], 1, 5, hb, "in task", (T0 + 0.5) * 1000);
	assert_str(jstr(j, "packet_type"), "heartbeat");
	assert_str(jstr(j, "subject_id"), "a1");
	assert_near(jnum(j, "client_timestamp"), T0 + 1.5, TS_EPS);
	assert_near(jnum(j, "router_incoming_timestamp"), T0 + 1, TS_EPS);
	clear();

	/* ...and for an unknown agent, on whichever connection asked. */
	hb = heartbeat(4, 9, "b2", NAN, T0 + 2);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 4, 9, hb, NULL, T0 * 1000);
}

static void test_heartbeat_known_agent_has_status(void **state)
{
	const char *hb;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "none", T0);
	hb = heartbeat(1, 1, "a1", NAN, T0 + 1);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, "none", T0 * 1000);
	clear();

	update_status("a1", "onboarding", "u", T0 + 2);
	clear();
	hb = heartbeat(1, 1, "a1", NAN, T0 + 3);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, "onboarding", T0 * 1000);
}

static void test_heartbeat_reattaches_on_new_conn_and_flushes_queue(void **state)
{
	const char *hb, *p1, *p2;
	const struct route_action *a;
	size_t n, answers = 0, got_p1 = 0;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	route_ws_closed(F.r, 1, 1, T0 + 1);
	assert_false(route_agent_attached(F.r, "a1"));
	p1 = cblu("a1", "1", T0 + 2);
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 1);

	hb = heartbeat(2, 9, "a1", NAN, T0 + 3);
	n = route_actions(F.r, &a);
	if (n != 2)
		dump_actions();
	assert_int_equal(n, 2);
	for (size_t i = 0; i < n; i++) {
		if (a[i].dest != NULL && a[i].dest[0] == '\0') {
			assert_heartbeat_answer(&a[i], 2, 9, hb, "in task", T0 * 1000);
			answers++;
		} else {
			assert_send(&a[i], 2, 9, "a1", p1);
			got_p1++;
		}
	}
	assert_int_equal(answers, 1);
	assert_int_equal(got_p1, 1);
	assert_true(route_agent_attached(F.r, "a1"));
	assert_int_equal(route_queue_length(F.r, "a1"), 0);
	clear();

	p2 = cblu("a1", "2", T0 + 4);
	a = actions(1);
	assert_send(&a[0], 2, 9, "a1", p2);
}

/* A heartbeat on another socket while still attached: that socket wins,
 * and the old one closing later no longer detaches the agent. */
static void test_heartbeat_on_other_conn_moves_agent(void **state)
{
	const char *p1, *p2;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	heartbeat(1, 2, "a1", NAN, T0 + 1);
	clear();
	p1 = cblu("a1", "1", T0 + 2);
	a = actions(1);
	assert_send(&a[0], 1, 2, "a1", p1);
	clear();

	route_ws_closed(F.r, 1, 1, T0 + 3);
	assert_true(route_agent_attached(F.r, "a1"));
	p2 = cblu("a1", "2", T0 + 4);
	a = actions(1);
	assert_send(&a[0], 1, 2, "a1", p2);
	clear();
	route_tick(F.r, T0 + 14); /* no grace runs: the agent never lost its socket */
	assert_str(route_agent_status(F.r, "a1"), "in task");
}

/* last_ping = now on a heartbeat: the 15 s silence counts from it. */
static void test_heartbeat_updates_last_ping(void **state)
{
	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	heartbeat(1, 1, "a1", NAN, T0 + 1);
	heartbeat(1, 1, "a1", NAN, T0 + 10);
	clear();
	route_tick(F.r, T0 + 24);
	assert_str(route_agent_status(F.r, "a1"), "in task");
	actions(0);
	route_tick(F.r, T0 + 25);
	assert_str(route_agent_status(F.r, "a1"), "disconnect");
}

static void test_last_mephisto_ping_tracks_request_statuses(void **state)
{
	const char *hb;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	/* Before any request_statuses: the router's start. */
	hb = heartbeat(1, 1, "ghost", NAN, T0 + 3);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, NULL, T0 * 1000);
	clear();

	request_statuses(T0 + 4.9, T0 + 5);
	clear();
	hb = heartbeat(1, 1, "ghost", NAN, T0 + 6);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, NULL, (T0 + 5) * 1000);
	clear();

	request_statuses(T0 + 8.9, T0 + 9);
	clear();
	hb = heartbeat(1, 1, "ghost", NAN, T0 + 12);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, NULL, (T0 + 9) * 1000);
}

/* (last_poll + client_timestamp - router_incoming_timestamp) * 1000. */
static void test_last_mephisto_ping_translated_to_browser_clock(void **state)
{
	const char *hb;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	request_statuses(T0 + 5, T0 + 5);
	clear();

	/* A browser 20 s fast. */
	hb = heartbeat(1, 1, "a1", T0 + 7 + 20, T0 + 7);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, "in task", (T0 + 5 + 20) * 1000);
	clear();

	/* A browser 30 s slow, unknown agent. */
	hb = heartbeat(2, 2, "ghost", T0 + 8 - 30, T0 + 8);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 2, 2, hb, NULL, (T0 + 5 - 30) * 1000);
	clear();

	/* No client_timestamp: the raw value. */
	hb = heartbeat(1, 1, "a1", NAN, T0 + 9);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, "in task", (T0 + 5) * 1000);
}

/* ---- agent -> backend ---- */

static void test_agent_packets_forwarded_to_backend(void **state)
{
	const char *p1, *p2;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(3, 33, "a1", "in task", T0);
	p1 = to_backend(3, 33, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "1", T0 + 1);
	p2 = to_backend(3, 33, PKT_LOG_ERROR, "a1", "2", T0 + 2);
	a = actions(2);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p1);
	assert_send(&a[1], BW, BC, PACKET_MEPHISTO, p2);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 0);
}

static void test_channel_closed_backend_packets_queue(void **state)
{
	const char *p1, *p2;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	route_ws_closed(F.r, BW, BC, T0 + 1);
	assert_false(route_backend_attached(F.r));
	actions(0);
	p1 = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "1", T0 + 2);
	p2 = to_backend(1, 1, PKT_LOG_ERROR, "a1", "2", T0 + 3);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 2);

	alive(5, 55, PACKET_MEPHISTO, T0 + 4);
	a = actions(2);
	assert_send(&a[0], 5, 55, PACKET_MEPHISTO, p1);
	assert_send(&a[1], 5, 55, PACKET_MEPHISTO, p2);
}

/* ---- backend -> agent ---- */

static void test_cblu_forwarded_to_attached_agent(void **state)
{
	const char *p;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(2, 5, "a1", "in task", T0);
	agent_with_status(3, 6, "a2", "in task", T0);
	p = cblu("a1", "1", T0 + 1);
	a = actions(1);
	assert_send(&a[0], 2, 5, "a1", p);
	clear();
	p = cblu("a2", "2", T0 + 1);
	a = actions(1);
	assert_send(&a[0], 3, 6, "a2", p);
}

static void test_cblu_queued_for_detached_agent(void **state)
{
	const char *p;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(2, 5, "a1", "in task", T0);
	route_ws_closed(F.r, 2, 5, T0 + 1);
	p = cblu("a1", "1", T0 + 2);
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 1);
	alive(2, 6, "a1", T0 + 3);
	a = actions(2);
	assert_update_status(&a[0], 2, 6, "a1", "in task");
	assert_send(&a[1], 2, 6, "a1", p);
}

static void test_cblu_creates_unknown_agent(void **state)
{
	(void)state;
	attach_backend(T0);
	cblu("new", "1", T0 + 1);
	actions(0);
	assert_int_equal(route_agent_count(F.r), 1);
	assert_str(route_agent_status(F.r, "new"), "none");
	assert_false(route_agent_attached(F.r, "new"));
	assert_int_equal(route_queue_length(F.r, "new"), 1);
}

static void test_update_status_sets_status_and_forwards(void **state)
{
	const char *p;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(2, 5, "a1", "none", T0);
	p = update_status("a1", "in task", "1", T0 + 1);
	assert_str(route_agent_status(F.r, "a1"), "in task");
	a = actions(1);
	assert_send(&a[0], 2, 5, "a1", p); /* the backend's own bytes */
}

static void test_update_status_without_status_keeps_status(void **state)
{
	const char *p;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(2, 5, "a1", "waiting", T0);
	p = update_status("a1", NULL, "1", T0 + 1);
	assert_str(route_agent_status(F.r, "a1"), "waiting");
	a = actions(1);
	assert_send(&a[0], 2, 5, "a1", p);
}

static void test_update_status_for_unknown_agent_creates_and_queues(void **state)
{
	(void)state;
	attach_backend(T0);
	update_status("a9", "accepted", "1", T0 + 1);
	actions(0);
	assert_str(route_agent_status(F.r, "a9"), "accepted");
	assert_int_equal(route_queue_length(F.r, "a9"), 1);
}

/* ---- refusals ---- */

static void test_backend_types_from_agent_conn_refused(void **state)
{
	uint64_t before;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "none", T0);
	http(4, 40, IPC_HTTP_WAIT_DETAILS, NULL, "req-1",
	     packet_json(PKT_REGISTER_AGENT, "req-1", "{}", T0), T0);
	clear();
	before = stats().packets_refused;

	cblu("a1", "ok", T0); /* sanity: from the channel it works */
	actions(1);
	clear();

	send_tagged(1, 1, PKT_CLIENT_BOUND_LIVE_UPDATE, "a1", "x", T0 + 1);
	actions(0);
	assert_int_equal(stats().packets_refused, before + 1);

	update_status_from(1, 1, "a1", "completed", "x", T0 + 1);
	actions(0);
	assert_str(route_agent_status(F.r, "a1"), "none");
	assert_int_equal(stats().packets_refused, before + 2);

	agent_details_from(1, 1, "req-1", "a1", T0 + 1);
	actions(0);
	assert_int_equal(route_waiting_requests(F.r), 1);
	assert_int_equal(stats().packets_refused, before + 3);

	request_statuses_from(1, 1, T0 + 1, T0 + 1);
	actions(0);
	assert_int_equal(stats().packets_refused, before + 4);

	/* An agent with no queue got nothing queued either. */
	assert_int_equal(route_queue_length(F.r, "a1"), 0);
}

static void test_backend_types_refused_without_any_channel(void **state)
{
	uint64_t before = stats().packets_refused;

	(void)state;
	agent_with_status(1, 1, "a1", "none", T0);
	send_tagged(1, 1, PKT_CLIENT_BOUND_LIVE_UPDATE, "a1", "x", T0 + 1);
	update_status_from(1, 1, "a1", "completed", "x", T0 + 1);
	request_statuses_from(1, 1, T0 + 1, T0 + 1);
	actions(0);
	assert_str(route_agent_status(F.r, "a1"), "none");
	assert_int_equal(route_queue_length(F.r, "a1"), 0);
	assert_int_equal(stats().packets_refused, before + 3);
}

static void test_agent_types_from_channel_refused(void **state)
{
	uint64_t before;

	(void)state;
	attach_backend(T0);
	before = stats().packets_refused;
	to_backend(BW, BC, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "x", T0 + 1);
	actions(0);
	assert_int_equal(stats().packets_refused, before + 1);
	to_backend(BW, BC, PKT_LOG_ERROR, "a1", "x", T0 + 1);
	actions(0);
	assert_int_equal(stats().packets_refused, before + 2);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 0);
	assert_int_equal(route_agent_count(F.r), 0);
}

static void test_heartbeat_from_channel_refused(void **state)
{
	uint64_t before;

	(void)state;
	attach_backend(T0);
	before = stats().packets_refused;
	heartbeat(BW, BC, PACKET_MEPHISTO, NAN, T0 + 1);
	actions(0);
	assert_int_equal(stats().packets_refused, before + 1);
}

static void test_unknown_and_router_made_types_refused(void **state)
{
	static const enum packet_type bad[] = {
		PKT_UNKNOWN, PKT_RETURN_STATUSES, PKT_REGISTER_AGENT,
		PKT_SUBMIT_ONBOARDING, PKT_SUBMIT_UNIT, PKT_SUBMIT_METADATA,
	};
	uint64_t before;
	size_t n = sizeof bad / sizeof bad[0];

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "none", T0);
	before = stats().packets_refused;
	for (size_t i = 0; i < n; i++) {
		send_tagged(1, 1, bad[i], "a1", "x", T0 + 1);
		actions(0);
		send_tagged(BW, BC, bad[i], "a1", "x", T0 + 1);
		actions(0);
	}
	assert_int_equal(stats().packets_refused, before + 2 * n);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 0);
	assert_int_equal(route_queue_length(F.r, "a1"), 0);
}

static void test_missing_subject_refused(void **state)
{
	uint64_t before;
	const char *pl;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "none", T0);
	before = stats().packets_refused;

	pl = "{\"packet_type\":\"alive\",\"data\":{}}";
	feed(2, 2, PKT_ALIVE, NULL, NULL, NULL, NAN, NAN, T0 + 1, pl, T0 + 1);
	actions(0);
	assert_int_equal(route_agent_count(F.r), 1);

	pl = "{\"packet_type\":\"client_bound_live_update\",\"data\":{}}";
	feed(BW, BC, PKT_CLIENT_BOUND_LIVE_UPDATE, NULL, NULL, NULL, NAN, NAN, T0 + 1, pl,
	     T0 + 1);
	actions(0);

	pl = "{\"packet_type\":\"mephisto_bound_live_update\",\"data\":{}}";
	feed(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, NULL, NULL, NULL, NAN, NAN, T0 + 1, pl,
	     T0 + 1);
	actions(0);

	pl = "{\"packet_type\":\"heartbeat\"}";
	feed(1, 1, PKT_HEARTBEAT, NULL, NULL, NULL, NAN, NAN, T0 + 1, pl, T0 + 1);
	actions(0);

	assert_int_equal(stats().packets_refused, before + 4);
	assert_int_equal(route_agent_count(F.r), 1);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 0);
}

/* ---- request_statuses ---- */

static void test_request_statuses_returns_every_status(void **state)
{
	const struct route_action *a;
	json_t *j, *data;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "none", T0);
	agent_with_status(1, 2, "a2", "in task", T0);
	update_status("a3", "waiting", "q", T0); /* known, never attached */
	clear();

	request_statuses(T0 + 4.25, T0 + 5);
	a = actions(1);
	assert_send(&a[0], BW, BC, NULL, NULL);
	j = action_json(&a[0]);
	assert_str(jstr(j, "packet_type"), "return_statuses");
	assert_str(jstr(j, "subject_id"), PACKET_MEPHISTO);
	data = jobj(j, "data");
	assert_int_equal(json_object_size(data), 3);
	assert_str(jstr(data, "a1"), "none");
	assert_str(jstr(data, "a2"), "in task");
	assert_str(jstr(data, "a3"), "waiting");
	assert_near(jnum(j, "client_timestamp"), T0 + 4.25, TS_EPS);
	assert_near(jnum(j, "router_incoming_timestamp"), T0 + 5, TS_EPS);
}

static void test_request_statuses_without_agents_sends_empty_data(void **state)
{
	const struct route_action *a;
	json_t *j;

	(void)state;
	attach_backend(T0);
	request_statuses(T0 + 1, T0 + 1);
	a = actions(1);
	assert_send(&a[0], BW, BC, NULL, NULL);
	j = action_json(&a[0]);
	assert_str(jstr(j, "packet_type"), "return_statuses");
	assert_int_equal(json_object_size(jobj(j, "data")), 0);
}

/* return_statuses is written from cached per-agent members: ids and
 * statuses that need escaping come out as JSON, and a status change shows
 * in the next answer. */
static void test_request_statuses_escapes_and_follows_changes(void **state)
{
	static const char *ids[] = { "q\"uote", "back\\slash", "caf\xc3\xa9\n", "plain" };
	const struct route_action *a;
	json_t *data;

	(void)state;
	attach_backend(T0);
	for (size_t i = 0; i < 4; i++)
		agent_with_status(1, i + 1, ids[i], "in task", T0);
	update_status(ids[0], "wait\"ing", "x", T0);
	clear();
	request_statuses(T0 + 1, T0 + 1);
	a = actions(1);
	data = jobj(action_json(&a[0]), "data");
	assert_int_equal(json_object_size(data), 4);
	assert_str(jstr(data, ids[0]), "wait\"ing");
	for (size_t i = 1; i < 4; i++)
		assert_str(jstr(data, ids[i]), "in task");
	clear();
	update_status(ids[2], "completed", "y", T0 + 2);
	clear();
	request_statuses(NAN, T0 + 3);
	a = actions(1);
	data = jobj(action_json(&a[0]), "data");
	assert_str(jstr(data, ids[2]), "completed");
	assert_str(jstr(data, ids[0]), "wait\"ing");
	assert_true(json_is_null(json_object_get(action_json(&a[0]), "client_timestamp")));
}

/* Beyond LIVENESS_BATCH agents the tick checks a batch at a time: every
 * silent agent is still disconnected, within a few ticks, and none early. */
static void test_liveness_walk_in_batches_reaches_every_agent(void **state)
{
	enum { N = 20000 };
	size_t done = 0, ticks = 0;

	(void)state;
	attach_backend(T0);
	for (uint64_t i = 0; i < N; i++) {
		const char *id = fmt("agent-%llu", (unsigned long long)i);
		alive(1, i + 1, id, T0);
		update_status(id, "in task", "t", T0);
		heartbeat(1, i + 1, id, NAN, T0);
		clear();
	}
	route_tick(F.r, T0 + 14.9);
	clear();
	for (uint64_t i = 0; i < N; i++)
		assert_str(route_agent_status(F.r, fmt("agent-%llu", (unsigned long long)i)),
			   "in task");
	while (done < N && ticks < 10) {
		const struct route_action *a;
		size_t n;

		route_tick(F.r, T0 + 15 + 0.1 * (double)ticks++);
		n = route_actions(F.r, &a);
		assert_true(n > 0); /* each tick does a part of the walk */
		done += n;
		clear();
	}
	assert_int_equal(done, N);
	assert_true(ticks > 1 && ticks <= 4);
	for (uint64_t i = 0; i < N; i++)
		assert_str(route_agent_status(F.r, fmt("agent-%llu", (unsigned long long)i)),
			   "disconnect");
}

static void test_request_statuses_applies_liveness_first(void **state)
{
	const struct route_action *a;
	size_t n, returns = 0, updates = 0;
	json_t *data = NULL;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	agent_with_status(1, 2, "a2", "in task", T0);
	agent_with_status(1, 3, "a3", "in task", T0);
	route_ws_closed(F.r, 1, 1, T0 + 1);   /* a1: grace ends at +11 */
	heartbeat(1, 2, "a2", NAN, T0 + 1);   /* a2: silent from +16 */
	heartbeat(1, 3, "a3", NAN, T0 + 10);  /* a3: alive and well */
	clear();

	request_statuses(T0 + 16, T0 + 16);
	n = route_actions(F.r, &a);
	for (size_t i = 0; i < n; i++) {
		json_t *j = action_json(&a[i]);
		const char *type = jstr(j, "packet_type");
		assert_non_null(type);
		if (strcmp(type, "return_statuses") == 0) {
			assert_send(&a[i], BW, BC, NULL, NULL);
			data = jobj(j, "data");
			returns++;
		} else {
			assert_update_status(&a[i], 1, 2, "a2", "disconnect");
			updates++;
		}
	}
	if (returns != 1 || updates != 1)
		dump_actions();
	assert_int_equal(returns, 1);
	assert_int_equal(updates, 1);
	assert_str(jstr(data, "a1"), "disconnect");
	assert_str(jstr(data, "a2"), "disconnect");
	assert_str(jstr(data, "a3"), "in task");
}

/* ---- HTTP requests ---- */

static void test_http_wait_details_answered_by_agent_details(void **state)
{
	const char *reg, *det;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	reg = packet_json(PKT_REGISTER_AGENT, "req-1", "{\"request_id\":\"req-1\"}", T0 + 1);
	http(3, 77, IPC_HTTP_WAIT_DETAILS, NULL, "req-1", reg, T0 + 1);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, reg);
	assert_int_equal(route_waiting_requests(F.r), 1);
	clear();

	det = agent_details("req-1", "agent-7", T0 + 2);
	a = actions(1);
	assert_int_equal(a[0].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[0].worker, 3);
	assert_true(a[0].id == 77);
	assert_int_equal(a[0].status, 200);
	assert_int_equal(a[0].len, strlen(det));
	assert_memory_equal(a[0].data, det, a[0].len);
	assert_int_equal(route_waiting_requests(F.r), 0);
	clear();

	/* Answered once: a second agent_details for it is dropped. */
	agent_details("req-1", "agent-7", T0 + 3);
	actions(0);
}

static void test_http_answers_go_to_the_right_request(void **state)
{
	const char *d2, *d1;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	http(1, 10, IPC_HTTP_WAIT_DETAILS, NULL, "r-a",
	     packet_json(PKT_REGISTER_AGENT, "r-a", "{}", T0), T0);
	http(2, 10, IPC_HTTP_WAIT_DETAILS, NULL, "r-b",
	     packet_json(PKT_REGISTER_AGENT, "r-b", "{}", T0), T0);
	clear();
	assert_int_equal(route_waiting_requests(F.r), 2);

	d2 = agent_details("r-b", "x", T0 + 1);
	a = actions(1);
	assert_int_equal(a[0].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[0].worker, 2);
	assert_true(a[0].id == 10);
	assert_int_equal(a[0].status, 200);
	assert_memory_equal(a[0].data, d2, strlen(d2));
	clear();
	d1 = agent_details("r-a", "y", T0 + 1);
	a = actions(1);
	assert_int_equal(a[0].worker, 1);
	assert_true(a[0].id == 10);
	assert_memory_equal(a[0].data, d1, strlen(d1));
}

static void test_http_unknown_request_id_dropped(void **state)
{
	(void)state;
	attach_backend(T0);
	http(3, 77, IPC_HTTP_WAIT_DETAILS, NULL, "req-1",
	     packet_json(PKT_REGISTER_AGENT, "req-1", "{}", T0), T0);
	clear();
	agent_details("nobody", "x", T0 + 1);
	actions(0);
	assert_int_equal(route_waiting_requests(F.r), 1);
}

/* Request 5 of worker 2 carries agent a1's packet of this type and data
 * (flags: ROUTE_HTTP_*): it goes to the attached backend at once, and
 * once that send is written the request is answered 200 without a body.
 * Returns the answer (valid until the actions are cleared). */
static const struct route_action *http_answered_once_written(enum packet_type type,
							    const char *data,
							    unsigned int flags)
{
	const char *p;
	const struct route_action *a;

	p = packet_json(type, "a1", data, T0 + 1);
	http(2, 5, flags, "a1", NULL, p, T0 + 1);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p);
	write_sends();
	a = actions(2);
	assert_int_equal(a[1].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[1].worker, 2);
	assert_true(a[1].id == 5);
	assert_int_equal(a[1].status, 200);
	assert_null(a[1].data);
	return &a[1];
}

static void test_http_without_wait_answered_once_written(void **state)
{
	const struct route_action *answer;

	(void)state;
	attach_backend(T0);
	answer = http_answered_once_written(PKT_LOG_ERROR, "{\"x\":1}", 0);
	assert_int_equal(answer->len, 0);
	assert_int_equal(route_waiting_requests(F.r), 0);
}

static void test_http_request_queued_without_channel(void **state)
{
	const char *p;
	const struct route_action *a;

	(void)state;
	p = packet_json(PKT_REGISTER_AGENT, "req-1", "{}", T0);
	http(3, 77, IPC_HTTP_WAIT_DETAILS, NULL, "req-1", p, T0);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
	assert_int_equal(route_waiting_requests(F.r), 1);
	attach_backend(T0 + 1);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p);
}

static void test_http_request_times_out_408(void **state)
{
	const struct route_action *a;
	json_t *j;

	(void)state;
	attach_backend(T0);
	assert_true(isinf(route_next_deadline(F.r)));
	http(3, 77, IPC_HTTP_WAIT_DETAILS, NULL, "req-1",
	     packet_json(PKT_REGISTER_AGENT, "req-1", "{}", T0 + 1), T0 + 1);
	clear();
	assert_near(route_next_deadline(F.r), T0 + 31, 1e-6);

	route_tick(F.r, T0 + 30.9);
	actions(0);
	assert_int_equal(route_waiting_requests(F.r), 1);

	route_tick(F.r, T0 + 31);
	a = actions(1);
	assert_int_equal(a[0].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[0].worker, 3);
	assert_true(a[0].id == 77);
	assert_int_equal(a[0].status, 408);
	j = action_json(&a[0]);
	assert_non_null(json_object_get(j, "error"));
	assert_int_equal(route_waiting_requests(F.r), 0);
	assert_int_equal(stats().requests_timed_out, 1);
	assert_true(isinf(route_next_deadline(F.r)));
	clear();

	/* Too late: dropped. */
	agent_details("req-1", "x", T0 + 32);
	actions(0);
	route_tick(F.r, T0 + 100);
	actions(0);
}

static void test_http_forget_agent(void **state)
{
	const char *p, *hb;
	const struct route_action *a;
	size_t n, sends = 0;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	agent_with_status(1, 2, "a2", "in task", T0);
	p = packet_json(PKT_SUBMIT_UNIT, "a1", "{\"final\":1}", T0 + 1);
	http(2, 8, IPC_HTTP_FORGET_AGENT, "a1", NULL, p, T0 + 1);
	assert_null(route_agent_status(F.r, "a1"));
	assert_int_equal(route_agent_count(F.r), 1);
	assert_str(route_agent_status(F.r, "a2"), "in task");
	n = route_actions(F.r, &a);
	for (size_t i = 0; i < n; i++) {
		if (a[i].kind == ROUTE_SEND) {
			assert_send(&a[i], BW, BC, PACKET_MEPHISTO, p);
			sends++;
		} else {
			assert_int_equal(a[i].status, 200);
		}
	}
	assert_int_equal(sends, 1);
	assert_int_equal(n, 1);
	write_sends();
	a = actions(2);
	assert_int_equal(a[1].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[1].status, 200);
	clear();

	/* The forgotten agent is unknown: heartbeats get no status. */
	hb = heartbeat(1, 1, "a1", NAN, T0 + 2);
	a = actions(1);
	assert_heartbeat_answer(&a[0], 1, 1, hb, NULL, T0 * 1000);
	assert_null(route_agent_status(F.r, "a1"));
	clear();

	/* submit_onboarding: forget and wait. */
	p = packet_json(PKT_SUBMIT_ONBOARDING, "a2", "{\"request_id\":\"r2\"}", T0 + 3);
	http(2, 9, IPC_HTTP_FORGET_AGENT | IPC_HTTP_WAIT_DETAILS, "a2", "r2", p, T0 + 3);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p);
	assert_null(route_agent_status(F.r, "a2"));
	assert_int_equal(route_agent_count(F.r), 0);
	assert_int_equal(route_waiting_requests(F.r), 1);
}

/* ---- liveness ---- */

static void test_close_then_grace_then_disconnect(void **state)
{
	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	assert_true(isinf(route_next_deadline(F.r)));
	route_ws_closed(F.r, 1, 1, T0 + 1);
	assert_false(route_agent_attached(F.r, "a1"));
	assert_str(route_agent_status(F.r, "a1"), "in task");
	assert_near(route_next_deadline(F.r), T0 + 11, 1e-6);

	route_tick(F.r, T0 + 10.9);
	assert_str(route_agent_status(F.r, "a1"), "in task");
	route_tick(F.r, T0 + 11);
	assert_str(route_agent_status(F.r, "a1"), "disconnect");
	assert_true(isinf(route_next_deadline(F.r)));
}

static void test_grace_reattach_by_alive_keeps_status(void **state)
{
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	route_ws_closed(F.r, 1, 1, T0 + 1);
	alive(2, 2, "a1", T0 + 6);
	a = actions(1);
	assert_update_status(&a[0], 2, 2, "a1", "in task");
	assert_true(route_agent_attached(F.r, "a1"));
	route_tick(F.r, T0 + 11);
	route_tick(F.r, T0 + 30);
	assert_str(route_agent_status(F.r, "a1"), "in task");
}

static void test_grace_reattach_by_heartbeat_keeps_status(void **state)
{
	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "waiting", T0);
	route_ws_closed(F.r, 1, 1, T0 + 1);
	heartbeat(2, 2, "a1", NAN, T0 + 6);
	assert_true(route_agent_attached(F.r, "a1"));
	route_tick(F.r, T0 + 11);
	route_tick(F.r, T0 + 20); /* 14 s after the heartbeat */
	assert_str(route_agent_status(F.r, "a1"), "waiting");
}

static void test_grace_applies_to_non_live_status(void **state)
{
	(void)state;
	agent_with_status(1, 1, "a1", "none", T0);
	route_ws_closed(F.r, 1, 1, T0 + 1);
	route_tick(F.r, T0 + 11);
	assert_str(route_agent_status(F.r, "a1"), "disconnect");
}

static void test_final_status_not_changed_by_close(void **state)
{
	static const char *const finals[] = { "completed", "expired", "approved",
					      "timeout", "rejected", "returned" };

	(void)state;
	attach_backend(T0);
	for (size_t i = 0; i < sizeof finals / sizeof finals[0]; i++) {
		char id[32];
		snprintf(id, sizeof id, "f%zu", i);
		agent_with_status(1, 10 + i, id, finals[i], T0);
		route_ws_closed(F.r, 1, 10 + i, T0 + 1);
	}
	route_tick(F.r, T0 + 11);
	route_tick(F.r, T0 + 100);
	for (size_t i = 0; i < sizeof finals / sizeof finals[0]; i++) {
		char id[32];
		snprintf(id, sizeof id, "f%zu", i);
		assert_str(route_agent_status(F.r, id), finals[i]);
	}
}

static void test_heartbeat_silence_disconnects_live_agent(void **state)
{
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	heartbeat(1, 1, "a1", NAN, T0 + 1);
	clear();
	assert_near(route_next_deadline(F.r), T0 + 16, 1e-6);
	route_tick(F.r, T0 + 15.9);
	actions(0);
	assert_str(route_agent_status(F.r, "a1"), "in task");

	route_tick(F.r, T0 + 16);
	assert_str(route_agent_status(F.r, "a1"), "disconnect");
	a = actions(1);
	assert_update_status(&a[0], 1, 1, "a1", "disconnect");
	assert_str(a[0].dest, "a1");
	clear();

	/* Once. */
	route_tick(F.r, T0 + 40);
	actions(0);
}

static void test_heartbeat_silence_each_live_status(void **state)
{
	static const char *const live[] = { "onboarding", "waiting", "in task" };

	(void)state;
	attach_backend(T0);
	for (size_t i = 0; i < 3; i++) {
		char id[32];
		snprintf(id, sizeof id, "l%zu", i);
		agent_with_status(1, 10 + i, id, live[i], T0);
		heartbeat(1, 10 + i, id, NAN, T0 + 1);
	}
	clear();
	route_tick(F.r, T0 + 16);
	actions(3);
	for (size_t i = 0; i < 3; i++) {
		char id[32];
		snprintf(id, sizeof id, "l%zu", i);
		assert_str(route_agent_status(F.r, id), "disconnect");
	}
}

static void test_heartbeat_silence_queues_update_status_when_detached(void **state)
{
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	heartbeat(1, 1, "a1", NAN, T0 + 1);
	route_ws_closed(F.r, 1, 1, T0 + 14); /* grace would end at +24 */
	clear();
	route_tick(F.r, T0 + 16);
	assert_str(route_agent_status(F.r, "a1"), "disconnect");
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 1);

	alive(1, 2, "a1", T0 + 17);
	a = actions(2);
	assert_update_status(&a[0], 1, 2, "a1", "disconnect");
	assert_update_status(&a[1], 1, 2, "a1", "disconnect");
}

static void test_no_heartbeat_never_triggers_silence_rule(void **state)
{
	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	assert_true(isinf(route_next_deadline(F.r)));
	route_tick(F.r, T0 + 16);
	route_tick(F.r, T0 + 1000);
	actions(0);
	assert_str(route_agent_status(F.r, "a1"), "in task");
}

static void test_silence_rule_only_for_live_status(void **state)
{
	static const char *const other[] = { "none", "accepted", "completed" };

	(void)state;
	attach_backend(T0);
	for (size_t i = 0; i < 3; i++) {
		char id[32];
		snprintf(id, sizeof id, "s%zu", i);
		agent_with_status(1, 10 + i, id, other[i], T0);
		heartbeat(1, 10 + i, id, NAN, T0 + 1);
	}
	clear();
	route_tick(F.r, T0 + 16);
	route_tick(F.r, T0 + 1000);
	actions(0);
	for (size_t i = 0; i < 3; i++) {
		char id[32];
		snprintf(id, sizeof id, "s%zu", i);
		assert_str(route_agent_status(F.r, id), other[i]);
		assert_true(route_agent_attached(F.r, id));
	}
}

/* ---- worker gone ---- */

static void test_worker_gone_detaches_its_agents_and_channel(void **state)
{
	const char *p;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	agent_with_status(1, 2, "a2", "in task", T0);
	agent_with_status(2, 1, "b1", "in task", T0); /* same conn id, other worker */
	alive(1, 100, PACKET_MEPHISTO, T0); /* the channel moves to worker 1 */
	route_worker_gone(F.r, 1, T0 + 1);
	actions(0);
	assert_false(route_agent_attached(F.r, "a1"));
	assert_false(route_agent_attached(F.r, "a2"));
	assert_true(route_agent_attached(F.r, "b1"));
	assert_false(route_backend_attached(F.r));

	p = to_backend(2, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "b1", "x", T0 + 2);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
	attach_backend(T0 + 3);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p);
	clear();
	p = cblu("b1", "y", T0 + 4);
	a = actions(1);
	assert_send(&a[0], 2, 1, "b1", p);
	clear();
	cblu("a1", "z", T0 + 4);
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 1);
}

static void test_worker_gone_keeps_channel_of_other_worker(void **state)
{
	(void)state;
	attach_backend(T0); /* worker 0 */
	agent_with_status(1, 1, "a1", "in task", T0);
	route_worker_gone(F.r, 1, T0 + 1);
	assert_true(route_backend_attached(F.r));
	assert_false(route_agent_attached(F.r, "a1"));
}

static void test_worker_gone_drops_waiting_requests(void **state)
{
	const char *d;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	http(1, 5, IPC_HTTP_WAIT_DETAILS, NULL, "r1",
	     packet_json(PKT_REGISTER_AGENT, "r1", "{}", T0), T0);
	http(2, 5, IPC_HTTP_WAIT_DETAILS, NULL, "r2",
	     packet_json(PKT_REGISTER_AGENT, "r2", "{}", T0), T0);
	clear();
	route_worker_gone(F.r, 1, T0 + 1);
	actions(0);
	assert_int_equal(route_waiting_requests(F.r), 1);

	agent_details("r1", "x", T0 + 2);
	actions(0);
	d = agent_details("r2", "y", T0 + 2);
	a = actions(1);
	assert_int_equal(a[0].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[0].worker, 2);
	assert_memory_equal(a[0].data, d, strlen(d));
	clear();
	route_tick(F.r, T0 + 100);
	actions(0);
}

static void test_worker_gone_drops_requests_before_timeout(void **state)
{
	(void)state;
	attach_backend(T0);
	http(1, 5, IPC_HTTP_WAIT_DETAILS, NULL, "r1",
	     packet_json(PKT_REGISTER_AGENT, "r1", "{}", T0), T0);
	clear();
	route_worker_gone(F.r, 1, T0 + 1);
	route_tick(F.r, T0 + 100); /* no 408 to a dead worker */
	actions(0);
	assert_int_equal(route_waiting_requests(F.r), 0);
}

/* Losing the worker closes its sockets: the reconnect grace runs. */
static void test_worker_gone_starts_grace(void **state)
{
	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	route_worker_gone(F.r, 1, T0 + 1);
	route_tick(F.r, T0 + 5);
	assert_str(route_agent_status(F.r, "a1"), "in task");
	route_tick(F.r, T0 + 11);
	assert_str(route_agent_status(F.r, "a1"), "disconnect");
}

/* ---- route_unsent ---- */

static void test_in_flight_agent_packets_go_again_first(void **state)
{
	const char *pa, *pb, *pc, *pd;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	pa = cblu("a1", "A", T0 + 1);
	pb = cblu("a1", "B", T0 + 1);
	a = actions(2);
	assert_send(&a[0], 1, 1, "a1", pa);
	assert_send(&a[1], 1, 1, "a1", pb);
	assert_true(a[0].seq < a[1].seq);
	clear_unwritten(); /* the worker had not written them */

	route_ws_closed(F.r, 1, 1, T0 + 2);
	pc = cblu("a1", "C", T0 + 3);
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 3);
	pd = cblu("a1", "D", T0 + 4);
	/* A write reported for the old connection changes nothing now. */
	route_ws_sent(F.r, 1, 1, UINT64_MAX);
	assert_int_equal(route_queue_length(F.r, "a1"), 4);

	alive(1, 2, "a1", T0 + 5);
	a = actions(5);
	assert_update_status(&a[0], 1, 2, "a1", "in task");
	assert_send(&a[1], 1, 2, "a1", pa);
	assert_send(&a[2], 1, 2, "a1", pb);
	assert_send(&a[3], 1, 2, "a1", pc);
	assert_send(&a[4], 1, 2, "a1", pd);
	clear();
	assert_int_equal(route_queue_length(F.r, "a1"), 0);
}

static void test_in_flight_backend_packets_go_again_first(void **state)
{
	const char *px, *py, *pz;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	px = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "X", T0 + 1);
	py = to_backend(1, 1, PKT_LOG_ERROR, "a1", "Y", T0 + 1);
	a = actions(2);
	assert_true(a[0].seq < a[1].seq);
	clear_unwritten();

	route_ws_closed(F.r, BW, BC, T0 + 2);
	pz = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "Z", T0 + 3);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 3);

	alive(3, 3000, PACKET_MEPHISTO, T0 + 4);
	a = actions(3);
	assert_send(&a[0], 3, 3000, PACKET_MEPHISTO, px);
	assert_send(&a[1], 3, 3000, PACKET_MEPHISTO, py);
	assert_send(&a[2], 3, 3000, PACKET_MEPHISTO, pz);
}

/* Written packets leave the queue; the rest stays in flight. */
static void test_written_packets_leave_the_queue(void **state)
{
	const struct route_action *a;
	uint64_t s1;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "1", T0 + 1);
	to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "2", T0 + 1);
	a = actions(2);
	s1 = a[0].seq;
	clear_unwritten();
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 0); /* in flight */
	route_ws_sent(F.r, BW, BC, s1);
	actions(0);
	/* From another connection: not the channel's, ignored. */
	route_ws_sent(F.r, 1, 1, UINT64_MAX);
	route_ws_closed(F.r, BW, BC, T0 + 2);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
}

/* A connection that cannot take a packet (closing, full) detaches its
 * destination: nothing more is sent to it, and no packet loops. */
static void test_unsent_detaches_without_a_loop(void **state)
{
	const struct route_action *a;
	const char *p1, *p2;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	p1 = cblu("a1", "1", T0 + 1);
	a = actions(1);
	route_unsent(F.r, 1, 1, a[0].seq, T0 + 1);
	clear_unwritten();
	actions(0);
	assert_false(route_agent_attached(F.r, "a1"));
	p2 = cblu("a1", "2", T0 + 2);
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 2);
	heartbeat(1, 7, "a1", NAN, T0 + 3);
	a = actions(3); /* the queue on the new connection, then the answer */
	assert_send(&a[0], 1, 7, "a1", p1);
	assert_send(&a[1], 1, 7, "a1", p2);
	clear();

	/* The channel too: packets for the backend wait for the next one. */
	to_backend(1, 7, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "x", T0 + 4);
	a = actions(1);
	route_unsent(F.r, BW, BC, a[0].seq, T0 + 4);
	clear_unwritten();
	assert_false(route_backend_attached(F.r));
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
}

/* A queue leaves at the pace its connection drains: at most window_bytes
 * in flight (one packet always). */
static void test_window_paces_a_queue(void **state)
{
	struct route_config cfg = default_cfg;
	const struct route_action *a;
	const char *p[6];
	size_t n;

	(void)state;
	cfg.window_bytes = 1; /* one packet at a time */
	renew(&cfg);
	for (int i = 0; i < 6; i++)
		p[i] = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1",
				  fmt("%d", i), T0);
	clear();
	attach_backend(T0 + 1);
	for (int i = 0; i < 6; i++) {
		n = route_actions(F.r, &a);
		assert_int_equal(n, (size_t)i + 1); /* one more per write */
		assert_send(&a[i], BW, BC, PACKET_MEPHISTO, p[i]);
		assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 5 - (size_t)i);
		write_sends(); /* written: the next one goes */
	}
	actions(6);
}

/* "200" is a promise: a submission is answered once written to the
 * backend's socket or committed to the store, whichever is first. */
static void test_submission_answered_when_written(void **state)
{
	(void)state;
	attach_backend(T0);
	http_answered_once_written(PKT_SUBMIT_UNIT, "{}", IPC_HTTP_FORGET_AGENT);
	clear();
	/* Once only, also after the commit. */
	route_changes_durable(F.r, route_change_epoch(F.r) + 10);
	actions(0);
}

static void test_submission_answered_when_committed(void **state)
{
	const struct route_action *a;
	const struct route_change *c;
	uint64_t epoch;

	(void)state;
	http(2, 5, 0, "a1", NULL, packet_json(PKT_LOG_ERROR, "a1", "{}", T0), T0);
	actions(0);
	assert_true(route_changes(F.r, &c) >= 1);
	assert_int_equal(c[0].kind, ROUTE_CHANGE_QUEUED);
	/* Committed before the changes were handed over: not yet. */
	route_changes_durable(F.r, route_change_epoch(F.r));
	actions(0);
	route_clear_changes(F.r);
	epoch = route_change_epoch(F.r);
	route_changes_durable(F.r, epoch);
	a = actions(1);
	assert_int_equal(a[0].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[0].status, 200);
	clear();
	route_changes_durable(F.r, epoch);
	actions(0);
}

/* Neither written nor committed in time: 503, the packet stays queued. */
static void test_submission_not_durable_in_time_is_503(void **state)
{
	const struct route_action *a;

	(void)state;
	http(2, 5, 0, "a1", NULL, packet_json(PKT_SUBMIT_METADATA, "a1", "{}", T0), T0);
	route_tick(F.r, T0 + 29);
	actions(0);
	route_tick(F.r, T0 + 30);
	a = actions(1);
	assert_int_equal(a[0].kind, ROUTE_HTTP_ANSWER);
	assert_int_equal(a[0].status, 503);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
}

/* A worker that dies with a submission in flight: its client is gone, the
 * packet is not. */
static void test_submission_survives_its_worker(void **state)
{
	const struct route_action *a;
	const char *p;

	(void)state;
	attach_backend(T0);
	p = packet_json(PKT_SUBMIT_UNIT, "a1", "{}", T0 + 1);
	http(2, 5, 0, "a1", NULL, p, T0 + 1);
	clear_unwritten();
	route_worker_gone(F.r, 2, T0 + 2);
	route_worker_gone(F.r, BW, T0 + 2);
	actions(0);
	alive(1, 9, PACKET_MEPHISTO, T0 + 3);
	a = actions(1);
	assert_send(&a[0], 1, 9, PACKET_MEPHISTO, p);
	write_sends();
	actions(1); /* the send only: nobody to answer */
}

/* return_statuses fits the backend's frame limit, in several packets. */
static void test_return_statuses_split_to_fit(void **state)
{
	struct route_config cfg = default_cfg;
	const struct route_action *a;
	size_t n, agents = 0;

	(void)state;
	cfg.max_frame_bytes = 400;
	renew(&cfg);
	attach_backend(T0);
	for (int i = 0; i < 40; i++)
		alive(1, (uint64_t)(10 + i), fmt("agent-%02d", i), T0);
	clear();
	request_statuses(T0 + 1, T0 + 1);
	n = route_actions(F.r, &a);
	assert_true(n > 1);
	for (size_t i = 0; i < n; i++) {
		json_t *j = action_json(&a[i]);

		assert_true(a[i].len <= 400);
		assert_string_equal(json_string_value(json_object_get(j, "packet_type")),
				    "return_statuses");
		agents += json_object_size(json_object_get(j, "data"));
	}
	assert_int_equal(agents, 40);
}

/* The backend's queue never drops a submission for other traffic. */
static void test_backend_queue_keeps_submissions(void **state)
{
	struct route_config cfg = default_cfg;
	const char *sub, *p[6];
	const struct route_action *a;

	(void)state;
	cfg.max_backend_queue = 3;
	renew(&cfg);
	sub = packet_json(PKT_SUBMIT_UNIT, "a1", "{\"final\":1}", T0);
	http(2, 5, IPC_HTTP_PRECIOUS, "a1", NULL, sub, T0);
	for (int i = 0; i < 6; i++)
		p[i] = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a2",
				  fmt("%d", i), T0 + 1 + i);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 3);
	attach_backend(T0 + 10);
	a = actions(3);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, sub);
	assert_send(&a[1], BW, BC, PACKET_MEPHISTO, p[4]);
	assert_send(&a[2], BW, BC, PACKET_MEPHISTO, p[5]);
}

/* Full of submissions: a further one is refused (503), not another's. */
static void test_backend_queue_full_of_submissions_refuses(void **state)
{
	struct route_config cfg = default_cfg;
	const struct route_action *a;

	(void)state;
	cfg.max_backend_queue = 2;
	renew(&cfg);
	for (int i = 0; i < 2; i++)
		http(2, (uint64_t)i, IPC_HTTP_PRECIOUS, fmt("a%d", i), NULL,
		     packet_json(PKT_SUBMIT_UNIT, fmt("a%d", i), "{}", T0), T0);
	actions(0);
	http(2, 9, IPC_HTTP_PRECIOUS, "a9", NULL,
	     packet_json(PKT_SUBMIT_METADATA, "a9", "{}", T0 + 1), T0 + 1);
	a = actions(1);
	assert_int_equal(a[0].kind, ROUTE_HTTP_ANSWER);
	assert_true(a[0].id == 9);
	assert_int_equal(a[0].status, 503);
	clear();
	/* other traffic finds no room either */
	to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a3", "x", T0 + 2);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 2);
}

/* One agent's flood evicts its own packets, not the others'. */
static void test_backend_queue_share(void **state)
{
	struct route_config cfg = default_cfg;
	const char *quiet;
	const struct route_action *a;
	size_t n;
	int seen = 0;

	(void)state;
	cfg.max_backend_queue = 4;
	renew(&cfg);
	quiet = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "quiet", "q", T0);
	for (int i = 0; i < 20; i++)
		to_backend(1, 2, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "loud", fmt("%d", i), T0 + 1);
	attach_backend(T0 + 2);
	n = route_actions(F.r, &a);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++)
		if (a[i].len == strlen(quiet) && memcmp(a[i].data, quiet, a[i].len) == 0)
			seen++;
	assert_int_equal(seen, 1);
}

/* The bound in bytes: big packets make room by number, whatever the count. */
static void test_backend_queue_bytes_bound(void **state)
{
	struct route_config cfg = default_cfg;
	char big[1000];

	(void)state;
	cfg.max_backend_queue_bytes = 3500;
	renew(&cfg);
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	for (int i = 0; i < 10; i++)
		to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", big, T0 + i);
	assert_true(route_queue_length(F.r, PACKET_MEPHISTO) <= 3);
	assert_true(route_queue_length(F.r, PACKET_MEPHISTO) >= 2);
}

/* Agents nobody has heard of for agent_retention are forgotten. */
static void test_stale_agents_pruned(void **state)
{
	struct route_config cfg = default_cfg;

	(void)state;
	cfg.agent_retention = 100;
	renew(&cfg);
	attach_backend(T0);
	agent_with_status(1, 1, "gone", "completed", T0);
	agent_with_status(1, 2, "here", "in task", T0);
	agent_with_status(1, 3, "waits", "in task", T0);
	clear();
	route_ws_closed(F.r, 1, 1, T0 + 1);
	route_ws_closed(F.r, 1, 3, T0 + 1);
	cblu("waits", "kept for it", T0 + 2); /* queued: not forgotten */
	clear();
	route_tick(F.r, T0 + 50);
	assert_int_equal(route_agent_count(F.r), 3);
	heartbeat(1, 2, "here", NAN, T0 + 90);
	clear();
	route_tick(F.r, T0 + 102);
	assert_null(route_agent_status(F.r, "gone"));
	assert_str(route_agent_status(F.r, "here"), "in task"); /* attached */
	assert_non_null(route_agent_status(F.r, "waits"));
	assert_int_equal(stats().agents_pruned, 1);
}

/* An action's dest stays valid until the actions are cleared, also when
 * its agent is forgotten in the same batch (the supervisor defers the
 * dispatch of a dying worker's last messages). Under ASan: no
 * use-after-free. */
static void test_action_dest_outlives_a_forgotten_agent(void **state)
{
	const struct route_action *a;
	size_t n;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "gone-soon", "in task", T0);
	cblu("gone-soon", "last words", T0 + 1);
	http(2, 5, IPC_HTTP_FORGET_AGENT | IPC_HTTP_PRECIOUS, "gone-soon", NULL,
	     packet_json(PKT_SUBMIT_UNIT, "gone-soon", "{}", T0 + 1), T0 + 1);
	assert_null(route_agent_status(F.r, "gone-soon"));
	n = route_actions(F.r, &a);
	assert_true(n >= 2);
	assert_string_equal(a[0].dest, "gone-soon");
}

/* A late write report for what one socket carried for agent X does not
 * take packets of agent Y, whom the same socket speaks for now. */
static void test_write_report_for_another_agent_ignored(void **state)
{
	const struct route_action *a;
	uint64_t x_seq;
	const char *py;

	(void)state;
	attach_backend(T0);
	py = cblu("Y", "for y", T0); /* Y has no socket: queued */
	clear();
	agent_with_status(1, 1, "X", "in task", T0);
	cblu("X", "for x", T0 + 1);
	a = actions(1);
	x_seq = a[0].seq;
	clear_unwritten();
	alive(1, 1, "Y", T0 + 3); /* the same socket speaks for Y now */
	a = actions(2);
	assert_send(&a[1], 1, 1, "Y", py);
	assert_true(a[1].seq < x_seq); /* Y's packet is older than X's */
	clear_unwritten();
	route_ws_sent(F.r, 1, 1, x_seq); /* the late report of X's packet */
	route_ws_closed(F.r, 1, 1, T0 + 4);
	assert_int_equal(route_queue_length(F.r, "Y"), 1); /* not lost */
	assert_int_equal(route_queue_length(F.r, "X"), 1); /* goes again */
}

static void test_seq_increases(void **state)
{
	const struct route_action *a;
	uint64_t last = 0;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);
	for (int i = 0; i < 10; i++) {
		char tag[16];
		snprintf(tag, sizeof tag, "%d", i);
		if (i % 2)
			cblu("a1", tag, T0 + 1);
		else
			to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", tag, T0 + 1);
		a = actions(1);
		assert_true(a[0].seq > last);
		last = a[0].seq;
		clear();
	}
}

/* ---- bounds ---- */

static void test_agent_queue_bound_drops_oldest(void **state)
{
	struct route_config cfg = default_cfg;
	const char *p[5];
	const struct route_action *a;

	(void)state;
	cfg.max_agent_queue = 3;
	renew(&cfg);
	attach_backend(T0);
	for (int i = 0; i < 5; i++)
		p[i] = cblu("a1", fmt("%d", i), T0 + 1 + i);
	actions(0);
	assert_int_equal(route_queue_length(F.r, "a1"), 3);
	assert_int_equal(stats().packets_dropped, 2);
	alive(1, 1, "a1", T0 + 10);
	a = actions(4);
	assert_update_status(&a[0], 1, 1, "a1", "none");
	assert_send(&a[1], 1, 1, "a1", p[2]);
	assert_send(&a[2], 1, 1, "a1", p[3]);
	assert_send(&a[3], 1, 1, "a1", p[4]);
}

static void test_backend_queue_bound_drops_oldest(void **state)
{
	struct route_config cfg = default_cfg;
	const char *p[5];
	const struct route_action *a;

	(void)state;
	cfg.max_backend_queue = 3;
	renew(&cfg);
	agent_with_status(1, 1, "a1", "none", T0);
	for (int i = 0; i < 5; i++)
		p[i] = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1",
				  fmt("%d", i), T0 + 1 + i);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 3);
	assert_int_equal(stats().packets_dropped, 2);
	attach_backend(T0 + 10);
	a = actions(3);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p[2]);
	assert_send(&a[1], BW, BC, PACKET_MEPHISTO, p[3]);
	assert_send(&a[2], BW, BC, PACKET_MEPHISTO, p[4]);
}

static void test_set_config_changes_bounds(void **state)
{
	struct route_config cfg = default_cfg;
	const char *p[4];
	const struct route_action *a;

	(void)state;
	cfg.max_agent_queue = 2;
	route_set_config(F.r, &cfg);
	attach_backend(T0);
	for (int i = 0; i < 4; i++)
		p[i] = cblu("a1", fmt("%d", i), T0 + 1);
	assert_int_equal(route_queue_length(F.r, "a1"), 2);
	alive(1, 1, "a1", T0 + 2);
	a = actions(3);
	assert_send(&a[1], 1, 1, "a1", p[2]);
	assert_send(&a[2], 1, 1, "a1", p[3]);
}

static void test_backend_queue_age_at_tick(void **state)
{
	struct route_config cfg = default_cfg;
	const char *p2;
	const struct route_action *a;

	(void)state;
	cfg.max_backend_queue_age = 60;
	renew(&cfg);
	agent_with_status(1, 1, "a1", "none", T0);
	to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "old", T0 + 1);
	p2 = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "new", T0 + 50);
	assert_true(route_next_deadline(F.r) <= T0 + 61 + 1e-6);
	route_tick(F.r, T0 + 30);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 2);
	route_tick(F.r, T0 + 62);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
	assert_int_equal(stats().packets_dropped, 1);
	attach_backend(T0 + 63);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p2);
}

static void test_backend_queue_age_at_flush(void **state)
{
	struct route_config cfg = default_cfg;
	const char *p2;
	const struct route_action *a;

	(void)state;
	cfg.max_backend_queue_age = 60;
	renew(&cfg);
	agent_with_status(1, 1, "a1", "none", T0);
	to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "old", T0 + 1);
	p2 = to_backend(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", "new", T0 + 50);
	attach_backend(T0 + 62); /* no tick in between */
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p2);
	assert_int_equal(stats().packets_dropped, 1);
}

/* ---- version mismatch ---- */

static void test_version_mismatch_once_per_version(void **state)
{
	const char *p1, *p2, *p3;
	const struct route_action *a;

	(void)state;
	attach_backend(T0);
	p1 = packet_json(PKT_LOG_ERROR, PACKET_MEPHISTO,
			 "{\"error_type\":\"version-mismatch\",\"text\":\"2.0.3\"}", T0);
	version_mismatch("2.0.3", p1, T0 + 1);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p1);
	clear();

	p2 = packet_json(PKT_LOG_ERROR, PACKET_MEPHISTO,
			 "{\"error_type\":\"version-mismatch\",\"text\":\"again\"}", T0);
	version_mismatch("2.0.3", p2, T0 + 2);
	actions(0);
	assert_int_equal(stats().version_warnings_suppressed, 1);
	version_mismatch("2.0.3", p2, T0 + 3);
	actions(0);
	assert_int_equal(stats().version_warnings_suppressed, 2);

	p3 = packet_json(PKT_LOG_ERROR, PACKET_MEPHISTO,
			 "{\"error_type\":\"version-mismatch\",\"text\":\"1.9\"}", T0);
	version_mismatch("1.9.0", p3, T0 + 4);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p3);
	assert_int_equal(stats().version_warnings_suppressed, 2);
}

static void test_version_mismatch_queued_without_channel(void **state)
{
	const char *p;
	const struct route_action *a;

	(void)state;
	p = packet_json(PKT_LOG_ERROR, PACKET_MEPHISTO, "{\"error_type\":\"version-mismatch\"}",
			T0);
	version_mismatch("2.0.3", p, T0 + 1);
	actions(0);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
	version_mismatch("2.0.3", p, T0 + 2);
	assert_int_equal(route_queue_length(F.r, PACKET_MEPHISTO), 1);
	attach_backend(T0 + 3);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, p);
}

/* ---- misc ---- */

static void test_next_deadline_infinity_when_idle(void **state)
{
	(void)state;
	assert_true(isinf(route_next_deadline(F.r)) && route_next_deadline(F.r) > 0);
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "none", T0);
	assert_true(isinf(route_next_deadline(F.r)));
}

static void test_clear_actions_empties(void **state)
{
	(void)state;
	alive(1, 1, "a1", T0);
	actions(1);
	clear();
	actions(0);
	clear();
	actions(0);
}

/* Payloads are (pointer, len): bytes past len are not part of them. */
static void test_payload_bounded_by_len(void **state)
{
	const char *hb = "{\"packet_type\":\"heartbeat\",\"subject_id\":\"a1\"}";
	const char *mb = "{\"packet_type\":\"mephisto_bound_live_update\","
			 "\"subject_id\":\"a1\",\"data\":{}}";
	const char *junk = "GARBAGE}";
	const struct route_action *a;
	struct packet p;
	char *buf;
	json_t *j;

	(void)state;
	attach_backend(T0);
	agent_with_status(1, 1, "a1", "in task", T0);

	buf = malloc(strlen(mb) + strlen(junk) + 1);
	assert_non_null(buf);
	strcpy(buf, mb);
	strcat(buf, junk);
	memset(&p, 0, sizeof p);
	p.type = PKT_MEPHISTO_BOUND_LIVE_UPDATE;
	p.subject_id = "a1";
	p.client_timestamp = p.server_timestamp = p.router_incoming_timestamp = NAN;
	p.payload = buf;
	p.len = strlen(mb);
	route_ws_packet(F.r, 1, 1, &p, T0 + 1);
	done_input(buf);
	a = actions(1);
	assert_send(&a[0], BW, BC, PACKET_MEPHISTO, mb);
	clear();

	buf = malloc(strlen(hb) + strlen(junk) + 1);
	assert_non_null(buf);
	strcpy(buf, hb);
	strcat(buf, junk);
	p.type = PKT_HEARTBEAT;
	p.payload = buf;
	p.len = strlen(hb);
	route_ws_packet(F.r, 1, 1, &p, T0 + 2);
	done_input(buf);
	a = actions(1);
	j = action_json(&a[0]);
	assert_str(jstr(j, "subject_id"), "a1");
	assert_null(json_object_get(j, "GARBAGE"));
	clear();

	buf = malloc(strlen(mb) + strlen(junk) + 1);
	assert_non_null(buf);
	strcpy(buf, mb);
	strcat(buf, junk);
	route_http_request(F.r, 2, 2, 0, "a1", NULL, buf, strlen(mb), T0 + 3);
	route_version_mismatch(F.r, "0.1", buf, strlen(mb), T0 + 3);
	done_input(buf);
	a = actions(2); /* the request is answered once the packet is written */
	for (int i = 0; i < 2; i++)
		if (a[i].kind == ROUTE_SEND)
			assert_send(&a[i], BW, BC, PACKET_MEPHISTO, mb);
}

/* ---- exactly once, in order: a randomised run ----
 * Entity 0 is the backend, 1 and 2 are agents. Packets routed to an entity
 * wait in `pending` (the worker's send queue) until eo_deliver() writes
 * them in order (route_ws_sent) or eo_close() closes the connection and
 * drops them, as a worker does. Each entity must receive its EO_PACKETS
 * packets exactly once, in the order they were sent, with a window small
 * enough that queues leave a few packets at a time. */
#define EO_ENTITIES 3
#define EO_PACKETS 60

static const char *const eo_name[EO_ENTITIES] = { PACKET_MEPHISTO, "a1", "a2" };

struct eo_pending {
	uint32_t worker;
	uint64_t conn;
	char *dest;
	uint64_t seq;
	char *data;
	size_t len;
};

static struct {
	uint32_t rng;
	uint64_t next_conn;
	uint32_t worker[EO_ENTITIES];
	uint64_t conn[EO_ENTITIES]; /* 0: detached */
	int sent[EO_ENTITIES];
	int received[EO_ENTITIES];
	struct eo_pending *pending;
	size_t npending;
} E;

static uint32_t eo_rand(void)
{
	E.rng = E.rng * 1103515245u + 12345u;
	return E.rng >> 8;
}

/* Move the router's sends into the pending list. */
static void eo_collect(void)
{
	const struct route_action *a;
	size_t n = route_actions(F.r, &a);

	for (size_t i = 0; i < n; i++) {
		struct eo_pending *p;

		if (a[i].kind != ROUTE_SEND)
			continue;
		E.pending = realloc(E.pending, (E.npending + 1) * sizeof *E.pending);
		assert_non_null(E.pending);
		p = &E.pending[E.npending++];
		p->worker = a[i].worker;
		p->conn = a[i].id;
		p->dest = strdup(a[i].dest);
		p->seq = a[i].seq;
		p->data = input_copy(a[i].data, a[i].len);
		p->len = a[i].len;
	}
	clear_unwritten();
}

static void eo_remove(size_t i)
{
	free(E.pending[i].dest);
	free(E.pending[i].data);
	memmove(&E.pending[i], &E.pending[i + 1],
		(E.npending - i - 1) * sizeof *E.pending);
	E.npending--;
}

static void eo_attach(int e, double now)
{
	E.conn[e] = E.next_conn++;
	alive(E.worker[e], E.conn[e], eo_name[e], now);
	eo_collect();
}

/* Send entity e its next packet: from an agent's connection to the
 * backend, or from the channel to an agent (which needs a channel). */
static void eo_send(int e, double now)
{
	const char *pl;

	if (e == 0) {
		pl = packet_json(PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1",
				 fmt("{\"n\":%d}", E.sent[0]), now);
		feed(1, 1, PKT_MEPHISTO_BOUND_LIVE_UPDATE, "a1", NULL, NULL, NAN,
		     NAN, now, pl, now);
	} else {
		if (E.conn[0] == 0)
			return;
		pl = packet_json(PKT_CLIENT_BOUND_LIVE_UPDATE, eo_name[e],
				 fmt("{\"n\":%d}", E.sent[e]), now);
		feed(E.worker[0], E.conn[0], PKT_CLIENT_BOUND_LIVE_UPDATE, eo_name[e],
		     NULL, NULL, NAN, NAN, now, pl, now);
	}
	E.sent[e]++;
	eo_collect();
}

/* The worker writes everything waiting on e's connection, in order, and
 * reports each write; the router sends more as the window frees. */
static void eo_deliver(int e)
{
	int more = 1;

	while (more) {
		more = 0;
		for (size_t i = 0; i < E.npending;) {
			struct eo_pending *p = &E.pending[i];
			json_t *j, *n;

			if (p->worker != E.worker[e] || p->conn != E.conn[e]) {
				i++;
				continue;
			}
			if (p->seq != 0) /* 0: the status sent on alive */
				assert_str(p->dest, eo_name[e]);
			j = parse(p->data, p->len);
			n = json_object_get(json_object_get(j, "data"), "n");
			if (n != NULL) { /* update_status packets carry no n */
				assert_int_equal(json_integer_value(n), E.received[e]);
				E.received[e]++;
			}
			if (p->seq != 0)
				route_ws_sent(F.r, p->worker, p->conn, p->seq);
			eo_remove(i);
			eo_collect();
			more = 1;
			break; /* the list changed */
		}
	}
}

/* e's connection closes: the worker drops what it had not written, and
 * the router sends it again on e's next connection. */
static void eo_close(int e, double now)
{
	uint64_t conn = E.conn[e];

	route_ws_closed(F.r, E.worker[e], conn, now);
	eo_collect();
	for (size_t i = 0; i < E.npending;) {
		struct eo_pending *p = &E.pending[i];

		if (p->worker != E.worker[e] || p->conn != conn) {
			i++;
			continue;
		}
		eo_remove(i);
	}
	E.conn[e] = 0;
}

static void test_exactly_once_in_order(void **state)
{
	struct route_config cfg = default_cfg;
	double now = T0;

	(void)state;
	/* Bounds out of the way: this test is about delivery. */
	cfg.max_agent_queue = 100000;
	cfg.max_backend_queue = 100000;
	cfg.window_bytes = 400;
	renew(&cfg);
	memset(&E, 0, sizeof E);
	E.rng = 42;
	E.next_conn = 100;
	E.worker[0] = 0;
	E.worker[1] = 1;
	E.worker[2] = 2;
	eo_attach(0, now);

	for (int step = 0; step < 2000; step++) {
		int ent = (int)(eo_rand() % EO_ENTITIES);
		unsigned int op = eo_rand() % 10;
		int done = 1;

		for (int e = 0; e < EO_ENTITIES; e++)
			if (E.sent[e] < EO_PACKETS)
				done = 0;
		if (done)
			break;
		now += 0.01;
		if (op < 5) {
			if (E.sent[ent] < EO_PACKETS)
				eo_send(ent, now);
		} else if (op < 7) {
			if (E.conn[ent] != 0)
				eo_deliver(ent);
		} else if (op < 9) {
			if (E.conn[ent] != 0)
				eo_close(ent, now);
		} else {
			if (E.conn[ent] == 0)
				eo_attach(ent, now);
		}
	}
	/* Everyone comes back and takes everything. */
	for (int e = 0; e < EO_ENTITIES; e++) {
		while (E.sent[e] < EO_PACKETS) {
			if (E.conn[0] == 0)
				eo_attach(0, now);
			eo_send(e, now);
		}
	}
	for (int e = 0; e < EO_ENTITIES; e++) {
		if (E.conn[e] == 0)
			eo_attach(e, now);
		eo_deliver(e);
	}
	for (int e = 0; e < EO_ENTITIES; e++) {
		assert_int_equal(E.received[e], EO_PACKETS);
		assert_int_equal(route_queue_length(F.r, eo_name[e]), 0);
	}
	assert_int_equal(E.npending, 0);
	free(E.pending);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_alive_mephisto_makes_channel),
		T(test_alive_mephisto_replaces_channel),
		T(test_backend_queue_flushed_in_order_once_on_attach),
		T(test_alive_agent_created_with_status_none),
		T(test_alive_agent_update_status_then_queue_in_order),
		T(test_heartbeat_unknown_agent_answered_without_status),
		T(test_heartbeat_answer_keeps_fields_and_goes_to_asking_conn),
		T(test_heartbeat_known_agent_has_status),
		T(test_heartbeat_reattaches_on_new_conn_and_flushes_queue),
		T(test_heartbeat_on_other_conn_moves_agent),
		T(test_heartbeat_updates_last_ping),
		T(test_last_mephisto_ping_tracks_request_statuses),
		T(test_last_mephisto_ping_translated_to_browser_clock),
		T(test_agent_packets_forwarded_to_backend),
		T(test_channel_closed_backend_packets_queue),
		T(test_cblu_forwarded_to_attached_agent),
		T(test_cblu_queued_for_detached_agent),
		T(test_cblu_creates_unknown_agent),
		T(test_update_status_sets_status_and_forwards),
		T(test_update_status_without_status_keeps_status),
		T(test_update_status_for_unknown_agent_creates_and_queues),
		T(test_backend_types_from_agent_conn_refused),
		T(test_backend_types_refused_without_any_channel),
		T(test_agent_types_from_channel_refused),
		T(test_heartbeat_from_channel_refused),
		T(test_unknown_and_router_made_types_refused),
		T(test_missing_subject_refused),
		T(test_request_statuses_returns_every_status),
		T(test_request_statuses_without_agents_sends_empty_data),
		T(test_request_statuses_applies_liveness_first),
		T(test_request_statuses_escapes_and_follows_changes),
		T(test_liveness_walk_in_batches_reaches_every_agent),
		T(test_http_wait_details_answered_by_agent_details),
		T(test_http_answers_go_to_the_right_request),
		T(test_http_unknown_request_id_dropped),
		T(test_http_without_wait_answered_once_written),
		T(test_http_request_queued_without_channel),
		T(test_http_request_times_out_408),
		T(test_http_forget_agent),
		T(test_close_then_grace_then_disconnect),
		T(test_grace_reattach_by_alive_keeps_status),
		T(test_grace_reattach_by_heartbeat_keeps_status),
		T(test_grace_applies_to_non_live_status),
		T(test_final_status_not_changed_by_close),
		T(test_heartbeat_silence_disconnects_live_agent),
		T(test_heartbeat_silence_each_live_status),
		T(test_heartbeat_silence_queues_update_status_when_detached),
		T(test_no_heartbeat_never_triggers_silence_rule),
		T(test_silence_rule_only_for_live_status),
		T(test_worker_gone_detaches_its_agents_and_channel),
		T(test_worker_gone_keeps_channel_of_other_worker),
		T(test_worker_gone_drops_waiting_requests),
		T(test_worker_gone_drops_requests_before_timeout),
		T(test_worker_gone_starts_grace),
		T(test_in_flight_agent_packets_go_again_first),
		T(test_written_packets_leave_the_queue),
		T(test_unsent_detaches_without_a_loop),
		T(test_window_paces_a_queue),
		T(test_submission_answered_when_written),
		T(test_submission_answered_when_committed),
		T(test_submission_not_durable_in_time_is_503),
		T(test_submission_survives_its_worker),
		T(test_return_statuses_split_to_fit),
		T(test_in_flight_backend_packets_go_again_first),
		T(test_backend_queue_keeps_submissions),
		T(test_backend_queue_full_of_submissions_refuses),
		T(test_backend_queue_share),
		T(test_backend_queue_bytes_bound),
		T(test_stale_agents_pruned),
		T(test_action_dest_outlives_a_forgotten_agent),
		T(test_write_report_for_another_agent_ignored),
		T(test_seq_increases),
		T(test_agent_queue_bound_drops_oldest),
		T(test_backend_queue_bound_drops_oldest),
		T(test_set_config_changes_bounds),
		T(test_backend_queue_age_at_tick),
		T(test_backend_queue_age_at_flush),
		T(test_version_mismatch_once_per_version),
		T(test_version_mismatch_queued_without_channel),
		T(test_next_deadline_infinity_when_idle),
		T(test_clear_actions_empties),
		T(test_payload_bounded_by_len),
		T(test_exactly_once_in_order),
		/* Last: under ASan a failure here aborts the run. */
	};
#undef T
	return cmocka_run_group_tests_name("route", tests, NULL, NULL);
}
