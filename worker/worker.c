/* The worker's loop: libevent event_base running libwebsockets as a foreign
 * loop, a read event on the inherited listening socket handing each
 * connection to lws, and a peer (core/peer.c) for IPC with the supervisor.
 *
 * Backpressure: when the IPC output to the supervisor holds more than
 * ipc_buffer_bytes, the worker stops reading its WebSockets and stops
 * accepting; it resumes once the output has drained to half of that. */
#include "worker.h"

#include "../core/clock.h"
#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/map.h"
#include "../core/peer.h"
#include "../core/xalloc.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct config worker_cfg;
static int worker_slot;
static struct worker_stats worker_stats;

static struct event_base *base;
static struct lws_context *context;
static struct lws_vhost *vhost;
static struct event *listener; /* EV_READ on WORKER_LISTEN_FD */
static struct event *metrics_listener; /* EV_READ on WORKER_METRICS_FD */
static struct event *stats_tick; /* STATS to the supervisor every second */
static struct event *accept_retry;
static struct peer *ipc;
static struct event *sig_term, *drain_tick;
static int configured, paused, draining;
static double drain_deadline;
static int exit_code;

/* ---- IPC ---- */

/* The supervisor's end: core/peer.c (flush policy in worker_main). */
static void worker_ipc_send(const struct ipc_message *m)
{
	peer_send(ipc, m);
}

static void worker_ipc_flush(void)
{
	peer_flush(ipc);
}

static int worker_ipc_paused(void) { return paused; }

static int worker_is_metrics_connection(struct lws *wsi);

/* What ws.c and http.c are given of this process (slot set at start). */
static struct worker_env env = {
	.cfg = &worker_cfg,
	.stats = &worker_stats,
	.send = worker_ipc_send,
	.flush = worker_ipc_flush,
	.paused = worker_ipc_paused,
	.is_metrics_connection = worker_is_metrics_connection,
};

static int accept_backoff; /* accept() failed (EMFILE): paused 100 ms */
static int listening = 1;

/* Accept while nothing stands against it: not draining, no IPC
 * backpressure, no accept() backoff, and fewer than max_connections. A
 * full worker stops accepting rather than refusing: the listening socket
 * is shared, so the other workers take the connections waiting on it. */
static void update_listener(void)
{
	int want = !draining && !paused && !accept_backoff &&
		   worker_stats.connections < (uint64_t)worker_cfg.max_connections;

	if (listener == NULL || want == listening)
		return;
	listening = want;
	if (want) {
		event_add(listener, NULL);
	} else {
		event_del(listener);
		if (!draining && !paused && !accept_backoff)
			log_info("%llu connections, max_connections: leaving new ones to "
				 "the other workers", (unsigned long long)worker_stats.connections);
	}
}

static void set_paused(int on)
{
	if (paused == on)
		return;
	paused = on;
	ws_pause_all(on);
	update_listener();
	if (on) {
		worker_stats.backpressure_pauses++;
		log_warn("IPC output over %lld bytes: not reading clients until it drains",
			 (long long)worker_cfg.ipc_buffer_bytes);
	} else {
		log_info("IPC output drained: reading clients again");
	}
}

/* The IPC output went over ipc_buffer_bytes. */
static void ipc_full(struct peer *p, void *arg)
{
	(void)p;
	(void)arg;
	set_paused(1);
}

/* The IPC output fell to the low watermark (half of ipc_buffer_bytes). */
static void ipc_drained(struct peer *p, void *arg)
{
	(void)p;
	(void)arg;
	if (paused)
		set_paused(0);
}

static void start_draining(const char *why);

/* A malformed message from the supervisor is a bug: exit and be restarted. */
static void ipc_broken(const char *why)
{
	log_error("broken IPC from the supervisor (%s); exiting", why);
	exit_code = 1;
	event_base_loopexit(base, NULL);
}

static int worker_start(const struct ipc_message *m);

static void apply_config(const char *text, size_t len)
{
	struct config loaded;
	char err[512], restart[256];
	char *copy = xmemdup0(text, len);

	config_defaults(&loaded);
	if (config_parse(&loaded, copy, "supervisor config", err, sizeof err) < 0)
		ipc_broken(err);
	else
		config_reload(&worker_cfg, &loaded, restart, sizeof restart);
	log_set_level((enum log_level)worker_cfg.log_level);
	peer_raise_max(ipc, ipc_max_message(worker_cfg.max_message_bytes,
					    worker_cfg.backend_max_frame_bytes));
	peer_set_watermarks(ipc, (size_t)worker_cfg.ipc_buffer_bytes,
			    (size_t)worker_cfg.ipc_buffer_bytes / 2);
	free(copy);
}

/* One message from the supervisor (its peer checked the hello rule). Its
 * pointers are valid during this call only (core/peer.h): what is kept is
 * copied (ws_send, the config). */
static void supervisor_message(struct peer *p, const struct ipc_message *m, void *arg)
{
	(void)p;
	(void)arg;
	switch (m->type) {
	case IPC_HELLO_SUPERVISOR:
		if (worker_start(m) < 0) {
			exit_code = EXIT_CONFIG;
			event_base_loopexit(base, NULL);
		}
		return;
	case IPC_WS_SEND:
		if (m->ws_send.answers > 0)
			ws_send_answer(m->ws_send.conn, m->ws_send.answers, m->ws_send.packet,
				       m->ws_send.len);
		else
			ws_send(m->ws_send.conn, m->ws_send.seq, m->ws_send.packet,
				m->ws_send.len);
		return;
	case IPC_WS_CLOSE:
		ws_close(m->ws_close.conn, m->ws_close.code);
		return;
	case IPC_DRAIN:
		start_draining("the supervisor asked");
		return;
	case IPC_CONFIG:
		apply_config(m->config.text, m->config.len);
		return;
	case IPC_HTTP_ANSWER:
		http_answer_from_supervisor(m->http_answer.req, m->http_answer.status,
					    m->http_answer.body, m->http_answer.len);
		return;
	case IPC_DOWNLOAD_INFO:
		http_download_info(m->download_info.req, m->download_info.found,
				   m->download_info.dev, m->download_info.ino);
		return;
	case IPC_METRICS:
		http_metrics_text(m->metrics.req, m->metrics.text, m->metrics.len);
		return;
	default:
		ipc_broken("message of the wrong direction");
		return;
	}
}

static void ipc_ended(struct peer *p, const char *why, int malformed, void *arg)
{
	(void)p;
	(void)arg;
	if (malformed) {
		ipc_broken(why);
		return;
	}
	if (!configured) {
		exit_code = 1;
		event_base_loopexit(base, NULL);
		return;
	}
	start_draining("the supervisor is gone");
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	accept_backoff = 0;
	update_listener();
}

/* Out of descriptors (or buffers): pause instead of spinning (tmux
 * server.c). */
static void accept_failed(int err)
{
	struct timeval tv = { 0, 100000 };

	log_warn("accept: %s; pausing accepts for 100 ms", strerror(err));
	accept_backoff = 1;
	update_listener();
	evtimer_add(accept_retry, &tv);
}

/* ---- connections per source address (max_connections_per_address) ---- */

static struct map *per_address; /* address bytes -> count (uintptr_t) */
static struct map *address_of;  /* struct lws * -> address key (malloc'ed) */

struct address_key {
	unsigned char len;
	unsigned char bytes[16];
	unsigned char metrics; /* came in on the metrics socket */
};

static int worker_is_metrics_connection(struct lws *wsi)
{
	const struct address_key *k = address_of ? map_get(address_of, &wsi, sizeof wsi)
						  : NULL;

	return k != NULL && k->metrics;
}

static void address_key_of(const struct sockaddr_storage *ss, struct address_key *k)
{
	memset(k, 0, sizeof *k);
	if (ss->ss_family == AF_INET) {
		k->len = 4;
		memcpy(k->bytes, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		const unsigned char *a = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
		static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

		if (memcmp(a, mapped, 12) == 0) { /* an IPv4 client on an IPv6 socket */
			k->len = 4;
			memcpy(k->bytes, a + 12, 4);
		} else {
			k->len = 16;
			memcpy(k->bytes, a, 16);
		}
	}
}

/* Counted by address only (not by the socket it came in on). */
static uintptr_t address_count(const struct address_key *k)
{
	return (uintptr_t)map_get(per_address, k, offsetof(struct address_key, metrics));
}

static void address_add(const struct address_key *k, intptr_t delta)
{
	uintptr_t n = address_count(k) + (uintptr_t)delta;
	size_t len = offsetof(struct address_key, metrics);

	if (n == 0)
		map_del(per_address, k, len);
	else
		map_put(per_address, k, len, (void *)n);
}

/* lws is done with a connection: its address counts one less. */
static void address_forget(struct lws *wsi)
{
	struct address_key *k;

	if (address_of == NULL)
		return;
	k = map_del(address_of, &wsi, sizeof wsi);
	if (k != NULL) {
		address_add(k, -1);
		free(k);
	}
}

/* One connection per wakeup, not all that are waiting: every worker is
 * woken for the shared socket, and a worker that took the whole backlog
 * in one go (as evconnlistener does) ended up with most of a burst of
 * connections (92/9 splits of 100 agents), so one process did most of the
 * work while the other idled. Taking one and going back to the loop lets
 * whichever worker is free take the next. */
static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	int metrics = arg != NULL;
	static time_t last_warning, last_address_warning;
	int fd, one = 1, keepidle = 60, keepintvl = 10, keepcnt = 6;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	struct address_key key;
	struct lws *wsi;

	(void)what;
	fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
		    errno == ENOMEM)
			accept_failed(errno);
		/* EAGAIN: another worker took it; ECONNABORTED, EINTR: gone */
		return;
	}
	if (worker_stats.connections >= (uint64_t)worker_cfg.max_connections) {
		worker_stats.refused_connections++;
		if (time(NULL) != last_warning) {
			last_warning = time(NULL);
			log_warn("max_connections (%lld) reached: refusing connections "
				 "(%llu so far)", (long long)worker_cfg.max_connections,
				 (unsigned long long)worker_stats.refused_connections);
		}
		close(fd);
		return;
	}
	address_key_of(&ss, &key);
	key.metrics = (unsigned char)metrics;
	worker_stats.accepted++;
	/* A trusted proxy carries everyone's connections: not its limit. */
	if (address_count(&key) >= (uintptr_t)worker_cfg.max_connections_per_address &&
	    !ws_is_trusted_proxy((const struct sockaddr *)&ss)) {
		worker_stats.refused_by_address++;
		if (time(NULL) - last_address_warning >= 60) {
			char text[64] = "?";

			last_address_warning = time(NULL);
			inet_ntop(key.len == 4 ? AF_INET : AF_INET6, key.bytes, text, sizeof text);
			log_warn("%s has max_connections_per_address (%d) connections to this "
				 "worker: refusing more (%llu refused so far; logged once a "
				 "minute)", text, worker_cfg.max_connections_per_address,
				 (unsigned long long)worker_stats.refused_by_address);
		}
		close(fd);
		return;
	}
	/* Answers go out in more than one write: do not let Nagle hold the
	 * second one for the peer's delayed ACK (40 ms per request). */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/* A peer that vanished without a FIN is dropped after about 2 min. */
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &keepidle, sizeof keepidle);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &keepintvl, sizeof keepintvl);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &keepcnt, sizeof keepcnt);
	/* lws closes fd itself when adoption fails. */
	wsi = lws_adopt_socket_vhost(vhost, fd);
	if (wsi == NULL) {
		log_warn("could not adopt a connection");
	} else {
		struct address_key *k = xmalloc(sizeof *k);

		*k = key;
		map_put(address_of, &wsi, sizeof wsi, k);
		address_add(&key, 1);
	}
	update_listener();
}

/* ---- lws ---- */

static int callback(struct lws *wsi, enum lws_callback_reasons reason,
		    void *user, void *in, size_t len)
{
	switch (reason) {
	case LWS_CALLBACK_WSI_CREATE:
		worker_stats.connections++;
		break;
	case LWS_CALLBACK_WSI_DESTROY:
		address_forget(wsi);
		worker_stats.connections--;
		update_listener();
		break;
	default:
		break;
	}
	return worker_dispatch(wsi, reason, user, in, len, 1);
}

/* lws gives every WebSocket a receive buffer of rx_buffer_size (+ LWS_PRE)
 * for its whole life: with the default (pt_serv_buf_size, 4 KiB) that was
 * 4 KiB of the 6.7 KiB each connection cost (100,000 agents: 687 MB).
 * Agents send small packets; a longer message arrives in pieces, which
 * ws.c joins. It also caps one read() per wakeup, which the backend's
 * connection does not miss (down: the same rate, BENCHMARKS.md).
 * tx_packet_size: without it lws also cuts every send() to rx_buffer_size. */
#define WS_RX_BUFFER 1024
#define WS_TX_PACKET (256 * 1024)

static const struct lws_protocols protocols[] = {
	{ "mephisto-router", callback, sizeof(struct session), WS_RX_BUFFER, 0, NULL,
	  WS_TX_PACKET },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

static void lws_log(int level, const char *line)
{
	size_t n = strlen(line);

	while (n > 0 && line[n - 1] == '\n')
		n--;
	log_msg(level == LLL_ERR ? LOG_LVL_ERROR : level == LLL_WARN ? LOG_LVL_WARN
									 : LOG_LVL_DEBUG,
		"lws: %.*s", (int)n, line);
}

/* Every connection is a descriptor: a limit below max_connections would
 * turn into accept errors under load, so it is a configuration error now. */
static int check_fd_limit(void)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)worker_cfg.max_connections + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
		log_error("max_connections = %lld needs %llu open files but the limit "
			  "is %llu: lower max_connections or raise the limit "
			  "(ulimit -n, LimitNOFILE=)",
			  (long long)worker_cfg.max_connections,
			  (unsigned long long)need, (unsigned long long)rl.rlim_cur);
		return -1;
	}
	return 0;
}

static const lws_retry_bo_t no_validity_checks = { 0 };

static int is_listening_socket(int fd)
{
	int on = 0;
	socklen_t len = sizeof on;

	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on;
}

static void stats_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	struct ipc_message m = { .type = IPC_STATS, .stats = { &worker_stats } };

	worker_ipc_send(&m);
}

static int worker_start(const struct ipc_message *m)
{
	struct lws_context_creation_info info;
	void *foreign_loops[1] = { base };
	char err[512];
	char *text;

	if (m->hello_supervisor.slot != (uint32_t)worker_slot) {
		log_error("the supervisor's hello is for slot %u; this worker is slot %d",
			  m->hello_supervisor.slot, worker_slot);
		return -1;
	}
	text = xmemdup0(m->hello_supervisor.config, m->hello_supervisor.config_len);
	config_defaults(&worker_cfg);
	if (config_parse(&worker_cfg, text, "supervisor config", err, sizeof err) < 0) {
		log_error("%s", err);
		free(text);
		return -1;
	}
	free(text);
	log_set_level((enum log_level)worker_cfg.log_level);
	lws_set_log_level(LLL_ERR | (worker_cfg.log_level >= LOG_LVL_DEBUG ? LLL_WARN : 0),
			  lws_log);

	if (check_fd_limit() < 0)
		return -1;
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_LIBEVENT | LWS_SERVER_OPTION_VALIDATE_UTF8;
	info.foreign_loops = foreign_loops;
	info.max_http_header_data = (unsigned short)(worker_cfg.max_header_bytes > 65535
						     ? 65535 : worker_cfg.max_header_bytes);
	/* No fd_limit_per_thread: below the open-file limit lws looks up every
	 * socket event by a linear scan of its connection table (68% of the
	 * workers' time with 100,000 agents); accept_cb enforces
	 * max_connections itself. And no lws validity pings: each connection
	 * would sit on a sorted timer list whose insertions walk the list
	 * (45% of a worker while 100,000 agents connect). Dead peers are found
	 * by TCP keepalive (accept_cb) and agents by the heartbeat rule. */
	info.retry_and_idle_policy = &no_validity_checks;
	info.vhost_name = "default";
	context = lws_create_context(&info);
	if (context == NULL) {
		log_error("cannot create the libwebsockets context");
		return -1;
	}
	vhost = lws_get_vhost_by_name(context, "default");
	if (vhost == NULL) {
		log_error("libwebsockets created no vhost");
		return -1;
	}
	if (evutil_make_socket_nonblocking(WORKER_LISTEN_FD) < 0 ||
	    (listener = event_new(base, WORKER_LISTEN_FD, EV_READ | EV_PERSIST,
				  accept_cb, NULL)) == NULL ||
	    event_add(listener, NULL) < 0) {
		log_error("cannot accept on the inherited socket: %s", strerror(errno));
		return -1;
	}
	/* The metrics socket, when the supervisor passed one (a listening
	 * socket on fd 5; otherwise fd 5 may be anything of this process's
	 * own, the event loop's epoll among them): its connections are
	 * served /metrics only (http.c). */
	if (is_listening_socket(WORKER_METRICS_FD)) {
		evutil_make_socket_nonblocking(WORKER_METRICS_FD);
		metrics_listener = event_new(base, WORKER_METRICS_FD, EV_READ | EV_PERSIST,
					     accept_cb, &metrics_listener);
		if (metrics_listener == NULL || event_add(metrics_listener, NULL) < 0) {
			log_error("cannot accept on the metrics socket");
			return -1;
		}
	}
	{
		struct timeval second = { 1, 0 };

		stats_tick = event_new(base, -1, EV_PERSIST, stats_tick_cb, NULL);
		event_add(stats_tick, &second);
	}
	peer_set_watermarks(ipc, (size_t)worker_cfg.ipc_buffer_bytes,
			    (size_t)worker_cfg.ipc_buffer_bytes / 2);
	peer_raise_max(ipc, ipc_max_message(worker_cfg.max_message_bytes,
					    worker_cfg.backend_max_frame_bytes));
	env.slot = worker_slot;
	ws_init(&env);
	http_init(&env);
	configured = 1;
	{
		struct ipc_message hello = { .type = IPC_HELLO_WORKER };

		hello.hello_worker.slot = (uint32_t)worker_slot;
		hello.hello_worker.pid = getpid();
		worker_ipc_send(&hello);
	}
	log_debug("serving");
	return 0;
}

/* ---- draining and signals ---- */

static void drain_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct timeval tv = { 0, 20000 };

	(void)fd;
	(void)what;
	(void)arg;
	if (ws_count() == 0 || clock_monotonic() >= drain_deadline) {
		if (ws_count() > 0)
			log_warn("%zu WebSockets still open at the drain deadline",
				 ws_count());
		event_base_loopexit(base, NULL);
		return;
	}
	evtimer_add(drain_tick, &tv);
}

/* This worker stops accepting, closes its WebSockets (1001, after what is
 * queued for them) and exits once they are gone or at shutdown_timeout. */
static void start_draining(const char *why)
{
	struct timeval tv = { 0, 20000 };

	if (draining)
		return;
	draining = 1;
	log_debug("draining (%s): %zu WebSockets", why, ws_count());
	if (!configured) {
		event_base_loopexit(base, NULL);
		return;
	}
	update_listener();
	ws_close_all(LWS_CLOSE_STATUS_GOINGAWAY);
	drain_deadline = clock_monotonic() + worker_cfg.shutdown_timeout;
	evtimer_add(drain_tick, &tv);
}

static void sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	start_draining("SIGTERM");
}

int worker_main(int slot)
{
	struct event_config *cfg;
	char name[32];

	worker_slot = slot;
	snprintf(name, sizeof name, "worker %d", slot);
	log_init(name);
	/* It runs /proc/self/exe, so its name would be "exe": named as the
	 * supervisor, pgrep and ps -C find the whole router. */
	prctl(PR_SET_NAME, "mephisto-router");
	signal(SIGPIPE, SIG_IGN);
	/* Ctrl-C reaches the whole process group; the supervisor drives the
	 * shutdown. */
	signal(SIGINT, SIG_IGN);

	/* lws asks for POLLOUT on every connection it has something to write
	 * to and drops it after the write: with the changelist, libevent
	 * tells epoll only the net change once per loop turn instead of two
	 * epoll_ctl() calls per write (14% of the worker holding the backend
	 * in the down benchmark). Safe here: no descriptor is dup()ed. */
	cfg = event_config_new();
	if (cfg == NULL ||
	    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) < 0 ||
	    (base = event_base_new_with_config(cfg)) == NULL ||
	    event_base_priority_init(base, 3) < 0) /* default 1; IPC flush 2 */
		fatal("cannot create the event loop");
	event_config_free(cfg);
	evutil_make_socket_nonblocking(WORKER_LISTEN_FD);
	per_address = map_new();
	address_of = map_new();
	{
		/* IPC is written in one piece when the loop is quiet: the flush
		 * event has the lowest priority, so it runs once no socket has
		 * input left to read (lws reads a WebSocket 1 KiB per wakeup, and
		 * flushing after each wakeup made many small writes and as many
		 * wakeups of the supervisor), or when 32 KiB are waiting, or
		 * 200 us after the first byte (the loop may never be quiet). */
		const struct peer_options o = {
			.max_message = 2 * 1024 * 1024, /* until the hello: the config */
			.hello = IPC_HELLO_SUPERVISOR,
			.flush_priority = 2, /* after everything else (priority 1) */
			.flush_bytes = 32 * 1024,
			.flush_usec = 200,
		};
		static const struct peer_callbacks cb = {
			.message = supervisor_message, .ended = ipc_ended, .full = ipc_full,
			.drained = ipc_drained,
		};

		ipc = peer_new(base, WORKER_IPC_FD, &o, &cb, NULL);
	}
	sig_term = evsignal_new(base, SIGTERM, sigterm_cb, NULL);
	evsignal_add(sig_term, NULL);
	drain_tick = evtimer_new(base, drain_tick_cb, NULL);
	accept_retry = evtimer_new(base, accept_retry_cb, NULL);

	event_base_dispatch(base);

	/* Teardown order matters (LWS-NOTES): lws before the base. */
	if (listener != NULL)
		event_free(listener);
	if (metrics_listener != NULL)
		event_free(metrics_listener);
	if (stats_tick != NULL)
		event_free(stats_tick);
	listener = NULL; /* lws_context_destroy() below calls update_listener() */
	if (context != NULL)
		lws_context_destroy(context);
	ws_free_all();
	http_free_all();
	{
		size_t pos = 0;
		void *value;

		while (map_next(address_of, &pos, NULL, NULL, &value))
			free(value);
		map_free(address_of);
		map_free(per_address);
		address_of = per_address = NULL;
	}
	wire_free_all();
	/* Hand the supervisor everything still buffered (closes, packets that
	 * could not be written): blocking, at most 2 s. */
	peer_finish(ipc, 2.0);
	peer_free(ipc);
	event_free(sig_term);
	event_free(drain_tick);
	event_free(accept_retry);
	event_base_free(base);
	log_debug("exiting with %d", exit_code);
	return exit_code;
}
