/* The worker's protocol code (worker/ws.c, worker/http.c and the HTTP
 * files, through worker/dispatch.c) run in-process for unit tests, after
 * the model of tests/fuzz/http_driver.c: an lws context set up as
 * worker_start() sets it up (same protocol table, CONTEXT_PORT_NO_LISTEN_SERVER,
 * UTF-8 validation, max_http_header_data, no validity pings) but on lws's
 * own poll loop, and connections that are one end of a Unix socketpair,
 * adopted with lws_adopt_socket_vhost() as accept_cb() adopts accepted
 * sockets. The test holds the other end: it is the client.
 *
 * The harness is the worker's process too: the struct worker_env it hands
 * ws_init() and http_init() records every IPC message the code sends (each
 * one packed with ipc_pack() and decoded again, so a message the
 * supervisor could not read fails the test), and the test plays the
 * supervisor by calling ws_send(), http_answer_from_supervisor() and the
 * like itself.
 *
 * One harness per process (ws.c and http.c keep the env they are given):
 * harness_init() and harness_start() in a test's setup, harness_stop() in
 * its teardown. Every wait is bounded (HARNESS_WAIT_MS of wall-clock time);
 * no network. HARNESS_TRACE=1 in the environment shows the worker's and
 * lws's log. (tests/fuzz/http_driver.c keeps its own copy of the setup:
 * it is a libFuzzer harness with its own supervisor and pacing.) */
#ifndef MR_LWS_HARNESS_H
#define MR_LWS_HARNESS_H

#include "../../core/config.h"
#include "../../core/ipc.h"
#include "../../worker/worker.h"

#include <stddef.h>
#include <stdint.h>

/* How long any wait of the harness lasts at most. */
#define HARNESS_WAIT_MS 5000
#define HARNESS_CLIENTS 16

struct harness {
	struct config cfg;  /* the worker's; set before harness_start() */
	struct worker_stats stats;
	struct worker_env env; /* handed to ws_init() and http_init() */
	struct lws_context *context;
	struct lws_vhost *vhost;
	int paused;           /* what env.paused() says */
	int flushes;          /* env.flush() calls */
	char static_dir[256]; /* temporary, removed by harness_stop() */
	char upload_dir[256];
};

extern struct harness harness;

/* Defaults into harness.cfg (static_dir and upload_dir in fresh temporary
 * folders), stats zeroed, the record emptied. Call it, adjust harness.cfg,
 * then harness_start(). */
void harness_init(int slot);
/* The context; ws_init() and http_init() with harness.env. 0 or -1. */
int harness_start(void);
/* Destroys the context (open connections closed), frees what ws.c and
 * http.c keep, the record and the temporary folders. */
void harness_stop(void);
/* A file in the static folder. */
void harness_static_file(const char *name, const char *text);

/* ---- the recorded IPC ---- */

size_t harness_msg_count(void);
/* The i-th message recorded (0 = first), or NULL. */
const struct ipc_message *harness_msg(size_t i);
/* How many of one type; the n-th of one type (0 = first), or NULL. */
size_t harness_count(enum ipc_type type);
const struct ipc_message *harness_find(enum ipc_type type, size_t n);
/* The last one of a type, or NULL. */
const struct ipc_message *harness_last(enum ipc_type type);
void harness_clear(void);

/* ---- the loop ---- */

/* One lws service, without waiting. */
void harness_service(void);
/* Service lws a while (about 20 ms): for what must NOT happen. */
void harness_settle(void);
/* Services until cond(arg) is true, at most HARNESS_WAIT_MS; returns
 * whether it became true. */
int harness_until(int (*cond)(void *), void *arg);
/* Services until count messages of type are recorded (or the wait ends);
 * returns whether they were. */
int harness_wait_msgs(enum ipc_type type, size_t count);

/* ---- the client ---- */

struct client {
	int fd;          /* the client's end of the socketpair; -1 once closed */
	struct lws *wsi; /* the worker's end; NULL once lws destroyed it */
	int metrics;     /* it came in on metrics_listen (client_connect()) */
	char *in;        /* bytes received and not consumed */
	size_t in_len, in_cap;
	int eof;         /* the worker closed the connection */
};

/* A new connection, adopted by the vhost (NULL if that failed); metrics:
 * one that env.is_metrics_connection() says came in on metrics_listen.
 * The harness owns it: client_close() or harness_stop() frees it. At
 * most HARNESS_CLIENTS at a time. */
struct client *client_connect(int metrics);
/* Hang up (the client end closes), service until lws has destroyed its
 * side (at most the wait), free the client. Returns whether lws did. */
int client_close(struct client *c);
/* Send all of it, servicing lws while the socket is full. 0 or -1. */
int client_send(struct client *c, const void *data, size_t len);
/* Service lws and read what the worker wrote until at least want bytes
 * wait in c->in, or EOF, or the wait ends; returns whether they do. */
int client_wait_bytes(struct client *c, size_t want);
/* Take what the worker wrote so far into c->in (no servicing). */
void client_take(struct client *c);
/* Drop the first n bytes of c->in. */
void client_consume(struct client *c, size_t n);
/* Service until the worker closed the connection (EOF); returns whether
 * it did. Bytes that come meanwhile are kept in c->in. */
int client_wait_eof(struct client *c);

/* ---- HTTP on a client ---- */

struct http_response {
	int status;
	char head[4096];  /* the header block, NUL-terminated */
	char *body;       /* malloc'ed, NUL-terminated */
	size_t body_len;
};

/* Read one whole answer (head, and Content-Length bytes of body). 0, or -1
 * when none came within the wait. */
int http_read_response(struct client *c, struct http_response *r);
/* A header's value (case-insensitive name, without the colon) copied into
 * out; 0, or -1 when absent. */
int http_header(const struct http_response *r, const char *name, char *out,
		size_t outlen);
void http_response_free(struct http_response *r);

/* ---- WebSocket on a client ---- */

/* Send an upgrade request and read the 101; its head into r. 0 or -1. */
int ws_client_upgrade(struct client *c, struct http_response *r);
/* Send one frame, masked as a client's must be: fin 0 for a fragment
 * followed by continuations (opcode 0). 0 or -1. */
int ws_client_send_frame(struct client *c, int fin, int opcode, const void *data,
			 size_t len);
/* Read one frame of the worker's (unmasked). Its payload is malloc'ed and
 * NUL-terminated. 0, or -1 when none came within the wait. */
struct ws_frame {
	int fin, opcode;
	char *payload;
	size_t len;
};
int ws_client_read_frame(struct client *c, struct ws_frame *f);
/* The status code of a close frame, or -1. */
int ws_frame_close_code(const struct ws_frame *f);
void ws_frame_free(struct ws_frame *f);

#endif
