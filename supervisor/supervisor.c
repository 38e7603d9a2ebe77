/* The supervisor process: binds the listening socket (and metrics_listen's)
 * once, opens the state database and loads the routing state from it,
 * starts the worker pool (pool.c) and the routing hub (hub.c) and wires
 * them together; runs the tick; handles SIGCHLD (reap), SIGHUP (reload:
 * re-read the config, resize the pool) and SIGTERM/SIGINT (drain the
 * workers, write the last changes, exit); tells systemd how it goes.
 *
 * Listen sharing: one socket bound here before forking, inherited by every
 * worker, each accepting from it on a read event (worker.c accept_cb). Unlike one
 * SO_REUSEPORT socket per worker, connections waiting in the accept queue
 * are never lost when a worker is retired (a closed SO_REUSEPORT socket
 * resets the connections queued on it), and new workers need nothing new
 * bound. README.md "Design decisions" has the measurement. */
#include "supervisor.h"

#include "../core/clock.h"
#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/route.h"
#include "hub.h"
#include "pool.h"
#include "store.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How often the liveness rules and request deadlines are checked. */
#define TICK_SECONDS 0.1

struct supervisor {
	struct config cfg;
	const char *config_path;
	struct event_base *base;
	int listen_fd;
	int metrics_fd; /* metrics_listen's socket, or -1 */
	struct store *store;
	struct route *route;
	struct pool *pool; /* the workers */
	struct hub *hub;   /* their messages, the route's actions, the commits */
	double status_at;  /* monotonic: STATUS= last told to systemd */
	char status_told[160];
	struct event *signals[4];
	struct event *tick;
	struct event *kill_timer;
	int shutting_down;
	int notified_ready;
	int exit_code;
};

static struct route_config route_config_of(const struct config *c)
{
	struct route_config rc = {
		.reconnect_grace = c->reconnect_grace,
		.heartbeat_timeout = c->heartbeat_timeout,
		.request_timeout = c->request_timeout,
		.max_agent_queue = (size_t)c->max_agent_queue,
		.max_backend_queue = (size_t)c->max_backend_queue,
		.max_backend_queue_bytes = (size_t)c->max_backend_queue_bytes,
		.max_backend_queue_age = c->max_backend_queue_age,
		.window_bytes = IPC_SEND_WINDOW,
		.agent_retention = c->agent_retention,
		/* room for the timestamp the worker adds as it writes */
		.max_frame_bytes = (size_t)c->backend_max_frame_bytes - IPC_STAMP_BYTES,
	};
	return rc;
}

static struct timeval seconds_tv(double s)
{
	struct timeval tv = { (time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6) };
	return tv;
}

/* ---- systemd notification (Type=notify); a no-op outside systemd ---- */

static void notify_systemd(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    (len = strlen(path)) >= sizeof sa.sun_path)
		return;
	memcpy(sa.sun_path, path, len);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), 0, (struct sockaddr *)&sa,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
		log_warn("cannot notify systemd: %s", strerror(errno));
	close(fd);
}

/* STATUS= for systemctl status, when it changed, at most once a second. */
static void tell_systemd_status(struct supervisor *sup)
{
	char text[160];

	if (clock_monotonic() - sup->status_at < 1.0 || getenv("NOTIFY_SOCKET") == NULL)
		return;
	sup->status_at = clock_monotonic();
	snprintf(text, sizeof text, "STATUS=%d of %d workers, %zu agents (%zu attached), "
		 "backend %s, %zu packets queued for it", pool_running(sup->pool),
		 config_worker_count(&sup->cfg), route_agent_count(sup->route),
		 route_attached_agents(sup->route),
		 route_backend_attached(sup->route) ? "attached" : "away",
		 route_queue_length(sup->route, PACKET_MEPHISTO));
	if (strcmp(text, sup->status_told) == 0)
		return;
	snprintf(sup->status_told, sizeof sup->status_told, "%s", text);
	notify_systemd(text);
}

/* ---- the listening socket ---- */

static int listen_socket(const char *address, int port, char *err, size_t errlen)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t sslen;
	int fd, one = 1, zero = 0;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	if (inet_pton(AF_INET, address, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		sslen = sizeof *sin;
	} else {
		inet_pton(AF_INET6, address, &sin6->sin6_addr);
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		sslen = sizeof *sin6;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	if (bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, 4096) < 0)
		goto fail;
	return fd;
fail:
	snprintf(err, errlen, "cannot listen on %s%s%s:%d: %s",
		 ss.ss_family == AF_INET6 ? "[" : "", address,
		 ss.ss_family == AF_INET6 ? "]" : "", port, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

static int listen_open(const struct config *cfg, char *err, size_t errlen)
{
	return listen_socket(cfg->listen_address, cfg->port, err, errlen);
}

/* metrics_listen's socket, or -1 (none, or the address is taken: the
 * router runs on without /metrics, which two routers on one host would
 * otherwise fight over). */
static int metrics_open(const struct config *cfg)
{
	char addr[64], err[256];
	int port, fd;

	if (config_endpoint(cfg->metrics_listen, addr, sizeof addr, &port) < 0 || port == 0)
		return -1;
	fd = listen_socket(addr, port, err, sizeof err);
	if (fd < 0)
		log_warn("metrics_listen: %s; /metrics is not served", err);
	return fd;
}

/* ---- the pool's callbacks, wired to the hub ---- */

static void worker_message(int slot, const struct ipc_message *m, void *arg)
{
	struct supervisor *sup = arg;

	hub_worker_message(sup->hub, slot, m);
}

static void worker_gone(int slot, void *arg)
{
	struct supervisor *sup = arg;

	hub_worker_gone(sup->hub, slot);
}

static void workers_ready(void *arg)
{
	struct supervisor *sup = arg;

	if (sup->notified_ready)
		return;
	sup->notified_ready = 1;
	log_info("ready: %d workers accepting on %s port %d",
		 config_worker_count(&sup->cfg), sup->cfg.listen_address,
		 sup->cfg.port);
	notify_systemd("READY=1");
}

/* ---- signals ---- */

static void reap_cb(evutil_socket_t sig, short what, void *arg)
{
	struct supervisor *sup = arg;
	pid_t pid;
	int status;

	(void)sig;
	(void)what;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pool_reaped(sup->pool, pid, status)) {
			log_error("no worker left; stopping");
			sup->exit_code = EXIT_CONFIG;
			event_base_loopexit(sup->base, NULL);
		}
	}
	if (sup->shutting_down && pool_running(sup->pool) == 0)
		event_base_loopexit(sup->base, NULL);
}

static void reload(struct supervisor *sup)
{
	struct config loaded;
	char err[1024], restart[512];

	config_defaults(&loaded);
	if (config_load_file(&loaded, sup->config_path, err, sizeof err) < 0 ||
	    config_apply_env(&loaded, err, sizeof err) < 0 ||
	    supervisor_check(&loaded, 1, err, sizeof err) < 0) {
		log_error("SIGHUP: %s; keeping the running configuration", err);
		return;
	}
	if (config_reload(&sup->cfg, &loaded, restart, sizeof restart) > 0)
		log_warn("SIGHUP: %s changed; a running router cannot change %s, "
			 "restart it to apply", restart,
			 strchr(restart, ',') ? "them" : "it");
	log_set_level((enum log_level)sup->cfg.log_level);
	{
		struct route_config rc = route_config_of(&sup->cfg);
		route_set_config(sup->route, &rc);
	}
	log_info("SIGHUP: configuration re-read from %s (workers = %d)",
		 sup->config_path, config_worker_count(&sup->cfg));
	pool_send_config(sup->pool);
	pool_resize(sup->pool);
}

/* SIGHUP: re-read the config file. systemd hears RELOADING=1, then READY=1
 * once done (the running configuration kept if the file is bad). */
static void reload_cb(evutil_socket_t sig, short what, void *arg)
{
	struct supervisor *sup = arg;
	char text[64];

	(void)sig;
	(void)what;
	if (sup->shutting_down)
		return;
	if (sup->config_path == NULL) {
		log_warn("SIGHUP: started without --config, nothing to re-read");
		return;
	}
	snprintf(text, sizeof text, "RELOADING=1\nMONOTONIC_USEC=%.0f", clock_monotonic() * 1e6);
	notify_systemd(text);
	reload(sup);
	notify_systemd("READY=1");
}

static void kill_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;

	(void)fd;
	(void)what;
	pool_kill(sup->pool);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct supervisor *sup = arg;
	struct timeval tv;

	(void)what;
	if (sup->shutting_down) {
		log_warn("%s again: stopping the workers now", strsignal((int)sig));
		kill_timer_cb(-1, 0, sup);
		return;
	}
	sup->shutting_down = 1;
	notify_systemd("STOPPING=1");
	log_info("%s: draining %d workers (at most %.1f s)", strsignal((int)sig),
		 pool_running(sup->pool), sup->cfg.shutdown_timeout);
	pool_drain(sup->pool);
	if (pool_running(sup->pool) == 0) {
		event_base_loopexit(sup->base, NULL);
		return;
	}
	/* Workers bound their own drain by shutdown_timeout; this is the
	 * backstop for one that hangs. */
	sup->kill_timer = evtimer_new(sup->base, kill_timer_cb, sup);
	tv = seconds_tv(sup->cfg.shutdown_timeout + 0.5);
	evtimer_add(sup->kill_timer, &tv);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *sup = arg;

	(void)fd;
	(void)what;
	hub_tick(sup->hub);
	pool_check_stalls(sup->pool);
	tell_systemd_status(sup);
	hub_expire_uploads(sup->hub);
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int supervisor_main(const struct config *cfg, const char *config_path,
		    const char *self_exe)
{
	static struct supervisor sup;
	const int signums[] = { SIGCHLD, SIGHUP, SIGTERM, SIGINT };
	event_callback_fn handlers[] = { reap_cb, reload_cb, stop_cb, stop_cb };
	const struct pool_callbacks pool_cb = {
		.message = worker_message, .gone = worker_gone, .ready = workers_ready,
	};
	char err[1024];
	double started_epoch;

	memset(&sup, 0, sizeof sup);
	sup.cfg = *cfg;
	sup.config_path = config_path;
	log_init("supervisor");
	log_set_level((enum log_level)cfg->log_level);
	raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);

	if (supervisor_check(cfg, 1, err, sizeof err) < 0) {
		fprintf(stderr, "mephisto-router: %s\n", err);
		return EXIT_CONFIG;
	}
	started_epoch = clock_epoch();
	sup.listen_fd = listen_open(cfg, err, sizeof err);
	if (sup.listen_fd < 0) {
		fprintf(stderr, "mephisto-router: %s\n", err);
		return EXIT_CONFIG;
	}
	sup.metrics_fd = metrics_open(cfg);
	sup.store = store_open(cfg->state_path, err, sizeof err);
	if (sup.store == NULL) {
		fprintf(stderr, "mephisto-router: %s\n", err);
		close(sup.listen_fd);
		if (sup.metrics_fd >= 0)
			close(sup.metrics_fd);
		return EXIT_CONFIG;
	}
	if (access(cfg->static_dir, R_OK | X_OK) < 0)
		log_warn("static_dir %s: %s; static files will answer 404",
			 cfg->static_dir, strerror(errno));

	sup.base = event_base_new();
	if (sup.base == NULL)
		fatal("cannot create the event loop");
	sup.pool = pool_new(sup.base, &sup.cfg, self_exe, sup.listen_fd, sup.metrics_fd,
			    &pool_cb, &sup);
	{
		struct route_config rc = route_config_of(cfg);
		struct timeval tv = seconds_tv(TICK_SECONDS);
		size_t agents, packets;
		double started = clock_monotonic();

		sup.route = route_new(&rc, clock_epoch());
		sup.tick = event_new(sup.base, -1, EV_PERSIST, tick_cb, &sup);
		event_add(sup.tick, &tv);
		sup.hub = hub_new(sup.base, &sup.cfg, sup.route, sup.store, sup.pool,
				  started_epoch);
		if (store_load(sup.store, sup.route, clock_epoch(), &agents, &packets, err,
			       sizeof err) < 0) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			sup.exit_code = EXIT_CONFIG;
			goto stop;
		}
		if (agents || packets)
			log_info("recovered %zu agents and %zu queued packets from %s in "
				 "%.0f ms", agents, packets, cfg->state_path,
				 (clock_monotonic() - started) * 1000);
		if (hub_load_uploads(sup.hub, err, sizeof err) < 0) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			sup.exit_code = EXIT_CONFIG;
			goto stop;
		}
		{
			char pid[24];

			/* for "status": whether this router runs */
			snprintf(pid, sizeof pid, "%d", (int)getpid());
			store_set_meta(sup.store, "pid", pid);
			store_set_meta(sup.store, "stopped_at", "0");
		}
		if (store_start(sup.store, err, sizeof err) < 0) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			sup.exit_code = EXIT_CONFIG;
			goto stop;
		}
		hub_start(sup.hub);
	}
	for (size_t i = 0; i < 4; i++) {
		sup.signals[i] = evsignal_new(sup.base, signums[i], handlers[i], &sup);
		evsignal_add(sup.signals[i], NULL);
	}
	log_info("mephisto-router %s starting: port %d, %d workers, state %s",
		 MR_VERSION, cfg->port, config_worker_count(cfg), cfg->state_path);
	pool_resize(sup.pool);
	event_base_dispatch(sup.base);
stop:

	/* Stopped: every worker has exited (or none could run). */
	pool_stop(sup.pool);
	/* Stopping already: a further SIGTERM (a launcher forwarding one more)
	 * must not kill the process before its last commit. */
	{
		sigset_t stop;

		sigemptyset(&stop);
		sigaddset(&stop, SIGTERM);
		sigaddset(&stop, SIGINT);
		sigaddset(&stop, SIGHUP);
		sigprocmask(SIG_BLOCK, &stop, NULL);
	}
	for (size_t i = 0; i < 4; i++)
		if (sup.signals[i] != NULL)
			event_free(sup.signals[i]);
	event_free(sup.tick);
	hub_dispatch(sup.hub);
	{
		char when[32];

		snprintf(when, sizeof when, "%.3f", clock_epoch());
		store_stage_meta(sup.store, "stopped_at", when);
	}
	if (store_commit(sup.store, sup.route, clock_epoch()) < 0)
		log_error("state database: the last changes could not be written");
	hub_free(sup.hub);
	pool_free(sup.pool);
	route_free(sup.route);
	if (sup.kill_timer != NULL)
		event_free(sup.kill_timer);
	event_base_free(sup.base);
	store_close(sup.store);
	close(sup.listen_fd);
	if (sup.metrics_fd >= 0)
		close(sup.metrics_fd);
	log_info("stopped");
	return sup.exit_code;
}
