/* The router's configuration: a table of keys (name, type, default, bounds,
 * whether SIGHUP may change it), parsed from "key = value" text.
 *
 * The same parser reads the config file, the embedded default and the
 * config text the supervisor hands each worker in its hello message, so
 * every process runs on exactly the supervisor's view of the config. */
#ifndef MR_CONFIG_H
#define MR_CONFIG_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_WORKERS 64

/* Exit code of a process whose configuration cannot work: the supervisor
 * at start, or a worker that cannot serve with the config it was given.
 * Such a worker is not respawned. */
#define EXIT_CONFIG 2

/* "a.b.c.d:port", "[v6]:port" or "none" into address and port (0 for
 * none). Returns 0 or -1. */
int config_endpoint(const char *text, char *addr, size_t addrlen, int *port);

struct config {
	int port;
	char listen_address[64];
	int workers; /* 0: one per CPU; see config_worker_count() */
	char static_dir[PATH_MAX];
	char upload_dir[PATH_MAX];
	char state_path[PATH_MAX];
	int log_level; /* enum log_level */
	int access_log; /* 1: a line per HTTP request */
	int64_t max_connections; /* per worker */
	int max_connections_per_address; /* per worker */
	int64_t max_message_bytes;
	int64_t max_header_bytes;
	int64_t ipc_buffer_bytes;
	double ipc_stall_timeout; /* s a worker may leave its IPC unread */
	double shutdown_timeout; /* seconds */
	double respawn_max_delay; /* seconds */
	/* the protocol */
	double reconnect_grace;   /* s after a socket closes before "disconnect" */
	double heartbeat_timeout; /* s without heartbeat in a live status */
	double request_timeout;   /* s an HTTP request waits for agent_details */
	double agent_retention;       /* s; 0: agents are never forgotten */
	int max_agents_per_connection;
	int max_agents_per_address; /* new agent ids a minute, per worker */
	int64_t max_agent_queue;
	int64_t max_backend_queue;
	int64_t max_backend_queue_bytes;
	double max_backend_queue_age; /* s; 0: no age limit */
	int64_t max_body_bytes;       /* POST body, uploads included */
	double upload_retention;      /* s an upload is kept; 0: forever */
	double body_timeout;          /* s a body may take, plus its size at: */
	int64_t body_min_rate;        /* bytes per second */
	int64_t body_memory_bytes;    /* bodies held in memory, per worker */
	int64_t backend_max_frame_bytes;
	char mephisto_task_version[64];
	/* address lists (core/cidr.h), as written */
	char metrics_listen[80];    /* "address:port" of /metrics, or "none" */
	char backend_allow[1024];   /* who may become the backend channel */
	char trusted_proxies[1024]; /* whose X-Forwarded-For is believed */
};

_Static_assert(sizeof ((struct config *)0)->backend_allow ==
		       sizeof ((struct config *)0)->trusted_proxies,
	       "config.c sizes every address list as backend_allow");

/* Fill every key with its default. */
void config_defaults(struct config *c);

/* Set one key from its text form. On error returns -1 and writes
 * "unknown key 'k'" or "k: invalid value 'v' (why)" into err. */
int config_set(struct config *c, const char *key, const char *value,
	       char *err, size_t errlen);

/* Parse "key = value" lines ('#' comments, blank lines). A duplicated key is
 * an error. name prefixes error messages: "name:line: ...". */
int config_parse(struct config *c, const char *text, const char *name,
		 char *err, size_t errlen);

/* Read and parse a file; errors name the file (and line). */
int config_load_file(struct config *c, const char *path, char *err,
		     size_t errlen);

/* Apply environment overrides (PORT). */
int config_apply_env(struct config *c, char *err, size_t errlen);

/* The effective config as "key = value\n" lines, in table order.
 * Returns a malloc'ed string. */
char *config_format(const struct config *c);

/* SIGHUP: copy into running the keys of loaded that a running router can
 * change (workers, log_level, timeouts). The names of the other keys whose
 * values differ, which need a restart, are written comma-separated into
 * restart_keys. Returns how many such keys there are. */
int config_reload(struct config *running, const struct config *loaded,
		  char *restart_keys, size_t len);

/* The number of workers to run: workers, or the CPU count when 0. */
int config_worker_count(const struct config *c);

#endif
