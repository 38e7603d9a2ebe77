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

#include "packet.h"

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define IPC_PROTOCOL_VERSION 5

/* Bytes a message may carry besides its payload (type, ids, framing). */
#define IPC_MESSAGE_OVERHEAD 256

/* The bound of one IPC message for a router whose WebSocket messages are at
 * most max_message_bytes: a packet grows a little when the worker adds its
 * timestamp and re-serialises it, and its routing fields repeat parts of
 * it, so twice the size plus 64 KiB. */
#define IPC_MAX_MESSAGE(max_message_bytes) (2 * (size_t)(max_message_bytes) + 65536)

/* The bound for a router that also builds packets for the backend of up to
 * backend_max_frame_bytes (a POST becomes one packet, checked against that
 * limit where it enters): whatever either limit lets in fits. */
static inline size_t ipc_max_message(int64_t max_message_bytes,
				     int64_t backend_max_frame_bytes)
{
	return IPC_MAX_MESSAGE(max_message_bytes > backend_max_frame_bytes
				       ? max_message_bytes : backend_max_frame_bytes);
}

/* What a worker adds to a packet as it writes it (its
 * router_outgoing_timestamp member), at most. */
#define IPC_STAMP_BYTES 64

/* Flow control of WS_SEND: the supervisor has at most this many bytes of
 * packets (or one packet, whatever its size) sent to one connection and
 * not yet reported written (WS_SENT); the rest waits in its queue. */
#define IPC_SEND_WINDOW (1024 * 1024)

enum ipc_type {
	/* handshake */
	IPC_HELLO_WORKER = 1,     /* worker -> supervisor: version, slot, pid */
	IPC_HELLO_SUPERVISOR = 2, /* supervisor -> worker: version, slot, config */

	/* worker -> supervisor */
	IPC_WS_OPENED = 100, /* conn: a WebSocket was accepted */
	IPC_WS_CLOSED = 101, /* conn: a WebSocket is gone */
	IPC_WS_PACKET = 102, /* conn, packet fields, payload: a valid packet arrived */
	IPC_WS_UNSENT = 103, /* conn, seq: conn could not take WS_SEND seq (closing) */
	IPC_HTTP_REQUEST = 104, /* req, flags, agent_id, request_id, payload */
	IPC_VERSION_MISMATCH = 105, /* version, payload (a log_error packet) */
	IPC_WS_SENT = 106, /* conn, seq: every WS_SEND on conn up to seq is written */
	IPC_UPLOAD_STORED = 107, /* stored, original, field, agent, size, dev, ino */
	IPC_DOWNLOAD_CHECK = 108, /* req, stored: is this a recorded upload? */
	IPC_STATS = 109,          /* struct worker_stats, as bytes */
	IPC_METRICS_REQUEST = 110, /* req: a GET /metrics waits for the text */

	/* supervisor -> worker */
	IPC_WS_SEND = 200,  /* conn, seq, answers, payload: send this packet on conn */
	IPC_WS_CLOSE = 201, /* conn, code: close conn with this status code */
	IPC_DRAIN = 202,    /* stop accepting, close connections, exit 0 */
	IPC_CONFIG = 203,   /* config: the reloaded config (SIGHUP) */
	IPC_HTTP_ANSWER = 204, /* req, status, body or nil: answer request req */
	IPC_DOWNLOAD_INFO = 205, /* req, found, dev, ino: the upload's record */
	IPC_METRICS = 206,       /* req, text: the answer to METRICS_REQUEST */
};

const char *ipc_type_name(enum ipc_type type);

/* The endpoints the request-time histograms are kept for. */
enum ipc_endpoint {
	IPC_EP_IS_ALIVE, IPC_EP_GET_TIMESTAMP, IPC_EP_STATIC, IPC_EP_REQUEST_AGENT,
	IPC_EP_SUBMIT_ONBOARDING, IPC_EP_SUBMIT_TASK, IPC_EP_SUBMIT_METADATA,
	IPC_EP_LOG_ERROR, IPC_EP_DOWNLOAD, IPC_EP_METRICS, IPC_EP_OTHER,
	IPC_ENDPOINTS
};
#define IPC_ENDPOINT_NAMES                                                    \
	{ "is_alive", "get_timestamp", "static", "request_agent",             \
	  "submit_onboarding", "submit_task", "submit_metadata", "log_error", \
	  "download_file", "metrics", "other" }
#define IPC_LATENCY_BUCKETS 10
#define IPC_LATENCY_BOUNDS                                                    \
	{ 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30 }

/* What a worker counts; STATS carries it (as its bytes: both ends are the
 * same binary, the hello checks the version) every second, for /metrics. */
struct worker_stats {
	uint64_t connections; /* open TCP connections (HTTP or WebSocket) */
	uint64_t websockets;
	uint64_t accepted;            /* connections accepted */
	uint64_t refused_connections; /* over max_connections */
	uint64_t refused_by_address;  /* over max_connections_per_address */
	uint64_t backpressure_pauses;
	uint64_t invalid_packets;
	uint64_t backend_refused; /* alive as "mephisto" from outside backend_allow */
	uint64_t bodies_refused;  /* 503: body_memory_bytes */
	uint64_t agents_refused;  /* max_agents_per_connection / _per_address */
	uint64_t body_timeouts;   /* 408: body_timeout, body_min_rate */
	uint64_t packets_in;      /* valid packets received on WebSockets */
	uint64_t packets_out;     /* packets written on WebSockets */
	uint64_t http_requests;   /* requests answered */
	uint64_t http_errors;     /* of those, 4xx and 5xx */
	/* time from a request's head to its answer, by endpoint: a count per
	 * bucket of IPC_LATENCY_BOUNDS (and one past the last), and the sum */
	uint64_t latency[IPC_ENDPOINTS][IPC_LATENCY_BUCKETS + 1];
	double latency_sum[IPC_ENDPOINTS];
	/* time from a heartbeat's arrival to its answer's write, same buckets */
	uint64_t heartbeat[IPC_LATENCY_BUCKETS + 1];
	double heartbeat_sum;
};

/* Count a time of `seconds` into a histogram of IPC_LATENCY_BOUNDS. */
static inline void ipc_latency_count(uint64_t buckets[IPC_LATENCY_BUCKETS + 1],
				     double *sum, double seconds)
{
	static const double bounds[IPC_LATENCY_BUCKETS] = IPC_LATENCY_BOUNDS;
	int b = 0;

	while (b < IPC_LATENCY_BUCKETS && seconds > bounds[b])
		b++;
	buckets[b]++;
	*sum += seconds;
}

/* What an HTTP request needs of routing (HTTP_REQUEST's flags). */
#define IPC_HTTP_WAIT_DETAILS 1u /* answer with the agent_details for request_id */
#define IPC_HTTP_FORGET_AGENT 2u /* drop agent_id's local state */
#define IPC_HTTP_PRECIOUS 4u     /* a submission: never dropped for other traffic */

/* One message, typed: `type` says which member of the union holds its
 * fields, each named as where it comes from and goes (a WebSocket packet
 * is the struct packet route.c routes). Strings travel with their NUL, so
 * they are C strings here (NULL when nil); absent numbers are NAN.
 *
 * Decoded, its pointers point into the reader's memory: valid until the
 * next ipc_reader_next() or ipc_reader_buffer() call, and a peer (peer.h)
 * hands a message over for the length of one call; what is kept is copied. */
struct ipc_message {
	enum ipc_type type;
	union {
		struct { uint32_t version, slot; int64_t pid; } hello_worker;
		struct {
			uint32_t version, slot;
			const char *config; /* the effective config, as text */
			size_t config_len;
		} hello_supervisor;
		struct { uint64_t conn; } ws_conn; /* WS_OPENED, WS_CLOSED */
		struct { uint64_t conn; struct packet packet; } ws_packet;
		/* WS_SENT: every WS_SEND on conn up to seq is written;
		 * WS_UNSENT: conn could not take WS_SEND seq */
		struct { uint64_t conn, seq; } ws_written;
		struct {
			uint64_t req;
			uint32_t flags; /* IPC_HTTP_* */
			const char *agent_id, *request_id;
			const char *packet; /* the packet the request became */
			size_t len;
		} http_request;
		struct {
			const char *version;
			const char *packet; /* the log_error packet to forward */
			size_t len;
		} version_mismatch;
		struct {
			const char *stored, *original, *field, *agent_id;
			uint64_t size, dev, ino;
		} upload_stored;
		struct { uint64_t req; const char *stored; } download_check;
		/* the struct worker_stats as its bytes (the sender's; decoded,
		 * possibly unaligned: copy them out with memcpy) */
		struct { const void *bytes; } stats;
		struct { uint64_t req; } metrics_request;
		struct {
			uint64_t conn, seq;
			/* a heartbeat's answer: the heartbeat's
			 * router_incoming_timestamp (the worker times the
			 * answer from it); else 0 */
			double answers;
			const char *packet;
			size_t len;
		} ws_send;
		struct { uint64_t conn; uint32_t code; } ws_close;
		struct { const char *text; size_t len; } config;
		struct {
			uint64_t req;
			uint32_t status;
			const char *body; /* NULL: none */
			size_t len;
		} http_answer;
		struct { uint64_t req; int found; uint64_t dev, ino; } download_info;
		struct { uint64_t req; const char *text; size_t len; } metrics;
	};
};

/* Append one message to the packer (the version of a hello is this
 * side's, whatever the message says). Returns 0, or -1 (out of memory). */
int ipc_pack(msgpack_packer *pk, const struct ipc_message *m);

/* The bytes a message carries besides IPC_MESSAGE_OVERHEAD (its packet,
 * body, text or config). */
size_t ipc_payload_len(const struct ipc_message *m);

/* Decode one msgpack value into a message. Returns 0, or -1 with the
 * reason in err. */
int ipc_decode(const msgpack_object *obj, struct ipc_message *msg, char *err,
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
/* Raise the bound to at least max_message, never lower it: a reload that
 * lowers the limits must not refuse messages made under the old ones. */
void ipc_reader_raise_max(struct ipc_reader *r, size_t max_message);
char *ipc_reader_buffer(struct ipc_reader *r, size_t want);
void ipc_reader_consumed(struct ipc_reader *r, size_t n);
int ipc_reader_next(struct ipc_reader *r, struct ipc_message *msg, char *err,
		    size_t errlen);

#endif
