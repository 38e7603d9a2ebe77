/* Unit tests of worker/http.c and the HTTP files with it (endpoints.c,
 * static.c, upload.c), run in-process through worker_dispatch() on a real
 * lws context (lws_harness.h): each test is an HTTP client on one end of a
 * socketpair and the supervisor at once, reading the IPC messages http.c
 * sends through its struct worker_env and answering with
 * http_answer_from_supervisor(), http_metrics_text() and
 * http_download_info(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "lws_harness.h"

#include "../../worker/wire.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOT 5

static int setup(void **state)
{
	(void)state;
	harness_init(SLOT);
	return harness_start();
}

static int teardown(void **state)
{
	(void)state;
	harness_stop();
	return 0;
}


/* Bytes the client got that no test read, after a while. */
static size_t unheard(struct client *c)
{
	harness_settle();
	client_take(c);
	return c->in_len;
}

/* Send a request (text, as it goes on the wire) and read the answer. */
static void request(struct client *c, const char *text, struct http_response *r)
{
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_int_equal(http_read_response(c, r), 0);
}

/* A POST of a JSON body, as text into out. */
static void post_json(char *out, size_t len, const char *path, const char *body)
{
	snprintf(out, len, "POST %s HTTP/1.1\r\nHost: localhost\r\n"
		 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
		 path, strlen(body), body);
}

static void expect_header(const struct http_response *r, const char *name,
			  const char *value)
{
	char got[256];

	if (http_header(r, name, got, sizeof got) < 0)
		fail_msg("no %s header in:\n%s", name, r->head);
	assert_string_equal(got, value);
}

/* Requests counted in an endpoint's histogram. */
static uint64_t counted(int endpoint)
{
	uint64_t n = 0;

	for (int b = 0; b <= IPC_LATENCY_BUCKETS; b++)
		n += harness.stats.latency[endpoint][b];
	return n;
}

static uint64_t counted_all(void)
{
	uint64_t n = 0;

	for (int e = 0; e < IPC_ENDPOINTS; e++)
		n += counted(e);
	return n;
}

/* The error message of a {"error": ...} answer (a static buffer). */
static const char *error_of(const struct http_response *r)
{
	static char text[512];
	json_error_t error;
	json_t *body = json_loadb(r->body, r->body_len, 0, &error);

	assert_non_null(body);
	assert_true(json_is_string(json_object_get(body, "error")));
	snprintf(text, sizeof text, "%s", json_string_value(json_object_get(body, "error")));
	json_decref(body);
	return text;
}

/* ---- the tests ---- */

/* GET /is_alive: 200 with our headers (X-Router-Worker is env.slot),
 * counted once in its histogram; the connection stays for the next. */
static void test_is_alive(void **state)
{
	static const char get[] = "GET /is_alive HTTP/1.1\r\nHost: localhost\r\n\r\n";
	struct client *c = client_connect(0);
	struct http_response r;

	(void)state;
	assert_non_null(c);
	request(c, get, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "{\"status\": \"Alive!\"}");
	expect_header(&r, "x-router-worker", "5");
	expect_header(&r, "cache-control", "no-cache");
	expect_header(&r, "content-type", "application/json");
	http_response_free(&r);
	assert_int_equal(harness.stats.http_requests, 1);
	assert_int_equal(harness.stats.http_errors, 0);
	assert_int_equal(counted(IPC_EP_IS_ALIVE), 1);
	assert_int_equal(counted_all(), 1);
	assert_true(harness.stats.latency_sum[IPC_EP_IS_ALIVE] >= 0);

	request(c, get, &r); /* keep-alive */
	assert_int_equal(r.status, 200);
	http_response_free(&r);
	assert_int_equal(counted(IPC_EP_IS_ALIVE), 2);
	assert_int_equal(harness_msg_count(), 0); /* nothing for the supervisor */
	assert_true(client_close(c));
}

/* Any other GET is a file of static_dir: one that is not there is a 404
 * with our headers, one that is is served. */
static void test_unknown_path_404(void **state)
{
	struct client *c = client_connect(0);
	struct http_response r;

	(void)state;
	assert_non_null(c);
	harness_static_file("hello.txt", "hello\n");
	request(c, "GET /no/such/file.txt HTTP/1.1\r\nHost: localhost\r\n\r\n", &r);
	assert_int_equal(r.status, 404);
	assert_string_equal(error_of(&r), "not found");
	expect_header(&r, "x-router-worker", "5");
	http_response_free(&r);
	/* lws folds the dots; the path stays under static_dir */
	request(c, "GET /../../etc/hostname HTTP/1.1\r\nHost: localhost\r\n\r\n", &r);
	assert_int_equal(r.status, 404);
	http_response_free(&r);
	request(c, "GET /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "hello\n");
	expect_header(&r, "x-router-worker", "5");
	http_response_free(&r);
	harness_settle();
	assert_int_equal(harness.stats.http_requests, 3);
	assert_int_equal(harness.stats.http_errors, 2);
	assert_int_equal(counted(IPC_EP_STATIC), 3);
	assert_true(client_close(c));
}

/* Static files get the MIME types lws lacks from static.c's table, and any
 * other extension application/octet-stream (lws itself would answer 415). */
static void test_static_mime_types(void **state)
{
	static const char *const files[][2] = {
		{ "a.mjs", "text/javascript" }, { "a.wasm", "application/wasm" },
		{ "a.map", "application/json" }, { "a.wav", "audio/wav" },
		{ "a.csv", "text/csv" }, { "a.html", "text/html" },
		{ "a.no-such-type", "application/octet-stream" },
	};
	struct client *c = client_connect(0);
	struct http_response r;
	char line[128];

	(void)state;
	assert_non_null(c);
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		harness_static_file(files[i][0], "x");
		snprintf(line, sizeof line, "GET /%s HTTP/1.1\r\nHost: localhost\r\n\r\n",
			 files[i][0]);
		request(c, line, &r);
		assert_int_equal(r.status, 200);
		expect_header(&r, "content-type", files[i][1]);
		http_response_free(&r);
	}
	assert_true(client_close(c));
}

/* POST /submit_task: one HTTP_REQUEST (a precious submission that forgets
 * the agent) carrying the packet for the backend; the client hears only
 * once the supervisor answers, then the endpoint's own body. */
static void test_submit_task(void **state)
{
	static const char body[] = "{\"USED_AGENT_ID\": \"agent-9\", "
				   "\"final_data\": {\"answer\": \"yes\"}, \"client_timestamp\": 123}";
	char text[1024];
	struct client *c = client_connect(0);
	struct http_response r;
	const struct ipc_message *m;
	json_error_t error;
	json_t *packet;
	double before = wire_now(), after;

	(void)state;
	assert_non_null(c);
	post_json(text, sizeof text, "/submit_task", body);
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 1));
	after = wire_now();
	harness_settle();
	assert_int_equal(harness_msg_count(), 1);
	m = harness_find(IPC_HTTP_REQUEST, 0);
	assert_true(m->http_request.req != 0);
	assert_int_equal(m->http_request.flags, IPC_HTTP_PRECIOUS | IPC_HTTP_FORGET_AGENT);
	assert_string_equal(m->http_request.agent_id, "agent-9");
	assert_null(m->http_request.request_id);
	packet = json_loadb(m->http_request.packet, m->http_request.len, JSON_REJECT_DUPLICATES,
			    &error);
	assert_non_null(packet);
	assert_string_equal(json_string_value(json_object_get(packet, "packet_type")),
			    "submit_unit");
	assert_string_equal(json_string_value(json_object_get(packet, "subject_id")), "agent-9");
	assert_string_equal(json_string_value(json_object_get(json_object_get(packet, "data"),
							       "answer")), "yes");
	assert_true(json_number_value(json_object_get(packet, "client_timestamp")) == 123);
	assert_true(json_number_value(json_object_get(packet, "router_incoming_timestamp")) >=
		    before - 1e-3);
	assert_true(json_number_value(json_object_get(packet, "router_incoming_timestamp")) <=
		    after + 1e-3);
	json_decref(packet);
	assert_int_equal(unheard(c), 0); /* no answer before the supervisor's */
	assert_int_equal(harness.stats.http_requests, 0);

	http_answer_from_supervisor(m->http_request.req, 200, NULL, 0);
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "{\"status\": \"Submitted!\"}");
	expect_header(&r, "x-router-worker", "5");
	http_response_free(&r);
	assert_int_equal(harness.stats.http_requests, 1);

	/* the supervisor's own status and body, on the same connection */
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 2));
	m = harness_find(IPC_HTTP_REQUEST, 1);
	http_answer_from_supervisor(m->http_request.req, 408, "{\"error\": \"timed out\"}", 22);
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 408);
	assert_string_equal(r.body, "{\"error\": \"timed out\"}");
	http_response_free(&r);
	assert_int_equal(harness.stats.http_requests, 2);
	assert_int_equal(harness.stats.http_errors, 1);
	assert_int_equal(counted(IPC_EP_SUBMIT_TASK), 2);
	assert_true(client_close(c));
}

/* POST /request_agent waits for the agent_details: a request id for it,
 * no agent; the answer is the supervisor's body. */
static void test_request_agent(void **state)
{
	static const char details[] = "{\"agent_id\": \"7\", \"request_id\": \"r\"}";
	char text[1024];
	struct client *c = client_connect(0);
	struct http_response r;
	const struct ipc_message *m;
	json_error_t error;
	json_t *packet;

	(void)state;
	assert_non_null(c);
	post_json(text, sizeof text, "/request_agent",
		  "{\"provider_data\": {\"worker_name\": \"w1\"}}");
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 1));
	m = harness_find(IPC_HTTP_REQUEST, 0);
	assert_int_equal(m->http_request.flags, IPC_HTTP_WAIT_DETAILS);
	assert_null(m->http_request.agent_id);
	assert_non_null(m->http_request.request_id);
	assert_int_equal(strlen(m->http_request.request_id), 36);
	packet = json_loadb(m->http_request.packet, m->http_request.len, 0, &error);
	assert_non_null(packet);
	assert_string_equal(json_string_value(json_object_get(packet, "packet_type")),
			    "register_agent");
	assert_string_equal(json_string_value(json_object_get(packet, "subject_id")),
			    m->http_request.request_id);
	assert_string_equal(json_string_value(json_object_get(json_object_get(
				    json_object_get(packet, "data"), "provider_data"), "worker_name")),
			    "w1");
	json_decref(packet);
	http_answer_from_supervisor(m->http_request.req, 200, details, strlen(details));
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, details);
	http_response_free(&r);
	assert_true(client_close(c));
}

/* max_body_bytes: a body of that size is taken, a larger one is refused
 * with 413 before it is read, and the connection closed. */
static void test_body_over_max_413(void **state)
{
	char body[2049], text[4096];
	struct client *c = client_connect(0);
	struct http_response r;
	int n;

	(void)state;
	assert_non_null(c);
	harness.cfg.max_body_bytes = 2048; /* read per request */
	n = snprintf(body, sizeof body, "{\"USED_AGENT_ID\": \"a\", \"final_data\": {\"pad\": \"");
	memset(body + n, 'x', sizeof body - (size_t)n - 4);
	memcpy(body + sizeof body - 4, "\"}}", 4);
	assert_int_equal(strlen(body), 2048);
	post_json(text, sizeof text, "/submit_task", body);
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 1));
	http_answer_from_supervisor(harness_find(IPC_HTTP_REQUEST, 0)->http_request.req, 200,
				    NULL, 0);
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 200);
	http_response_free(&r);

	/* one byte more: only the head is sent, the answer comes at once */
	request(c, "POST /submit_task HTTP/1.1\r\nHost: localhost\r\n"
		   "Content-Type: application/json\r\nContent-Length: 2049\r\n\r\n", &r);
	assert_int_equal(r.status, 413);
	assert_non_null(strstr(error_of(&r), "max_body_bytes"));
	expect_header(&r, "x-router-worker", "5");
	expect_header(&r, "connection", "close");
	http_response_free(&r);
	assert_true(client_wait_eof(c));
	harness_settle();
	assert_int_equal(harness_count(IPC_HTTP_REQUEST), 1);
	assert_int_equal(harness.stats.http_errors, 1);
	assert_true(client_close(c));
}

/* Bodies that never reach the supervisor: no JSON, no agent, no
 * Content-Length (lws cannot read chunked ones), both lengths. */
static void test_bad_posts_refused(void **state)
{
	static const struct {
		const char *path, *body;
		int status;
	} posts[] = {
		{ "/submit_task", "this is not JSON", 400 },
		{ "/submit_task", "[1, 2]", 400 },
		{ "/submit_task", "{\"final_data\": {}}", 400 },
		{ "/submit_task", "{\"USED_AGENT_ID\": \"a\", \"final_data\": 3}", 400 },
		{ "/no_such_endpoint", "{}", 404 },
	};
	char text[1024];
	struct http_response r;

	(void)state;
	for (size_t i = 0; i < sizeof posts / sizeof posts[0]; i++) {
		struct client *c = client_connect(0);

		assert_non_null(c);
		post_json(text, sizeof text, posts[i].path, posts[i].body);
		request(c, text, &r);
		if (r.status != posts[i].status)
			fail_msg("%s %s: %d", posts[i].path, posts[i].body, r.status);
		http_response_free(&r);
		assert_true(client_close(c));
	}
	{
		struct client *c = client_connect(0);

		assert_non_null(c);
		request(c, "POST /submit_task HTTP/1.1\r\nHost: localhost\r\n"
			   "Transfer-Encoding: chunked\r\n\r\n", &r);
		assert_int_equal(r.status, 411);
		http_response_free(&r);
		assert_true(client_close(c));
	}
	{
		struct client *c = client_connect(0);

		assert_non_null(c);
		request(c, "POST /submit_task HTTP/1.1\r\nHost: localhost\r\n"
			   "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", &r);
		assert_int_equal(r.status, 400);
		http_response_free(&r);
		assert_true(client_close(c));
	}
	harness_settle();
	assert_int_equal(harness_msg_count(), 0);
	assert_int_equal(harness.stats.http_errors, 7);
}

/* /metrics is served on metrics_listen's connections only, and there only
 * it: the supervisor has the text (METRICS_REQUEST, http_metrics_text()). */
static void test_metrics_only_on_metrics_connection(void **state)
{
	static const char get[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
	static const char text[] = "mr_http_requests_total 1\n";
	struct client *c = client_connect(0), *mc = client_connect(1);
	struct http_response r;
	const struct ipc_message *m;

	(void)state;
	assert_non_null(c);
	assert_non_null(mc);
	request(c, get, &r);
	assert_int_equal(r.status, 404);
	http_response_free(&r);
	harness_settle();
	assert_int_equal(harness_count(IPC_METRICS_REQUEST), 0);

	assert_int_equal(client_send(mc, get, strlen(get)), 0);
	assert_true(harness_wait_msgs(IPC_METRICS_REQUEST, 1));
	m = harness_find(IPC_METRICS_REQUEST, 0);
	assert_true(m->metrics_request.req != 0);
	http_metrics_text(m->metrics_request.req, text, strlen(text));
	assert_int_equal(http_read_response(mc, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, text);
	assert_non_null(strstr(r.head, "text/plain"));
	http_response_free(&r);

	request(mc, "GET /is_alive HTTP/1.1\r\nHost: localhost\r\n\r\n", &r);
	assert_int_equal(r.status, 404);
	assert_string_equal(error_of(&r), "only /metrics is served here");
	http_response_free(&r);
	assert_int_equal(harness_count(IPC_METRICS_REQUEST), 1);
	assert_int_equal(counted_all(), 3); /* every answer, once */
	assert_true(client_close(c));
	assert_true(client_close(mc));
}

/* A request's time runs from its head to its answer, the supervisor's
 * wait included, into its endpoint's histogram, once. */
static void test_request_time_counted(void **state)
{
	char text[1024];
	struct client *c = client_connect(0);
	struct http_response r;
	uint64_t fast = 0;

	(void)state;
	assert_non_null(c);
	post_json(text, sizeof text, "/submit_task",
		  "{\"USED_AGENT_ID\": \"a\", \"final_data\": {}}");
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 1));
	assert_int_equal(counted_all(), 0); /* not answered yet */
	usleep(15000);
	http_answer_from_supervisor(harness_find(IPC_HTTP_REQUEST, 0)->http_request.req, 200,
				    NULL, 0);
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 200);
	http_response_free(&r);
	harness_settle();
	assert_int_equal(counted(IPC_EP_SUBMIT_TASK), 1);
	assert_int_equal(counted_all(), 1);
	for (int b = 0; b < 4; b++) /* up to 10 ms */
		fast += harness.stats.latency[IPC_EP_SUBMIT_TASK][b];
	assert_int_equal(fast, 0);
	assert_true(harness.stats.latency_sum[IPC_EP_SUBMIT_TASK] >= 0.015);
	assert_true(client_close(c));
}

/* An answer for a client that is gone, or a second answer, is dropped. */
static void test_late_answer_dropped(void **state)
{
	char text[1024];
	struct client *c = client_connect(0), *d;
	struct http_response r;
	uint64_t req;

	(void)state;
	assert_non_null(c);
	post_json(text, sizeof text, "/log_error", "{\"USED_AGENT_ID\": \"a\", \"error_data\": {}}");
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 1));
	req = harness_find(IPC_HTTP_REQUEST, 0)->http_request.req;
	assert_true(client_close(c));
	http_answer_from_supervisor(req, 200, NULL, 0); /* nobody to hear it */
	assert_int_equal(harness.stats.http_requests, 0);

	d = client_connect(0);
	assert_non_null(d);
	assert_int_equal(client_send(d, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 2));
	http_answer_from_supervisor(req, 500, NULL, 0); /* the old id: not this one */
	assert_int_equal(unheard(d), 0);
	req = harness_find(IPC_HTTP_REQUEST, 1)->http_request.req;
	http_answer_from_supervisor(req, 200, NULL, 0);
	http_answer_from_supervisor(req, 500, NULL, 0); /* twice: dropped */
	assert_int_equal(http_read_response(d, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "{\"status\": \"Error log sent!\"}");
	http_response_free(&r);
	assert_int_equal(unheard(d), 0);
	assert_int_equal(harness.stats.http_requests, 1);
	assert_true(client_close(d));
}

/* A multipart submission: the file is stored in upload_dir and recorded
 * (UPLOAD_STORED) before the packet that names it (HTTP_REQUEST). */
static void test_upload_recorded_before_packet(void **state)
{
	static const char body[] =
		"--XyZ\r\n"
		"Content-Disposition: form-data; name=\"USED_AGENT_ID\"\r\n\r\n"
		"agent-4\r\n"
		"--XyZ\r\n"
		"Content-Disposition: form-data; name=\"final_string_data\"\r\n\r\n"
		"{\"q\": 1}\r\n"
		"--XyZ\r\n"
		"Content-Disposition: form-data; name=\"photo\"; filename=\"cat.txt\"\r\n"
		"Content-Type: text/plain\r\n\r\n"
		"meow meow\r\n"
		"--XyZ--\r\n";
	char text[2048], path[512];
	struct client *c = client_connect(0);
	const struct ipc_message *stored, *m;
	struct http_response r;
	struct stat st;

	(void)state;
	assert_non_null(c);
	snprintf(text, sizeof text, "POST /submit_task HTTP/1.1\r\nHost: localhost\r\n"
		 "Content-Type: multipart/form-data; boundary=XyZ\r\n"
		 "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_HTTP_REQUEST, 1));
	assert_int_equal(harness_msg_count(), 2);
	stored = harness_msg(0);
	m = harness_msg(1);
	assert_int_equal(stored->type, IPC_UPLOAD_STORED);
	assert_int_equal(m->type, IPC_HTTP_REQUEST);
	assert_string_equal(stored->upload_stored.original, "cat.txt");
	assert_string_equal(stored->upload_stored.field, "photo");
	assert_string_equal(stored->upload_stored.agent_id, "agent-4");
	assert_int_equal(stored->upload_stored.size, 9);
	snprintf(path, sizeof path, "%s/%s", harness.upload_dir, stored->upload_stored.stored);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 9);
	assert_int_equal((uint64_t)st.st_ino, stored->upload_stored.ino);
	assert_non_null(strstr(m->http_request.packet, stored->upload_stored.stored));
	http_answer_from_supervisor(m->http_request.req, 200, NULL, 0);
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 200);
	http_response_free(&r);
	assert_true(client_close(c));
	assert_int_equal(stat(path, &st), 0); /* the backend's now: kept */
}

/* A download is served only when the supervisor recorded it
 * (DOWNLOAD_CHECK, http_download_info()), and only as the very file. */
static void test_download_checked(void **state)
{
	static const char name[] = "mr-0123456789abcdef0123456789abcdef";
	char text[256], path[512];
	struct client *c = client_connect(0);
	struct http_response r;
	const struct ipc_message *m;
	struct stat st;
	FILE *f;

	(void)state;
	assert_non_null(c);
	snprintf(path, sizeof path, "%s/%s", harness.upload_dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("file body", f);
	fclose(f);
	assert_int_equal(stat(path, &st), 0);
	snprintf(text, sizeof text, "GET /download_file/%s HTTP/1.1\r\nHost: localhost\r\n\r\n",
		 name);

	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_DOWNLOAD_CHECK, 1));
	m = harness_find(IPC_DOWNLOAD_CHECK, 0);
	assert_string_equal(m->download_check.stored, name);
	http_download_info(m->download_check.req, 0, 0, 0); /* not recorded */
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 404);
	http_response_free(&r);

	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_DOWNLOAD_CHECK, 2));
	m = harness_find(IPC_DOWNLOAD_CHECK, 1);
	http_download_info(m->download_check.req, 1, st.st_dev, st.st_ino + 1); /* another */
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 404);
	http_response_free(&r);

	assert_int_equal(client_send(c, text, strlen(text)), 0);
	assert_true(harness_wait_msgs(IPC_DOWNLOAD_CHECK, 3));
	m = harness_find(IPC_DOWNLOAD_CHECK, 2);
	http_download_info(m->download_check.req, 1, st.st_dev, st.st_ino);
	assert_int_equal(http_read_response(c, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "file body");
	expect_header(&r, "content-type", "application/octet-stream");
	http_response_free(&r);
	assert_int_equal(counted(IPC_EP_DOWNLOAD), 3);

	request(c, "GET /download_file/../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n",
		&r);
	assert_int_equal(r.status, 404);
	http_response_free(&r);
	assert_int_equal(harness_count(IPC_DOWNLOAD_CHECK), 3);
	assert_true(client_close(c));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_is_alive, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_path_404, setup, teardown),
		cmocka_unit_test_setup_teardown(test_static_mime_types, setup, teardown),
		cmocka_unit_test_setup_teardown(test_submit_task, setup, teardown),
		cmocka_unit_test_setup_teardown(test_request_agent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_body_over_max_413, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_posts_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_metrics_only_on_metrics_connection, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_request_time_counted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_late_answer_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upload_recorded_before_packet, setup, teardown),
		cmocka_unit_test_setup_teardown(test_download_checked, setup, teardown),
	};
	return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
