/* The load generator (mr-load) and the echo server (mr-echo): shared
 * declarations. Everything runs on one libevent base per process; the
 * WebSocket client side is libwebsockets' client on that base. */
#ifndef MR_BENCH_H
#define MR_BENCH_H

#include "../core/clock.h"

#include <event2/event.h>
#include <libwebsockets.h>
#include <stddef.h>
#include <stdint.h>

/* ---- hist.c: latency histogram ----
 * Log-linear buckets of nanoseconds, 32 per power of two (about 3%
 * resolution) from 64 ns to about 18 minutes; mergeable by addition, so
 * forked load processes can send theirs to the parent. */
#define HIST_SUB 32
#define HIST_BUCKETS (64 + (40 - 6) * HIST_SUB)

struct hist {
	uint64_t count;
	uint64_t max_ns;
	uint64_t bucket[HIST_BUCKETS];
};

void hist_reset(struct hist *h);
void hist_add(struct hist *h, uint64_t ns);
void hist_merge(struct hist *into, const struct hist *from);
/* The value at quantile q (0..1) in milliseconds; NAN when empty. */
double hist_quantile_ms(const struct hist *h, double q);

/* ---- proc.c: a router's processes, from /proc ---- */
struct proc_sample {
	int ok;          /* 0: the process could not be read */
	int nprocs;      /* the process and its direct children */
	uint64_t rss;    /* bytes, summed */
	double cpu;      /* utime + stime, seconds, summed */
	double at;       /* monotonic seconds of the sample */
};

/* Sample pid and its direct children (a router's supervisor and its
 * workers). pid <= 0 or an unreadable process gives ok = 0. */
void proc_sample(int pid, struct proc_sample *s);
/* The CPU used by every other user process during a window (the
 * machine's /proc/stat is tick-sampled and misses short bursts on this VM;
 * processes' times are exact): a busy neighbour shows here. Kernel
 * threads are left out. root: the router's main process (0: none). */
struct other_entry {
	int pid;
	double cpu;
};
struct others {
	struct other_entry *entries;
	int n, cap;
	double at;
};
void proc_others_begin(struct others *o, int root);
/* CPU seconds the others used since proc_others_begin. */
double proc_others_end(struct others *o, int root);
/* This process (and its waited-for children): CPU seconds. */
double proc_self_cpu(void);

/* ---- util.c ---- */
uint64_t now_mono_ns(void); /* CLOCK_MONOTONIC, nanoseconds (the seconds: core/clock.h) */
/* Raise the open-file soft limit to the hard limit; returns the limit. */
long raise_fd_limit(void);
/* Find "key" in a JSON text and return a pointer to its value (after the
 * colon and blanks), or NULL. Good enough for packets this program made or
 * a router forwarded: keys are matched as quoted strings anywhere. */
const char *json_find(const char *text, size_t len, const char *key);
/* The string value at p (pointing at a '"'): start and length, no
 * unescaping (ids and packet types have no escapes). Returns -1 if p is
 * not a string. */
int json_string_at(const char *p, const char *end, const char **s, size_t *n);
/* Convenience: the string value of key, or -1. */
int json_get_string(const char *text, size_t len, const char *key,
		    const char **s, size_t *n);
/* The unsigned integer value of key, or -1. */
int json_get_u64(const char *text, size_t len, const char *key, uint64_t *out);
/* "1,234,567" */
const char *fmt_count(char *buf, size_t size, double v);

/* ---- wsc.c: WebSocket clients on lws ---- */
struct wsc;

struct wsc_ops {
	void (*on_open)(struct wsc *c);
	void (*on_message)(struct wsc *c, const char *msg, size_t len);
	/* The socket can take more: append frames with wsc_frame(). */
	void (*on_writable)(struct wsc *c);
	/* Connection failed (was_open 0) or closed (was_open 1). */
	void (*on_close)(struct wsc *c, int was_open);
};

enum wsc_state { WSC_IDLE, WSC_CONNECTING, WSC_OPEN, WSC_CLOSED };

struct wsc {
	struct lws *wsi;
	const struct wsc_ops *ops;
	void *owner;
	enum wsc_state state;
	unsigned want_write : 1;
	unsigned closing : 1;
	/* LWS_PRE bytes of headroom, then masked frames waiting for the next
	 * WRITEABLE callback, written with one lws_write (one syscall). */
	unsigned char *out;
	size_t out_len, out_cap;
	/* A message that arrived in several pieces, reassembled. */
	char *rx;
	size_t rx_len, rx_cap;
	int rx_overflow;
};

/* Frames beyond this many bytes wait for the next WRITEABLE callback. */
#define WSC_BATCH_BYTES (48 * 1024)

int wsc_init(struct event_base *base);
void wsc_shutdown(void);
/* Open c to ws://host:port/ from source address src (NULL: any); bulk:
 * a connection that receives a lot (64 KB reads instead of 4 KB, and as
 * much memory). Returns 0 when the attempt started; failures are reported
 * through on_close. */
int wsc_connect(struct wsc *c, const char *host, int port, const char *src,
		int bulk);
/* Append one masked text frame. */
void wsc_frame(struct wsc *c, const char *payload, size_t len);
void wsc_want_write(struct wsc *c);
/* Send a close frame (after what is queued) and close. */
void wsc_close(struct wsc *c);
/* Connections that exist in lws (connecting, open or closing). */
extern long wsc_live;
/* Free c's buffers (after it is closed). */
void wsc_free_buffers(struct wsc *c);

/* ---- httpc.c: HTTP/1.1 keep-alive clients POSTing /request_agent ---- */
struct httpc_stats {
	uint64_t sent, done, ok, bad_status, bad_body, errors, reconnects;
	int measuring;   /* record latencies and count in the window */
	uint64_t window_done;
	struct hist lat;
};

int httpc_start(struct event_base *base, const char *host, int port,
		int clients, int spread, struct httpc_stats *stats);
/* Finish the requests in flight, send no more. */
void httpc_stop(void);
long httpc_outstanding(void);
void httpc_free(void);

/* ---- load.c: the scenarios ---- */
struct load_opts {
	const char *scenario;
	const char *url;
	char host[128];
	int port;
	const char *router_url; /* echo-limit: also run against this router */
	char router_host[128];
	int router_port;
	long agents, window, clients, rounds, procs, concurrency, pad;
	double duration, warmup, interval, rate, connect_timeout, drain;
	int pid;
	int poll;       /* the backend sends request_statuses every 4 s */
	int spread;     /* bind agents to 127.0.0.1-254 */
	int fresh_ids;  /* churn: new agent ids every round */
};

/* Run o->scenario; returns the exit code (0 every check passed, 1 a check
 * failed or the scenario could not finish, 2 setup error). */
int load_main(struct load_opts *o);

/* ---- echo.c: the echo server ---- */
struct echo_opts {
	const char *address;
	int port;
	int one_per_write;
};
int echo_main(const struct echo_opts *o);

#endif
