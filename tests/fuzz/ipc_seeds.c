/* Writes fuzz_ipc's seed inputs into the folder named by argv[1]: IPC
 * streams packed with the router's own encoders (core/ipc.c), one file
 * per message type, a worker's and a supervisor's session, and the
 * malformed headers the reader must refuse. make fuzz-seeds runs it. */
#include "../../core/ipc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *dir;

static void save(const char *name, const void *data, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

#define PACKET "{\"packet_type\":\"mephisto_bound_live_update\",\"subject_id\":\"agent-7\"," \
	       "\"data\":{\"x\":1},\"client_timestamp\":1764087000.25," \
	       "\"router_incoming_timestamp\":1764087000.5}"
#define CONFIG "port = 3000\nlisten_address = 0.0.0.0\nworkers = 2\n" \
	       "max_message_bytes = 1048576\nlog_level = info\n"

int main(int argc, char **argv)
{
	msgpack_sbuffer b, all_worker, all_supervisor;
	msgpack_packer pk, pw, ps;
	const struct packet f = {
		.type = PKT_MEPHISTO_BOUND_LIVE_UPDATE, .subject_id = "agent-7",
		.client_timestamp = 1764087000.25, .server_timestamp = NAN,
		.router_incoming_timestamp = 1764087000.5, .payload = PACKET,
		.len = strlen(PACKET),
	};
	const struct packet status = {
		.type = PKT_UPDATE_STATUS, .subject_id = "agent-7", .status = "in task",
		.request_id = "req-1", .client_timestamp = NAN,
		.server_timestamp = 1764087000.0, .router_incoming_timestamp = 1764087000.5,
		.payload = "{}", .len = 2,
	};
	const uint64_t conn = (1ULL << 32) | 1;

	if (argc != 2) {
		fprintf(stderr, "usage: ipc_seeds DIR\n");
		return 2;
	}
	dir = argv[1];
	msgpack_sbuffer_init(&all_worker);
	msgpack_sbuffer_init(&all_supervisor);
	msgpack_packer_init(&pw, &all_worker, msgpack_sbuffer_write);
	msgpack_packer_init(&ps, &all_supervisor, msgpack_sbuffer_write);

/* One typed message packed with p. */
#define M(t, ...) ipc_pack(p, &(struct ipc_message){ .type = (t), __VA_ARGS__ })
#define ONE(name, call, session)                                               \
	do {                                                                   \
		msgpack_sbuffer_init(&b);                                      \
		msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);           \
		{                                                              \
			msgpack_packer *p = &pk;                               \
			call;                                                  \
			p = (session);                                         \
			call;                                                  \
		}                                                              \
		save(name, b.data, b.size);                                    \
		msgpack_sbuffer_destroy(&b);                                   \
	} while (0)

	ONE("hello_worker", M(IPC_HELLO_WORKER, .hello_worker = { 0, 1, 4242 }), &pw);
	ONE("hello_supervisor", M(IPC_HELLO_SUPERVISOR,
				  .hello_supervisor = { 0, 1, CONFIG, strlen(CONFIG) }), &ps);
	ONE("ws_opened", M(IPC_WS_OPENED, .ws_conn = { conn }), &pw);
	ONE("ws_packet", M(IPC_WS_PACKET, .ws_packet = { conn, f }), &pw);
	ONE("ws_packet_status", M(IPC_WS_PACKET, .ws_packet = { conn, status }), &pw);
	ONE("ws_sent", M(IPC_WS_SENT, .ws_written = { conn, 17 }), &pw);
	ONE("ws_unsent", M(IPC_WS_UNSENT, .ws_written = { conn, 18 }), &pw);
	ONE("http_request", M(IPC_HTTP_REQUEST,
			      .http_request = { 9, 3, "agent-7",
						"3b1f2c4d-0000-4000-8000-000000000001", PACKET,
						strlen(PACKET) }), &pw);
	ONE("version_mismatch", M(IPC_VERSION_MISMATCH,
				  .version_mismatch = { "2.0.3", PACKET, strlen(PACKET) }), &pw);
	ONE("upload_stored", M(IPC_UPLOAD_STORED,
			       .upload_stored = { "mr-0123456789abcdef0123456789abcdef", "a.txt",
						  "file", "agent-7", 5, 2049, 131 }), &pw);
	ONE("download_check", M(IPC_DOWNLOAD_CHECK,
				.download_check = { 11, "mr-0123456789abcdef0123456789abcdef" }),
	    &pw);
	ONE("metrics_request", M(IPC_METRICS_REQUEST, .metrics_request = { 12 }), &pw);
	ONE("ws_closed", M(IPC_WS_CLOSED, .ws_conn = { conn }), &pw);
	ONE("ws_send", M(IPC_WS_SEND, .ws_send = { conn, 17, 1795000000.25, PACKET,
						  strlen(PACKET) }), &ps);
	ONE("http_answer", M(IPC_HTTP_ANSWER, .http_answer = { 9, 200, "{\"agent_id\":\"7\"}",
							       16 }), &ps);
	ONE("http_answer_nil", M(IPC_HTTP_ANSWER, .http_answer = { 10, 408, NULL, 0 }), &ps);
	ONE("download_info", M(IPC_DOWNLOAD_INFO, .download_info = { 11, 1, 2049, 131 }), &ps);
	ONE("metrics", M(IPC_METRICS, .metrics = { 12, "mephisto_router_workers 2\n", 26 }),
	    &ps);
	ONE("ws_close", M(IPC_WS_CLOSE, .ws_close = { conn, 1008 }), &ps);
	ONE("config", M(IPC_CONFIG, .config = { CONFIG, strlen(CONFIG) }), &ps);
	ONE("drain", M(IPC_DRAIN), &ps);
	save("session_worker", all_worker.data, all_worker.size);
	save("session_supervisor", all_supervisor.data, all_supervisor.size);

	/* what the reader must refuse, from the header on */
	save("huge_array32_header", "\xdd\x05\x00\x00\x00", 5);
	save("huge_map32_header", "\xdf\x7f\xff\xff\xff", 5);
	save("nested_huge_array", "\x95\xcc\xc8\xdd\xff\xff\xff\xff", 8);
	save("bin32_over_bound", "\x95\xcc\xc8\x01\xa2" "d\0\x02\xc6\x00\x40\x00\x00", 13);
	save("many_nils", "\xdc\x04\x00", 3);
	save("never_valid_c1", "\x92\x64\xc1", 3);
	save("ext_and_float32", "\x94\xcc\xc8\xd6\x01\x00\x00\x00\x00\xca\x3f\x80\x00\x00"
	     "\xc7\x02\x05\xab\xcd", 19);
	{
		unsigned char deep[40];

		memset(deep, 0x91, sizeof deep);
		deep[sizeof deep - 1] = 0x01;
		save("nested_40_deep", deep, sizeof deep);
	}
	/* a good message cut short, and one followed by garbage */
	msgpack_sbuffer_init(&b);
	msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
	{
		msgpack_packer *p = &pk;

		M(IPC_WS_SEND, .ws_send = { 2, 3, 0, PACKET, strlen(PACKET) });
	}
	save("truncated_ws_send", b.data, b.size - 10);
	msgpack_sbuffer_write(&b, "\x81\xa1x\x01", 4);
	save("ws_send_then_map", b.data, b.size);
	msgpack_sbuffer_destroy(&b);
	msgpack_sbuffer_destroy(&all_worker);
	msgpack_sbuffer_destroy(&all_supervisor);
	return 0;
}
