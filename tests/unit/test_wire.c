/* Unit tests of worker/wire.c: wire_parse() takes a fast path (yajl) for
 * the usual packet and falls back to jansson (wire_parse_json()) for the
 * rest. The fast path must never accept what jansson would refuse, nor
 * read a field differently: every case here, hand-picked and mutated at
 * random, must give the same answer both ways. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../worker/wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW 1764087000.5
#define BACKEND_MAX 4096

static const char *cases[] = {
	/* the usual packets: the fast path's */
	"{\"packet_type\":\"mephisto_bound_live_update\",\"subject_id\":\"agent-1\","
	"\"data\":{\"seq\":1,\"t\":123},\"client_timestamp\":1764087000.25}",
	"{\"packet_type\":\"client_bound_live_update\",\"subject_id\":\"agent-2\","
	"\"data\":{\"text\":\"hi \\\"there\\\"\\n\",\"list\":[1,2.5,true,false,null,{}]},"
	"\"server_timestamp\":1764087000}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":{}}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\"}",
	" { \"subject_id\" : \"x\" , \"packet_type\" : \"alive\" } \n",
	"{\"packet_type\":\"update_status\",\"subject_id\":\"a\",\"data\":{\"status\":\"in task\"}}",
	"{\"packet_type\":\"update_status\",\"subject_id\":\"a\",\"data\":{\"x\":{\"status\":1}}}",
	"{\"packet_type\":\"agent_details\",\"subject_id\":\"r1\",\"data\":{\"request_id\":\"r2\","
	"\"agent_id\":\"7\"}}",
	"{\"packet_type\":\"agent_details\",\"subject_id\":\"r1\",\"data\":{\"request_id\":5}}",
	"{\"packet_type\":\"agent_details\",\"subject_id\":\"r1\",\"data\":{}}",
	"{\"packet_type\":\"log_error\",\"subject_id\":\"a\",\"data\":{\"m\":\"x\"}}",
	"{\"packet_type\":\"return_statuses\",\"subject_id\":\"mephisto\",\"data\":{\"a\":\"b\"},"
	"\"client_timestamp\":null}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\\u00e9\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xc3\xa9\xe2\x82\xac\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"x\":[[[[[[[[[[1]]]]]]]]]]}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":-0,\"m\":1E+2,\"k\":-1.5e-3}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":9223372036854775807}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":{\"data\":{\"status\":null}}}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"x\":{\"data\":1},\"y\":{\"a\":1},"
	"\"z\":{\"a\":1}}",
	/* what the slow path rewrites */
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":null}",
	"{\"packet_type\":\"heartbeat\",\"subject_id\":\"a\",\"data\":{\"x\":1}}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"router_incoming_timestamp\":1}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"router_outgoing_timestamp\":1}",
	/* errors */
	"",
	"   ",
	"null",
	"[1]",
	"\"x\"",
	"{",
	"{}",
	"{\"packet_type\":\"alive\"}",
	"{\"subject_id\":\"a\"}",
	"{\"packet_type\":1,\"subject_id\":\"a\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":null}",
	"{\"packet_type\":\"alive\",\"subject_id\":[\"a\"]}",
	"{\"packet_type\":\"nope\",\"subject_id\":\"a\"}",
	"{\"packet_type\":\"a very long packet type that is no type at all\",\"subject_id\":\"a\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":[]}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":\"x\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":3}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"client_timestamp\":\"1\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"server_timestamp\":{}}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"server_timestamp\":true}",
	"{\"packet_type\":\"update_status\",\"subject_id\":\"a\",\"data\":{\"status\":null}}",
	"{\"packet_type\":\"update_status\",\"subject_id\":\"a\",\"data\":{\"status\":5}}",
	"{\"packet_type\":\"update_status\",\"subject_id\":\"a\",\"data\":{\"status\":[]}}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"subject_id\":\"b\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":{\"k\":1,\"k\":2}}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":{\"x\":{\"k\":1,\"k\":2}}}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"x\":[{\"k\":1,\"k\":2}]}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\\u0000b\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"x\":\"\\ud800\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"x\":\"\\udc00\\ud800\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":9223372036854775808}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":-9223372036854775808}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":1e999}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"client_timestamp\":-1e400}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":1e-400}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":01}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":1.}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":.5}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":+1}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":NaN}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\"} x",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\"}{}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\"} // c",
	"{\"packet_type\":\"alive\",\"subject_id\":'a'}",
	"{packet_type:\"alive\",\"subject_id\":\"a\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\tb\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\\qb\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xff\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xc3\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xed\xa0\x80\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xc0\xaf\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xc1\xbf\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xe0\x9f\xbf\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xe0\xa0\x80\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xed\x9f\xbf\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xf0\x8f\xbf\xbf\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xf0\x90\x80\x80\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xf4\x8f\xbf\xbf\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xf4\x90\x80\x80\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\xf5\x80\x80\x80\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\xc3\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"\x80\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\\\\u\"}",
	"{\"packet_type\":\"alive\",\f\"subject_id\":\"a\"}",
	"\v{\"packet_type\":\"alive\",\"subject_id\":\"a\"}",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\"}\f",
	"{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"x\":[1,\v2]}",
	"{\"packet_type\":\"alive\",\r\n\t\"subject_id\":\"a\"}\r\n",
	"{\"packet_type\":\"mephisto_bound_live_update\",\"subject_id\":\"a\",\"data\":{\"p\":\""
	"0123456789012345678901234567890123456789012345678901234567890123456789"
	"0123456789012345678901234567890123456789012345678901234567890123456789\"}}",
};

struct result {
	int rc;
	char why[256];
	struct wire_packet p;
};

static void same_str(const char *a, const char *b, const char *what, const char *input)
{
	if ((a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0)) {
		fail_msg("%s differs (%s vs %s) for: %s", what, a ? a : "NULL", b ? b : "NULL",
			 input);
	}
}

static void same_num(double a, double b, const char *what, const char *input)
{
	if (isnan(a) != isnan(b) || (!isnan(a) && a != b))
		fail_msg("%s differs (%.17g vs %.17g) for: %s", what, a, b, input);
}

/* Both ways must agree; returns 1 if the fast path parsed it. */
static int check_one(const char *text, size_t len, size_t backend_max)
{
	struct result fast, slow;
	int took_fast;

	memset(&fast, 0, sizeof fast);
	memset(&slow, 0, sizeof slow);
	fast.rc = wire_parse(text, len, NOW, backend_max, &fast.p, fast.why, sizeof fast.why);
	slow.rc = wire_parse_json(text, len, NOW, backend_max, &slow.p, slow.why, sizeof slow.why);
	if (fast.rc != slow.rc)
		fail_msg("wire_parse says %d, jansson %d (%s) for: %.*s", fast.rc, slow.rc,
			 slow.rc < 0 ? slow.why : fast.why, (int)len, text);
	took_fast = fast.rc == 0 && fast.p.root == NULL;
	if (fast.rc < 0) {
		same_str(fast.why, slow.why, "the error", text);
	} else {
		assert_int_equal(fast.p.packet.type, slow.p.packet.type);
		same_str(fast.p.packet.subject_id, slow.p.packet.subject_id, "subject_id", text);
		same_str(fast.p.packet.status, slow.p.packet.status, "status", text);
		same_str(fast.p.packet.request_id, slow.p.packet.request_id, "request_id", text);
		same_num(fast.p.packet.client_timestamp, slow.p.packet.client_timestamp,
			 "client_timestamp", text);
		same_num(fast.p.packet.server_timestamp, slow.p.packet.server_timestamp,
			 "server_timestamp", text);
		same_num(fast.p.packet.router_incoming_timestamp, slow.p.packet.router_incoming_timestamp,
			 "router_incoming_timestamp", text);
		if (fast.p.len != slow.p.len || memcmp(fast.p.payload, slow.p.payload, slow.p.len))
			fail_msg("payload differs: %s vs %s", fast.p.payload, slow.p.payload);
	}
	wire_packet_free(&fast.p);
	wire_packet_free(&slow.p);
	return took_fast;
}

static void test_cases_agree(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		check_one(cases[i], strlen(cases[i]), BACKEND_MAX);
}

/* The fast path is taken for the usual packets (or it would be dead code
 * and the comparison above would prove nothing), and not for the ones
 * only jansson may rewrite or refuse. */
static void test_fast_path_taken(void **state)
{
	(void)state;
	assert_true(check_one(cases[0], strlen(cases[0]), BACKEND_MAX));
	assert_true(check_one(cases[1], strlen(cases[1]), BACKEND_MAX));
	assert_true(check_one(cases[3], strlen(cases[3]), BACKEND_MAX));
	assert_true(check_one(cases[7], strlen(cases[7]), BACKEND_MAX));
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		if (strstr(cases[i], "\"data\":null") || strstr(cases[i], "heartbeat") ||
		    strstr(cases[i], "router_"))
			assert_false(check_one(cases[i], strlen(cases[i]), BACKEND_MAX));
	}
}

static void test_fields(void **state)
{
	struct wire_packet p;
	char why[256];
	const char *t = cases[7];

	(void)state;
	assert_int_equal(wire_parse(t, strlen(t), NOW, BACKEND_MAX, &p, why, sizeof why), 0);
	assert_null(p.root);
	assert_int_equal(p.packet.type, PKT_AGENT_DETAILS);
	assert_string_equal(p.packet.subject_id, "r1");
	assert_string_equal(p.packet.request_id, "r2");
	assert_true(strstr(p.payload, "\"router_incoming_timestamp\":1764087000.500000}") != NULL);
	wire_packet_free(&p);
	t = cases[3]; /* no data: an empty one is added */
	assert_int_equal(wire_parse(t, strlen(t), NOW, BACKEND_MAX, &p, why, sizeof why), 0);
	assert_true(strstr(p.payload, "\"data\":{}") != NULL);
	wire_packet_free(&p);
}

/* A live update too big for the backend is refused both ways. */
static void test_backend_max(void **state)
{
	const char *t = cases[sizeof cases / sizeof cases[0] - 1];
	struct wire_packet p;
	char why[256];

	(void)state;
	check_one(t, strlen(t), 100);
	assert_int_equal(wire_parse(t, strlen(t), NOW, 100, &p, why, sizeof why), -1);
	assert_non_null(strstr(why, "backend_max_frame_bytes"));
	wire_packet_free(&p);
}

static void test_deep_nesting(void **state)
{
	char text[8192];
	size_t n;

	(void)state;
	for (int depth = 60; depth <= 3000; depth = depth < 70 ? depth + 1 : depth * 2) {
		n = (size_t)snprintf(text, sizeof text, "{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"x\":");
		for (int i = 0; i < depth && n < sizeof text / 2; i++)
			text[n++] = '[';
		for (int i = 0; i < depth && n < sizeof text - 2; i++)
			text[n++] = ']';
		text[n++] = '}';
		check_one(text, n, BACKEND_MAX);
	}
}

/* A message with 40,000 keys grows the duplicate table past what is kept
 * between packets; the next packets, with the table given back, and a big
 * one with a duplicate deep in it, still agree with jansson. */
static void test_many_keys(void **state)
{
	enum { KEYS = 40000 };
	size_t cap = (size_t)KEYS * 24 + 256, n;
	char *text = malloc(cap);

	(void)state;
	assert_non_null(text);
	for (int dup = 0; dup < 2; dup++) {
		n = (size_t)snprintf(text, cap, "{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":{");
		for (int k = 0; k < KEYS; k++)
			n += (size_t)snprintf(text + n, cap - n, "%s\"k%d\":%d", k ? "," : "", k, k);
		if (dup)
			n += (size_t)snprintf(text + n, cap - n, ",\"k%d\":0", KEYS / 2);
		n += (size_t)snprintf(text + n, cap - n, "}}");
		assert_int_equal(check_one(text, n, (size_t)-1), !dup);
		assert_true(check_one(cases[0], strlen(cases[0]), BACKEND_MAX));
	}
	free(text);
}

/* A raw NUL byte is no JSON anywhere, but jansson skips one that follows
 * a token it read one character past (a number, true, false, null): it
 * accepted these, and the payload for the backend (the text as it came,
 * stamped) carried the NUL to a parser that refuses it. Both paths must
 * refuse them. Found by tests/fuzz/fuzz_wire (the "2.5" case). */
static void test_nul_bytes(void **state)
{
#define T(s) { s, sizeof(s) - 1 }
	static const struct {
		const char *text;
		size_t len;
	} cases_nul[] = {
		T("{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":[1,2.5\0\r,true]}"),
		T("{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"n\":1\0}"),
		T("{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"t\":true\0,\"f\":null\0}"),
		T("{\"packet_type\":\"alive\",\"subject_id\":\"a\",\"data\":{\"x\":-0\0}}"),
		T("{\"packet_type\":\"alive\",\"subject_id\":\"a\"}\0"),
		T("\0{\"packet_type\":\"alive\",\"subject_id\":\"a\"}"),
		T("{\"packet_type\":\"alive\",\"subject_id\":\"a\0\"}"),
	};
#undef T
	struct wire_packet p;
	char why[256];

	(void)state;
	for (size_t i = 0; i < sizeof cases_nul / sizeof cases_nul[0]; i++) {
		const char *t = cases_nul[i].text;
		size_t n = cases_nul[i].len;

		check_one(t, n, BACKEND_MAX);
		if (wire_parse(t, n, NOW, BACKEND_MAX, &p, why, sizeof why) == 0)
			fail_msg("accepted a NUL byte (case %zu): %s", i, p.payload);
		wire_packet_free(&p);
	}
}

/* Random mutations of the cases: a byte replaced, inserted or removed,
 * from an alphabet that makes JSON (and breaks it) often. Fixed seed. */
static void test_mutations_agree(void **state)
{
	static const char alphabet[] = "{}[]\":,\\u0019aeE+-. \t\n\r\v\fnulltruefalse"
		"\xc0\xc3\xa9\xe0\xed\xf0\xf4\x80\x8f\x90\xa0\xbf\xff";
	char buf[1024];
	unsigned seed = 12345;

	(void)state;
	for (int iter = 0; iter < 200000; iter++) {
		const char *src = cases[(size_t)rand_r(&seed) % (sizeof cases / sizeof cases[0])];
		size_t len = strlen(src);
		int edits = 1 + rand_r(&seed) % 3;

		if (len >= sizeof buf - 8)
			continue;
		memcpy(buf, src, len);
		for (int e = 0; e < edits; e++) {
			size_t at = len ? (size_t)rand_r(&seed) % len : 0;
			char c = alphabet[(size_t)rand_r(&seed) % (sizeof alphabet - 1)];

			switch (rand_r(&seed) % 3) {
			case 0:
				if (len)
					buf[at] = c;
				break;
			case 1:
				memmove(buf + at + 1, buf + at, len - at);
				buf[at] = c;
				len++;
				break;
			default:
				if (len) {
					memmove(buf + at, buf + at + 1, len - at - 1);
					len--;
				}
			}
		}
		check_one(buf, len, BACKEND_MAX);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cases_agree),
		cmocka_unit_test(test_fast_path_taken),
		cmocka_unit_test(test_fields),
		cmocka_unit_test(test_backend_max),
		cmocka_unit_test(test_deep_nesting),
		cmocka_unit_test(test_many_keys),
		cmocka_unit_test(test_nul_bytes),
		cmocka_unit_test(test_mutations_agree),
	};

	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	wire_free_all();
	return failed;
}
