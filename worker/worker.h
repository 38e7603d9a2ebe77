/* The worker process: one libevent loop running libwebsockets (HTTP/1.1 and
 * WebSocket on connections accepted from the shared listening socket), the
 * IPC link to the supervisor, and timers. Internal to worker/. */
#ifndef MR_WORKER_H
#define MR_WORKER_H

#include "../core/config.h"
#include "../core/ipc.h" /* struct worker_stats */

#include <libwebsockets.h>
#include <msgpack.h>
#include <stdint.h>

/* fds the supervisor hands every worker across exec */
#define WORKER_LISTEN_FD 3
#define WORKER_IPC_FD 4
#define WORKER_METRICS_FD 5 /* metrics_listen's socket, when there is one */

/* Entry point of "mephisto-router --worker SLOT". Returns the exit code. */
int worker_main(int slot);

/* ---- shared inside the worker ---- */

struct conn;
struct http_req;

/* Per-connection user data of our lws protocol, for HTTP and WebSocket;
 * kept small because every connection has one. */
struct session {
	struct conn *conn;    /* WebSocket only */
	struct http_req *req; /* HTTP: the request being served */
	unsigned body_completions; /* of the current request (see callback()) */
	double started;   /* the current request's head arrived (http.c) */
	int endpoint;     /* its enum ipc_endpoint; -1: its time is counted */
};


/* dispatch.c: the protocol callback's guards and routing, shared with the
 * fuzz harness (guard_lws_bugs 0 leaves lws's bugs unguarded, for it). */
int worker_dispatch(struct lws *wsi, enum lws_callback_reasons reason, void *user,
		    void *in, size_t len, int guard_lws_bugs);

/* What the protocol handlers (ws.c, http.c) need of their process, handed
 * to them (ws_init) rather than reached for: worker.c makes the real one;
 * the fuzz driver and the unit tests make their own. */
struct worker_env {
	const struct config *cfg;
	struct worker_stats *stats;
	/* IPC to the supervisor: send one message; write what is packed now;
	 * whether the worker stopped reading clients (IPC backpressure) */
	void (*send)(const struct ipc_message *m);
	void (*flush)(void);
	int (*paused)(void);
	int slot; /* X-Router-Worker */
	/* 1 when wsi came in on the metrics socket (metrics_listen) */
	int (*is_metrics_connection)(struct lws *wsi);
};

/* ws.c: WebSocket connections, addressed by 64-bit ids */
void ws_init(const struct worker_env *env);
int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
		struct session *s, void *in, size_t len);
void ws_send(uint64_t conn, uint64_t seq, const char *data, size_t len);
/* The answer to a heartbeat that arrived at `received` (wire_now()):
 * nobody waits for its write; the time to it is counted. */
void ws_send_answer(uint64_t conn, double received, const char *data, size_t len);
void ws_close(uint64_t conn, uint32_t code);
void ws_close_all(uint32_t code);
void ws_pause_all(int paused);
size_t ws_count(void);
void ws_free_all(void);
void ws_buckets_free(void);
/* 1 when the address is in trusted_proxies. */
struct sockaddr;
int ws_is_trusted_proxy(const struct sockaddr *sa);

/* http.c: HTTP requests */
void http_init(const struct worker_env *env);
int http_callback(struct lws *wsi, enum lws_callback_reasons reason,
		  struct session *s, void *in, size_t len);
/* The supervisor's answer to a request handed over with HTTP_REQUEST. */
void http_answer_from_supervisor(uint64_t req, unsigned int status,
				 const char *body, size_t len);
void http_free_all(void);
/* The supervisor's answer to a download's DOWNLOAD_CHECK. */
void http_download_info(uint64_t req, int found, uint64_t dev, uint64_t ino);
/* The supervisor's metrics text for a GET /metrics. */
void http_metrics_text(uint64_t req, const char *text, size_t len);

#endif
