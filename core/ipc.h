/* IPC between the supervisor and its workers: the one list of message types
 * and their msgpack codec.
 *
 * Framing: the socketpair carries a stream of msgpack values; one message is
 * one msgpack array whose first element is an enum ipc_type, followed by the
 * message's fields in a fixed order (ipc.c has one pack and one decode
 * function per type). A message never exceeds the reader's bound; a stream
 * that does, or that decodes to anything but a known message with the right
 * fields, comes from a buggy peer: the receiver logs it and restarts that
 * worker (or, in a worker, exits).
 *
 * Handshake: the supervisor writes HELLO_SUPERVISOR (protocol version, slot,
 * the effective config as text) right after forking; the worker checks the
 * version, applies the config, starts serving and answers HELLO_WORKER with
 * its own version. Either side refuses a version other than its own.
 *
 * Don't forget to bump IPC_PROTOCOL_VERSION when a message changes. */
#ifndef MR_IPC_H
#define MR_IPC_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define IPC_PROTOCOL_VERSION 1

/* Bytes a message may carry besides its payload (type, ids, framing). */
#define IPC_MESSAGE_OVERHEAD 256

enum ipc_type {
	/* handshake */
	IPC_HELLO_WORKER = 1,     /* worker -> supervisor: version, slot, pid */
	IPC_HELLO_SUPERVISOR = 2, /* supervisor -> worker: version, slot, config */

	/* worker -> supervisor */
	IPC_WS_OPENED = 100, /* conn: a WebSocket was accepted */
	IPC_WS_CLOSED = 101, /* conn: a WebSocket is gone */
	IPC_WS_FRAME = 102,  /* conn, bytes: a complete text message arrived */

	/* supervisor -> worker */
	IPC_WS_SEND = 200,  /* conn, bytes: send this text message on conn */
	IPC_WS_CLOSE = 201, /* conn, code: close conn with this status code */
	IPC_DRAIN = 202,    /* stop accepting, close connections, exit 0 */
	IPC_CONFIG = 203,   /* config: the reloaded config (SIGHUP) */
};

/* A decoded message. data/len point into the reader's memory and stay valid
 * until the next ipc_reader_next() call. */
struct ipc_msg {
	enum ipc_type type;
	uint32_t version;
	uint32_t slot;
	int64_t pid;
	uint64_t conn;
	uint32_t code;
	const char *data;
	size_t len;
};

const char *ipc_type_name(enum ipc_type type);

/* Encoders: each appends exactly one message to the packer. */
int ipc_pack_hello_worker(msgpack_packer *pk, uint32_t slot, int64_t pid);
int ipc_pack_hello_supervisor(msgpack_packer *pk, uint32_t slot,
			      const char *config, size_t len);
int ipc_pack_ws_opened(msgpack_packer *pk, uint64_t conn);
int ipc_pack_ws_closed(msgpack_packer *pk, uint64_t conn);
int ipc_pack_ws_frame(msgpack_packer *pk, uint64_t conn, const void *data,
		      size_t len);
int ipc_pack_ws_send(msgpack_packer *pk, uint64_t conn, const void *data,
		     size_t len);
int ipc_pack_ws_close(msgpack_packer *pk, uint64_t conn, uint32_t code);
int ipc_pack_drain(msgpack_packer *pk);
int ipc_pack_config(msgpack_packer *pk, const char *config, size_t len);

/* Decode one msgpack value into a message. Returns 0, or -1 with the
 * reason in err. */
int ipc_decode(const msgpack_object *obj, struct ipc_msg *msg, char *err,
	       size_t errlen);

/* Incremental reader over a byte stream, bounded by max_message bytes per
 * message. Usage: write up to `want` bytes into ipc_reader_buffer(), report
 * them with ipc_reader_consumed(), then call ipc_reader_next() until it
 * returns 0 (need more bytes); -1 means the stream is broken (err says
 * why) and must be abandoned. */
struct ipc_reader;

struct ipc_reader *ipc_reader_new(size_t max_message);
void ipc_reader_free(struct ipc_reader *r);
void ipc_reader_set_max(struct ipc_reader *r, size_t max_message);
char *ipc_reader_buffer(struct ipc_reader *r, size_t want);
void ipc_reader_consumed(struct ipc_reader *r, size_t n);
int ipc_reader_next(struct ipc_reader *r, struct ipc_msg *msg, char *err,
		    size_t errlen);

#endif
