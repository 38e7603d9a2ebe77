/* Unit tests of worker/ws.c, the worker's WebSockets, run in-process
 * through worker_dispatch() on a real lws context (lws_harness.h): each
 * test is a client on one end of a socketpair and the supervisor at once,
 * reading the IPC messages ws.c sends through its struct worker_env and
 * answering with ws_send(), ws_send_answer() and ws_close(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "lws_harness.h"

#include "../../core/packet.h"
#include "../../worker/wire.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOT 3
#define MAX_MESSAGE 4096 /* max_message_bytes of these tests */

static int setup(void **state)
{
	(void)state;
	harness_init(SLOT);
	harness.cfg.max_message_bytes = MAX_MESSAGE;
	return harness_start();
}

static int teardown(void **state)
{
	(void)state;
	harness_stop();
	return 0;
}


/* A client upgraded to a WebSocket, and the id ws.c gave it (WS_OPENED). */
static uint64_t open_ws(struct client **cp)
{
	struct http_response r;
	size_t opened = harness_count(IPC_WS_OPENED);
	struct client *c = *cp = client_connect(0);

	assert_non_null(c);
	assert_int_equal(ws_client_upgrade(c, &r), 0);
	http_response_free(&r);
	assert_true(harness_wait_msgs(IPC_WS_OPENED, opened + 1));
	return harness_find(IPC_WS_OPENED, opened)->ws_conn.conn;
}

static void send_text(struct client *c, const char *text)
{
	assert_int_equal(ws_client_send_frame(c, 1, 0x1, text, strlen(text)), 0);
}

/* Read the worker's next frame, which must be a close with this code. */
static void expect_close(struct client *c, int code)
{
	struct ws_frame f;

	assert_int_equal(ws_client_read_frame(c, &f), 0);
	assert_int_equal(f.opcode, 0x8);
	assert_int_equal(ws_frame_close_code(&f), code);
	ws_frame_free(&f);
}

/* WS_CLOSED recorded for conn id. */
static size_t closed_reports(uint64_t id)
{
	size_t n = 0;
	const struct ipc_message *m;

	for (size_t i = 0; (m = harness_find(IPC_WS_CLOSED, i)) != NULL; i++)
		n += m->ws_conn.conn == id;
	return n;
}

static int closed_reported(void *arg)
{
	return closed_reports(*(uint64_t *)arg) > 0;
}

/* The client hangs up; by then ws.c must have reported the connection
 * gone, once (lws calls CLOSED as soon as it closes, even when it still
 * waits for the client's close frame). */
static void hang_up_expect_closed(struct client *c, uint64_t id)
{
	assert_true(client_close(c));
	assert_true(harness_until(closed_reported, &id));
	assert_int_equal(closed_reports(id), 1);
}

/* ---- the tests ---- */

/* The upgrade is lws's, with our header; ws.c reports the connection with
 * an id and counts it. */
static void test_upgrade_reports_opened(void **state)
{
	struct client *c;
	struct http_response r;
	char value[128];

	(void)state;
	c = client_connect(0);
	assert_non_null(c);
	assert_int_equal(ws_client_upgrade(c, &r), 0);
	assert_int_equal(r.status, 101);
	/* RFC 6455 1.3's example key and answer */
	assert_int_equal(http_header(&r, "sec-websocket-accept", value, sizeof value), 0);
	assert_string_equal(value, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
	assert_int_equal(http_header(&r, "x-router-worker", value, sizeof value), 0);
	assert_int_equal(atoi(value), SLOT);
	http_response_free(&r);
	assert_true(harness_wait_msgs(IPC_WS_OPENED, 1));
	assert_int_equal(harness_count(IPC_WS_OPENED), 1);
	assert_true(harness_find(IPC_WS_OPENED, 0)->ws_conn.conn != 0);
	assert_int_equal(harness.stats.websockets, 1);
	assert_int_equal(ws_count(), 1);
	hang_up_expect_closed(c, harness_find(IPC_WS_OPENED, 0)->ws_conn.conn);
}

/* A text message becomes one WS_PACKET: routing fields, the time it came,
 * and the payload as it came with router_incoming_timestamp added. */
static void test_text_packet_forwarded(void **state)
{
	static const char text[] =
		"{\"packet_type\":\"mephisto_bound_live_update\",\"subject_id\":\"agent-7\","
		"\"data\":{\"answer\":42},\"client_timestamp\":1700000000.5}";
	struct client *c;
	const struct packet *p;
	const struct ipc_message *m;
	double before, after;
	json_t *payload;
	json_error_t error;
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	before = wire_now();
	send_text(c, text);
	assert_true(harness_wait_msgs(IPC_WS_PACKET, 1));
	after = wire_now();
	harness_settle();
	assert_int_equal(harness_count(IPC_WS_PACKET), 1);
	m = harness_find(IPC_WS_PACKET, 0);
	p = &m->ws_packet.packet;
	assert_int_equal(m->ws_packet.conn, id);
	assert_int_equal(p->type, PKT_MEPHISTO_BOUND_LIVE_UPDATE);
	assert_string_equal(p->subject_id, "agent-7");
	assert_null(p->status);
	assert_null(p->request_id);
	assert_true(p->client_timestamp == 1700000000.5);
	assert_true(isnan(p->server_timestamp));
	assert_true(p->router_incoming_timestamp >= before - 1e-6);
	assert_true(p->router_incoming_timestamp <= after + 1e-6);
	/* the text as it came, the stamp appended */
	assert_true(p->len > strlen(text));
	assert_memory_equal(p->payload, text, strlen(text) - 1);
	payload = json_loadb(p->payload, p->len, JSON_REJECT_DUPLICATES, &error);
	assert_non_null(payload);
	assert_string_equal(json_string_value(json_object_get(payload, "subject_id")), "agent-7");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(payload, "data"),
							     "answer")), 42);
	assert_true(fabs(json_number_value(json_object_get(payload, "router_incoming_timestamp")) -
			 p->router_incoming_timestamp) < 1e-5);
	json_decref(payload);
	assert_int_equal(harness.stats.packets_in, 1);
	hang_up_expect_closed(c, id);
}

/* The fields routing needs of the types that have them. */
static void test_packet_fields_by_type(void **state)
{
	struct client *c;
	const struct packet *p;
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	send_text(c, "{\"packet_type\":\"update_status\",\"subject_id\":\"a1\","
		      "\"data\":{\"status\":\"in task\"}}");
	send_text(c, "{\"packet_type\":\"agent_details\",\"subject_id\":\"mephisto\","
		      "\"data\":{\"request_id\":\"r-1\",\"agent_id\":\"5\"}}");
	send_text(c, "{\"packet_type\":\"heartbeat\",\"subject_id\":\"a1\","
		      "\"data\":{\"dropped\":1}}");
	assert_true(harness_wait_msgs(IPC_WS_PACKET, 3));
	p = &harness_find(IPC_WS_PACKET, 0)->ws_packet.packet;
	assert_int_equal(p->type, PKT_UPDATE_STATUS);
	assert_string_equal(p->status, "in task");
	p = &harness_find(IPC_WS_PACKET, 1)->ws_packet.packet;
	assert_int_equal(p->type, PKT_AGENT_DETAILS);
	assert_string_equal(p->request_id, "r-1");
	assert_string_equal(p->subject_id, "mephisto");
	p = &harness_find(IPC_WS_PACKET, 2)->ws_packet.packet;
	assert_int_equal(p->type, PKT_HEARTBEAT);
	/* a heartbeat's data is the router's to give: not forwarded */
	assert_null(strstr(p->payload, "dropped"));
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(harness_find(IPC_WS_PACKET, i)->ws_packet.conn, id);
	hang_up_expect_closed(c, id);
}

/* A message in fragments, and one larger than lws's receive buffer (it
 * hands it over in pieces), each become one packet, whole. */
static void test_pieces_joined(void **state)
{
	static const char *const parts[] = {
		"{\"packet_type\":\"mephisto_bound_live_update\",",
		"\"subject_id\":\"agent-8\",\"data\":",
		"{\"n\":1}}",
	};
	char big[3001];
	struct client *c;
	const struct packet *p;
	uint64_t id;
	int n;

	(void)state;
	id = open_ws(&c);
	assert_int_equal(ws_client_send_frame(c, 0, 0x1, parts[0], strlen(parts[0])), 0);
	assert_int_equal(ws_client_send_frame(c, 0, 0x0, parts[1], strlen(parts[1])), 0);
	harness_settle();
	assert_int_equal(harness_count(IPC_WS_PACKET), 0); /* not whole yet */
	assert_int_equal(ws_client_send_frame(c, 1, 0x0, parts[2], strlen(parts[2])), 0);
	assert_true(harness_wait_msgs(IPC_WS_PACKET, 1));
	p = &harness_find(IPC_WS_PACKET, 0)->ws_packet.packet;
	assert_string_equal(p->subject_id, "agent-8");
	assert_non_null(strstr(p->payload, "{\"n\":1}"));

	n = snprintf(big, sizeof big, "{\"packet_type\":\"mephisto_bound_live_update\","
		     "\"subject_id\":\"agent-9\",\"data\":{\"pad\":\"");
	memset(big + n, 'x', sizeof big - (size_t)n - 4);
	memcpy(big + sizeof big - 4, "\"}}", 4);
	assert_int_equal(strlen(big), 3000);
	send_text(c, big);
	assert_true(harness_wait_msgs(IPC_WS_PACKET, 2));
	p = &harness_find(IPC_WS_PACKET, 1)->ws_packet.packet;
	assert_string_equal(p->subject_id, "agent-9");
	assert_memory_equal(p->payload, big, sizeof big - 2); /* up to the last '}' */
	harness_settle();
	assert_int_equal(harness_count(IPC_WS_PACKET), 2);
	hang_up_expect_closed(c, id);
}

/* An invalid packet is dropped and counted; the connection stays open. */
static void test_invalid_packet_dropped(void **state)
{
	struct client *c;
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	send_text(c, "this is not JSON");
	send_text(c, "{\"packet_type\":\"no_such_type\",\"subject_id\":\"a\"}");
	harness_settle();
	assert_int_equal(harness_count(IPC_WS_PACKET), 0);
	assert_int_equal(harness.stats.invalid_packets, 2);
	assert_int_equal(harness_count(IPC_WS_CLOSED), 0);
	send_text(c, "{\"packet_type\":\"alive\",\"subject_id\":\"agent-1\"}");
	assert_true(harness_wait_msgs(IPC_WS_PACKET, 1));
	assert_int_equal(harness_find(IPC_WS_PACKET, 0)->ws_packet.packet.type, PKT_ALIVE);
	assert_int_equal(harness.stats.packets_in, 1);
	hang_up_expect_closed(c, id);
}

/* Only text: a binary frame closes the connection with 1003. */
static void test_binary_closes_1003(void **state)
{
	static const char bytes[] = { 1, 2, 3, 0, 4 };
	struct client *c;
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	assert_int_equal(ws_client_send_frame(c, 1, 0x2, bytes, sizeof bytes), 0);
	expect_close(c, 1003);
	assert_int_equal(harness_count(IPC_WS_PACKET), 0);
	hang_up_expect_closed(c, id);
	assert_int_equal(harness.stats.websockets, 0);
	assert_int_equal(ws_count(), 0);
}

/* max_message_bytes: a message of exactly that size is taken, one byte
 * more closes the connection with 1009 (in pieces too: lws hands over
 * 1 KiB at a time). */
static void test_too_large_closes_1009(void **state)
{
	char msg[MAX_MESSAGE + 2];
	struct client *c;
	uint64_t id;
	int n;

	(void)state;
	id = open_ws(&c);
	n = snprintf(msg, sizeof msg, "{\"packet_type\":\"mephisto_bound_live_update\","
		     "\"subject_id\":\"a\",\"data\":{\"pad\":\"");
	memset(msg + n, 'x', MAX_MESSAGE - (size_t)n - 3);
	memcpy(msg + MAX_MESSAGE - 3, "\"}}", 4);
	assert_int_equal(strlen(msg), MAX_MESSAGE);
	send_text(c, msg);
	assert_true(harness_wait_msgs(IPC_WS_PACKET, 1));
	assert_int_equal(harness_find(IPC_WS_PACKET, 0)->ws_packet.packet.len > MAX_MESSAGE, 1);

	memmove(msg + 1, msg, MAX_MESSAGE + 1);
	msg[0] = ' '; /* the same JSON, one byte longer */
	send_text(c, msg);
	expect_close(c, 1009);
	harness_settle();
	assert_int_equal(harness_count(IPC_WS_PACKET), 1);
	hang_up_expect_closed(c, id);
}

/* The supervisor's packets are written in the order sent, each stamped
 * with router_outgoing_timestamp, and the write is reported (WS_SENT)
 * with the last seq written. */
static void test_send_in_order_reports_sent(void **state)
{
	struct client *c;
	const struct ipc_message *m;
	char text[128];
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	for (int seq = 1; seq <= 3; seq++) {
		int n = snprintf(text, sizeof text, "{\"packet_type\":\"client_bound_live_update\","
				 "\"subject_id\":\"a\",\"data\":{\"n\":%d}}", seq);
		ws_send(id, (uint64_t)seq, text, (size_t)n);
	}
	for (int seq = 1; seq <= 3; seq++) {
		struct ws_frame f;
		json_error_t error;
		json_t *p;

		assert_int_equal(ws_client_read_frame(c, &f), 0);
		assert_int_equal(f.opcode, 0x1);
		assert_true(f.fin);
		p = json_loadb(f.payload, f.len, JSON_REJECT_DUPLICATES, &error);
		assert_non_null(p);
		assert_int_equal(json_integer_value(json_object_get(json_object_get(p, "data"), "n")),
				 seq);
		assert_true(json_is_number(json_object_get(p, "router_outgoing_timestamp")));
		assert_true(fabs(json_number_value(json_object_get(p, "router_outgoing_timestamp")) -
				 wire_now()) < 60);
		json_decref(p);
		ws_frame_free(&f);
	}
	assert_true(harness_wait_msgs(IPC_WS_SENT, 1));
	harness_settle();
	/* reports only grow, and end at the last seq */
	for (size_t i = 1; i < harness_count(IPC_WS_SENT); i++)
		assert_true(harness_find(IPC_WS_SENT, i)->ws_written.seq >
			    harness_find(IPC_WS_SENT, i - 1)->ws_written.seq);
	m = harness_last(IPC_WS_SENT);
	assert_int_equal(m->ws_written.conn, id);
	assert_int_equal(m->ws_written.seq, 3);
	assert_int_equal(harness.stats.packets_out, 3);
	assert_int_equal(harness_count(IPC_WS_UNSENT), 0);
	hang_up_expect_closed(c, id);
}

/* A heartbeat's answer: written, nobody waits for it (no WS_SENT), and
 * the time from the heartbeat's arrival to its write is counted. */
static void test_heartbeat_answer_counted(void **state)
{
	static const char answer[] = "{\"packet_type\":\"heartbeat\",\"subject_id\":\"a\","
				     "\"data\":{\"last_mephisto_heartbeat\":1}}";
	struct client *c;
	struct ws_frame f;
	uint64_t total = 0, fast = 0;
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	ws_send_answer(id, wire_now() - 0.02, answer, strlen(answer));
	assert_int_equal(ws_client_read_frame(c, &f), 0);
	assert_int_equal(f.opcode, 0x1);
	assert_memory_equal(f.payload, answer, strlen(answer) - 1);
	assert_non_null(strstr(f.payload, "router_outgoing_timestamp"));
	ws_frame_free(&f);
	harness_settle();
	for (int b = 0; b <= IPC_LATENCY_BUCKETS; b++)
		total += harness.stats.heartbeat[b];
	for (int b = 0; b < 4; b++) /* up to 10 ms */
		fast += harness.stats.heartbeat[b];
	assert_int_equal(total, 1);
	assert_int_equal(fast, 0);
	assert_true(harness.stats.heartbeat_sum >= 0.02);
	assert_int_equal(harness_count(IPC_WS_SENT), 0);
	assert_int_equal(harness.stats.packets_out, 1);
	hang_up_expect_closed(c, id);
}

/* A send the connection cannot take is refused with WS_UNSENT: an id
 * never given, a connection gone (its id never reaches the next one), one
 * closing; an answer (seq 0) is dropped without a word. */
static void test_refused_sends_unsent(void **state)
{
	static const char text[] = "{\"packet_type\":\"client_bound_live_update\","
				   "\"subject_id\":\"a\",\"data\":{}}";
	struct client *c, *d;
	const struct ipc_message *m;
	uint64_t old, id;

	(void)state;
	ws_send(0xdead00000007ull, 11, text, strlen(text));
	assert_int_equal(harness_count(IPC_WS_UNSENT), 1);
	m = harness_last(IPC_WS_UNSENT);
	assert_int_equal(m->ws_written.conn, 0xdead00000007ull);
	assert_int_equal(m->ws_written.seq, 11);

	old = open_ws(&c);
	hang_up_expect_closed(c, old);
	id = open_ws(&d); /* may reuse the slot, not the id */
	assert_true(id != old);
	ws_send(old, 12, text, strlen(text));
	assert_int_equal(harness_count(IPC_WS_UNSENT), 2);
	assert_int_equal(harness_last(IPC_WS_UNSENT)->ws_written.conn, old);
	assert_int_equal(harness_last(IPC_WS_UNSENT)->ws_written.seq, 12);
	ws_send_answer(old, wire_now(), text, strlen(text));
	assert_int_equal(harness_count(IPC_WS_UNSENT), 2);

	ws_close(id, 1008); /* closing: takes nothing more */
	ws_send(id, 13, text, strlen(text));
	assert_int_equal(harness_count(IPC_WS_UNSENT), 3);
	assert_int_equal(harness_last(IPC_WS_UNSENT)->ws_written.seq, 13);
	expect_close(d, 1008); /* nothing was written before the close */
	assert_int_equal(harness.stats.packets_out, 0);
	hang_up_expect_closed(d, id);
}

/* ws_close(): 1001 (draining) writes the queue first, then closes; the
 * connection's end is reported (WS_CLOSED) and uncounted. */
static void test_close_reports_closed(void **state)
{
	static const char text[] = "{\"packet_type\":\"client_bound_live_update\","
				   "\"subject_id\":\"a\",\"data\":{\"last\":true}}";
	struct client *c;
	struct ws_frame f;
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	assert_int_equal(harness.stats.websockets, 1);
	ws_send(id, 1, text, strlen(text));
	ws_close(id, 1001);
	assert_int_equal(ws_client_read_frame(c, &f), 0);
	assert_int_equal(f.opcode, 0x1);
	assert_non_null(strstr(f.payload, "\"last\":true"));
	ws_frame_free(&f);
	expect_close(c, 1001);
	assert_int_equal(harness_last(IPC_WS_SENT)->ws_written.seq, 1);
	hang_up_expect_closed(c, id);
	assert_int_equal(harness_count(IPC_WS_CLOSED), 1);
	assert_int_equal(harness.stats.websockets, 0);
	assert_int_equal(ws_count(), 0);
}

/* alive as "mephisto" from an address not in backend_allow (a Unix socket
 * has none): refused with 1008, counted, not forwarded. */
static void test_backend_alive_refused(void **state)
{
	struct client *c;
	uint64_t id;

	(void)state;
	id = open_ws(&c);
	send_text(c, "{\"packet_type\":\"alive\",\"subject_id\":\"mephisto\"}");
	expect_close(c, 1008);
	assert_int_equal(harness.stats.backend_refused, 1);
	assert_int_equal(harness_count(IPC_WS_PACKET), 0);
	hang_up_expect_closed(c, id);
}

/* A connection opened while the worker is paused (IPC backpressure) reads
 * nothing until ws_pause_all(0). */
static void test_paused_reads_nothing(void **state)
{
	struct client *c;
	uint64_t id;

	(void)state;
	harness.paused = 1;
	id = open_ws(&c);
	send_text(c, "{\"packet_type\":\"alive\",\"subject_id\":\"agent-2\"}");
	harness_settle();
	assert_int_equal(harness_count(IPC_WS_PACKET), 0);
	harness.paused = 0;
	ws_pause_all(0);
	assert_true(harness_wait_msgs(IPC_WS_PACKET, 1));
	assert_string_equal(harness_find(IPC_WS_PACKET, 0)->ws_packet.packet.subject_id,
			    "agent-2");
	hang_up_expect_closed(c, id);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_upgrade_reports_opened, setup, teardown),
		cmocka_unit_test_setup_teardown(test_text_packet_forwarded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_packet_fields_by_type, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pieces_joined, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalid_packet_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_binary_closes_1003, setup, teardown),
		cmocka_unit_test_setup_teardown(test_too_large_closes_1009, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_in_order_reports_sent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_heartbeat_answer_counted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refused_sends_unsent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_reports_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backend_alive_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_paused_reads_nothing, setup, teardown),
	};
	return cmocka_run_group_tests_name("ws", tests, NULL, NULL);
}
