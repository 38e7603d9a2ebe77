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
	struct ipc_packet_fields f = {
		.type = 3, .subject_id = "agent-7", .status = NULL, .request_id = NULL,
		.client_timestamp = 1764087000.25, .server_timestamp = NAN,
		.router_incoming_timestamp = 1764087000.5,
	};
	struct ipc_packet_fields status = {
		.type = 5, .subject_id = "agent-7", .status = "in task", .request_id = "req-1",
		.client_timestamp = NAN, .server_timestamp = 1764087000.0,
		.router_incoming_timestamp = 1764087000.5,
	};

	if (argc != 2) {
		fprintf(stderr, "usage: ipc_seeds DIR\n");
		return 2;
	}
	dir = argv[1];
	msgpack_sbuffer_init(&all_worker);
	msgpack_sbuffer_init(&all_supervisor);
	msgpack_packer_init(&pw, &all_worker, msgpack_sbuffer_write);
	msgpack_packer_init(&ps, &all_supervisor, msgpack_sbuffer_write);

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

	ONE("hello_worker", ipc_pack_hello_worker(p, 1, 4242), &pw);
	ONE("hello_supervisor", ipc_pack_hello_supervisor(p, 1, CONFIG, strlen(CONFIG)), &ps);
	ONE("ws_opened", ipc_pack_ws_opened(p, (1ULL << 32) | 1), &pw);
	ONE("ws_packet", ipc_pack_ws_packet(p, (1ULL << 32) | 1, &f, PACKET, strlen(PACKET)), &pw);
	ONE("ws_packet_status", ipc_pack_ws_packet(p, (1ULL << 32) | 1, &status, "{}", 2), &pw);
	ONE("ws_sent", ipc_pack_ws_sent(p, (1ULL << 32) | 1, 17), &pw);
	ONE("ws_unsent", ipc_pack_ws_unsent(p, (1ULL << 32) | 1, 18), &pw);
	ONE("http_request", ipc_pack_http_request(p, 9, 3, "agent-7", "3b1f2c4d-0000-4000-8000-"
						   "000000000001", PACKET, strlen(PACKET)), &pw);
	ONE("version_mismatch", ipc_pack_version_mismatch(p, "2.0.3", PACKET, strlen(PACKET)), &pw);
	ONE("ws_closed", ipc_pack_ws_closed(p, (1ULL << 32) | 1), &pw);
	ONE("ws_send", ipc_pack_ws_send(p, (1ULL << 32) | 1, 17, 1795000000.25, PACKET,
					strlen(PACKET)), &ps);
	ONE("http_answer", ipc_pack_http_answer(p, 9, 200, "{\"agent_id\":\"7\"}", 16), &ps);
	ONE("http_answer_nil", ipc_pack_http_answer(p, 10, 408, NULL, 0), &ps);
	ONE("ws_close", ipc_pack_ws_close(p, (1ULL << 32) | 1, 1008), &ps);
	ONE("config", ipc_pack_config(p, CONFIG, strlen(CONFIG)), &ps);
	ONE("drain", ipc_pack_drain(p), &ps);
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
	ipc_pack_ws_send(&pk, 2, 3, 0, PACKET, strlen(PACKET));
	save("truncated_ws_send", b.data, b.size - 10);
	msgpack_sbuffer_write(&b, "\x81\xa1x\x01", 4);
	save("ws_send_then_map", b.data, b.size);
	msgpack_sbuffer_destroy(&b);
	msgpack_sbuffer_destroy(&all_worker);
	msgpack_sbuffer_destroy(&all_supervisor);
	return 0;
}
