/* Unit tests of core/peer.c, the IPC end both processes use: output keeps
 * its order across short writes; the hello rule; a peer freed from its own
 * callback; and the ownership rule on a dying peer's last words (issue 12:
 * the supervisor used to read a dead worker's socket to its end and only
 * then act on the messages, with pointers into a reader buffer that had
 * moved meanwhile once more than ~64 KiB were unread: heap-use-after-free
 * under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/peer.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct seen {
	int messages, ended, malformed;
	char why[128];
	size_t bytes;
	int bad_content;
	struct peer *free_me; /* freed from the first message's callback */
};

/* Each payload is its index repeated: checkable where it lies. */
static void fill(char *buf, size_t len, int index)
{
	memset(buf, 'a' + index % 26, len);
}

static void on_message(struct peer *peer, const struct ipc_message *m, void *arg)
{
	struct seen *s = arg;

	(void)peer;
	if (m->type == IPC_WS_PACKET) {
		/* the rule: m's memory is good for this call; use it here */
		const struct packet *p = &m->ws_packet.packet;

		for (size_t i = 0; i < p->len; i++)
			if (p->payload[i] != 'a' + (s->messages - 1) % 26)
				s->bad_content++;
		s->bytes += p->len;
	}
	s->messages++;
	if (s->free_me != NULL) {
		peer_free(s->free_me);
		s->free_me = NULL;
	}
}

static void on_ended(struct peer *p, const char *why, int malformed, void *arg)
{
	struct seen *s = arg;

	(void)p;
	s->ended++;
	s->malformed = malformed;
	snprintf(s->why, sizeof s->why, "%s", why);
}

static const struct peer_callbacks callbacks = { .message = on_message, .ended = on_ended };

static struct peer *new_peer(struct event_base *base, int fd, struct seen *s)
{
	const struct peer_options o = {
		.max_message = 1 << 20, .hello = IPC_HELLO_WORKER, .flush_priority = -1,
	};

	return peer_new(base, fd, &o, &callbacks, s);
}

/* Write a whole buffer to a blocking socket. */
static void write_all(int fd, const void *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		assert_true(n > 0);
		data = (const char *)data + n;
		len -= (size_t)n;
	}
}

static void pack_session(msgpack_sbuffer *b, int packets, size_t payload)
{
	msgpack_packer pk;
	char *buf = malloc(payload);
	struct ipc_message hello = { .type = IPC_HELLO_WORKER, .hello_worker = { 0, 1, 42 } };
	struct ipc_message m = { .type = IPC_WS_PACKET };

	assert_non_null(buf);
	msgpack_sbuffer_init(b);
	msgpack_packer_init(&pk, b, msgpack_sbuffer_write);
	assert_int_equal(ipc_pack(&pk, &hello), 0);
	m.ws_packet.conn = 7;
	m.ws_packet.packet = (struct packet){ .type = PKT_MEPHISTO_BOUND_LIVE_UPDATE,
					      .subject_id = "agent", .payload = buf,
					      .len = payload };
	for (int i = 0; i < packets; i++) {
		fill(buf, payload, i);
		assert_int_equal(ipc_pack(&pk, &m), 0);
	}
	free(buf);
}

/* 300 KiB of last words, then the worker is gone: read to the end, each
 * message handled before the reader moves on. */
static void test_last_words_are_read_safely(void **state)
{
	enum { PACKETS = 300, PAYLOAD = 1024 };
	struct event_base *base = event_base_new();
	struct seen s = { 0 };
	msgpack_sbuffer b;
	struct peer *p;
	int sv[2], big = 1 << 20;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
	p = new_peer(base, sv[0], &s);
	pack_session(&b, PACKETS, PAYLOAD);
	assert_true(b.size > 300 * 1024);
	write_all(sv[1], b.data, b.size);
	close(sv[1]); /* the worker died */
	peer_read_to_end(p);
	if (s.messages != PACKETS + 1)
		fail_msg("ended %d malformed %d: %s; %d messages", s.ended, s.malformed, s.why,
			 s.messages);
	assert_int_equal(s.messages, PACKETS + 1);
	assert_int_equal(s.bytes, (size_t)PACKETS * PAYLOAD);
	assert_int_equal(s.bad_content, 0);
	peer_free(p);
	msgpack_sbuffer_destroy(&b);
	event_base_free(base);
}

/* The same through the event loop, the peer freed from its callback. */
static void test_freed_from_its_callback(void **state)
{
	struct event_base *base = event_base_new();
	struct seen s = { 0 };
	msgpack_sbuffer b;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	s.free_me = new_peer(base, sv[0], &s);
	pack_session(&b, 50, 100);
	write_all(sv[1], b.data, b.size);
	for (int i = 0; i < 100 && s.messages == 0; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	/* freed in the first callback (the hello): nothing more handed over */
	assert_int_equal(s.messages, 1);
	close(sv[1]);
	msgpack_sbuffer_destroy(&b);
	event_base_free(base);
}

static void expect_refused(void (*pack)(msgpack_packer *pk), const char *why)
{
	struct event_base *base = event_base_new();
	struct seen s = { 0 };
	msgpack_sbuffer b;
	msgpack_packer pk;
	struct peer *p;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	p = new_peer(base, sv[0], &s);
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	pack(&pk);
	write_all(sv[1], b.data, b.size);
	for (int i = 0; i < 100 && s.ended == 0; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(s.ended, 1);
	assert_int_equal(s.malformed, 1);
	if (strstr(s.why, why) == NULL)
		fail_msg("'%s' does not say '%s'", s.why, why);
	peer_free(p);
	close(sv[1]);
	msgpack_sbuffer_destroy(&b);
	event_base_free(base);
}

static const struct ipc_message hello = { .type = IPC_HELLO_WORKER,
					  .hello_worker = { 0, 1, 1 } };

static void pack_no_hello(msgpack_packer *pk)
{
	ipc_pack(pk, &(struct ipc_message){ .type = IPC_WS_OPENED, .ws_conn = { 1 } });
}
static void pack_two_hellos(msgpack_packer *pk)
{
	ipc_pack(pk, &hello);
	ipc_pack(pk, &hello);
}
static void pack_old_version(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint32(pk, IPC_HELLO_WORKER);
	msgpack_pack_uint32(pk, IPC_PROTOCOL_VERSION - 1);
	msgpack_pack_uint32(pk, 1);
	msgpack_pack_int64(pk, 1);
}
static void pack_garbage(msgpack_packer *pk)
{
	ipc_pack(pk, &hello);
	msgpack_pack_str(pk, 1);
	msgpack_pack_str_body(pk, "x", 1);
}

static void test_hello_rule(void **state)
{
	(void)state;
	expect_refused(pack_no_hello, "WS_OPENED before the hello");
	expect_refused(pack_two_hellos, "a second hello");
	expect_refused(pack_old_version, "IPC version");
	expect_refused(pack_garbage, "not a non-empty array");
}

/* What the socket does not take waits; later output queues behind it (a
 * small socket buffer makes the first write short): the messages arrive
 * whole and in order. */
static void test_output_keeps_order(void **state)
{
	enum { N = 4, CHUNK = 300000, ROOM = N * CHUNK + 4096 };
	struct event_base *base = event_base_new();
	struct seen s = { 0 };
	unsigned char *sent = malloc((size_t)N * CHUNK), *got = malloc(ROOM);
	struct ipc_reader *reader = ipc_reader_new(1 << 20);
	struct ipc_message m;
	size_t have = 0;
	int sv[2], small = 4096, rounds = 0, k;
	struct peer *p;

	(void)state;
	assert_non_null(sent);
	assert_non_null(got);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
	assert_int_equal(evutil_make_socket_nonblocking(sv[1]), 0);
	p = new_peer(base, sv[0], &s);
	for (size_t i = 0; i < (size_t)N * CHUNK; i++)
		sent[i] = (unsigned char)(i * 7 + i / 251);
	for (k = 0; k < N; k++) {
		struct ipc_message one = { .type = IPC_CONFIG };
		ssize_t n;

		one.config.text = (const char *)sent + (size_t)k * CHUNK;
		one.config.len = CHUNK;
		peer_send(p, &one);
		peer_flush(p);
		/* the socket took only part: the rest waits */
		assert_true(peer_unwritten(p) > 0);
		assert_true(peer_unread(p) == peer_unwritten(p));
		/* Room in the socket again, the loop not run: the next flush
		 * could send at once, and must not (it would jump the queue). */
		n = read(sv[1], got + have, 65536);
		if (n > 0)
			have += (size_t)n;
	}
	while (peer_unread(p) > 0 && rounds++ < 100000) {
		ssize_t n = read(sv[1], got + have, ROOM - have);

		if (n > 0)
			have += (size_t)n;
		event_base_loop(base, EVLOOP_NONBLOCK);
	}
	for (ssize_t n; (n = read(sv[1], got + have, ROOM - have)) > 0;)
		have += (size_t)n;
	assert_int_equal(peer_unread(p), 0);
	memcpy(ipc_reader_buffer(reader, have), got, have);
	ipc_reader_consumed(reader, have);
	for (k = 0; k < N; k++) {
		char err[256];

		assert_int_equal(ipc_reader_next(reader, &m, err, sizeof err), 1);
		assert_int_equal(m.type, IPC_CONFIG);
		assert_int_equal(m.config.len, CHUNK);
		assert_memory_equal(m.config.text, sent + (size_t)k * CHUNK, CHUNK);
	}
	ipc_reader_free(reader);
	peer_free(p);
	close(sv[1]);
	event_base_free(base);
	free(sent);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_last_words_are_read_safely),
		cmocka_unit_test(test_freed_from_its_callback),
		cmocka_unit_test(test_hello_rule),
		cmocka_unit_test(test_output_keeps_order),
	};
	return cmocka_run_group_tests_name("peer", tests, NULL, NULL);
}
