#include "config.h"

#include "buf.h"
#include "cidr.h"
#include "log.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum key_type { KEY_INT, KEY_SIZE, KEY_SECONDS, KEY_PATH, KEY_ADDRESS, KEY_LOG_LEVEL,
		KEY_VERSION, KEY_CIDRS, KEY_ENDPOINT };

struct key {
	const char *name;
	enum key_type type;
	size_t offset;
	const char *default_value;
	double min, max;
	int reloadable; /* SIGHUP applies a new value to the running router */
};

#define OFF(f) offsetof(struct config, f)

/* The single list of keys. README's configuration table follows it. */
static const struct key keys[] = {
	{ "port", KEY_INT, OFF(port), "3000", 1, 65535, 0 },
	{ "listen_address", KEY_ADDRESS, OFF(listen_address), "0.0.0.0", 0, 0, 0 },
	{ "workers", KEY_INT, OFF(workers), "0", 0, CONFIG_MAX_WORKERS, 1 },
	{ "static_dir", KEY_PATH, OFF(static_dir), "./static", 0, 0, 0 },
	{ "upload_dir", KEY_PATH, OFF(upload_dir), "/tmp/", 0, 0, 0 },
	{ "state_path", KEY_PATH, OFF(state_path), "./mephisto-router.db", 0, 0, 0 },
	{ "log_level", KEY_LOG_LEVEL, OFF(log_level), "info", 0, 0, 1 },
	{ "access_log", KEY_INT, OFF(access_log), "0", 0, 1, 1 },
	{ "max_connections", KEY_SIZE, OFF(max_connections), "10000", 1, 1e7, 0 },
	{ "max_connections_per_address", KEY_INT, OFF(max_connections_per_address), "256", 1, 10000000, 1 },
	{ "max_message_bytes", KEY_SIZE, OFF(max_message_bytes), "1M", 256, 1 << 30, 0 },
	{ "max_header_bytes", KEY_SIZE, OFF(max_header_bytes), "8K", 1024, 1 << 20, 0 },
	{ "ipc_buffer_bytes", KEY_SIZE, OFF(ipc_buffer_bytes), "16M", 65536, 1 << 30, 0 },
	{ "ipc_stall_timeout", KEY_SECONDS, OFF(ipc_stall_timeout), "10", 0.1, 3600, 1 },
	{ "shutdown_timeout", KEY_SECONDS, OFF(shutdown_timeout), "5", 0, 3600, 1 },
	{ "respawn_max_delay", KEY_SECONDS, OFF(respawn_max_delay), "10", 0.01, 3600, 1 },
	{ "reconnect_grace", KEY_SECONDS, OFF(reconnect_grace), "10", 0, 86400, 1 },
	{ "heartbeat_timeout", KEY_SECONDS, OFF(heartbeat_timeout), "15", 0.01, 86400, 1 },
	{ "request_timeout", KEY_SECONDS, OFF(request_timeout), "30", 0.01, 86400, 1 },
	{ "max_agents_per_address", KEY_INT, OFF(max_agents_per_address), "600", 1, 10000000, 1 },
	{ "max_agents_per_connection", KEY_INT, OFF(max_agents_per_connection), "4", 1, 8, 1 },
	{ "agent_retention", KEY_SECONDS, OFF(agent_retention), "86400", 0, 1e9, 1 },
	{ "max_agent_queue", KEY_SIZE, OFF(max_agent_queue), "1000", 1, 1e9, 1 },
	{ "max_backend_queue", KEY_SIZE, OFF(max_backend_queue), "100000", 1, 1e9, 1 },
	{ "max_backend_queue_bytes", KEY_SIZE, OFF(max_backend_queue_bytes), "256M", 65536, 1LL << 40, 1 },
	{ "max_backend_queue_age", KEY_SECONDS, OFF(max_backend_queue_age), "3600", 0, 1e9, 1 },
	{ "max_body_bytes", KEY_SIZE, OFF(max_body_bytes), "100M", 1024, 1LL << 40, 1 },
	{ "upload_retention", KEY_SECONDS, OFF(upload_retention), "604800", 0, 1e9, 1 },
	{ "body_timeout", KEY_SECONDS, OFF(body_timeout), "30", 0.1, 86400, 1 },
	{ "body_min_rate", KEY_SIZE, OFF(body_min_rate), "16K", 1, 1LL << 40, 1 },
	{ "body_memory_bytes", KEY_SIZE, OFF(body_memory_bytes), "256M", 65536, 1LL << 40, 1 },
	{ "backend_max_frame_bytes", KEY_SIZE, OFF(backend_max_frame_bytes), "1M", 8192, 1 << 30, 1 },
	{ "mephisto_task_version", KEY_VERSION, OFF(mephisto_task_version), "2.0.4", 0, 0, 1 },
	{ "metrics_listen", KEY_ENDPOINT, OFF(metrics_listen), "127.0.0.1:9466", 0, 0, 0 },
	{ "backend_allow", KEY_CIDRS, OFF(backend_allow), "127.0.0.0/8, ::1", 0, 0, 1 },
	{ "trusted_proxies", KEY_CIDRS, OFF(trusted_proxies), "none", 0, 0, 1 },
};

#define NKEYS (sizeof keys / sizeof keys[0])

static const struct key *key_find(const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

static int parse_number(const struct key *k, const char *v, double *out,
			char *why, size_t whylen)
{
	char *end;
	double mult = 1;

	errno = 0;
	if (k->type == KEY_SECONDS) {
		*out = strtod(v, &end);
	} else {
		long long n = strtoll(v, &end, 10);
		*out = (double)n;
	}
	if (end == v || errno != 0 || !isfinite(*out))
		goto bad;
	if (k->type == KEY_SIZE && *end != '\0' && end[1] == '\0') {
		switch (*end) {
		case 'k': case 'K': mult = 1024.0; end++; break;
		case 'm': case 'M': mult = 1024.0 * 1024; end++; break;
		case 'g': case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
		}
	}
	if (*end != '\0')
		goto bad;
	*out *= mult;
	if (*out < k->min || *out > k->max) {
		snprintf(why, whylen, "must be between %.15g and %.15g", k->min, k->max);
		return -1;
	}
	return 0;
bad:
	snprintf(why, whylen, "%s",
		 k->type == KEY_SIZE ? "expected a number with an optional K, M or G"
		 : k->type == KEY_SECONDS ? "expected seconds"
		 : "expected an integer");
	return -1;
}

int config_set(struct config *c, const char *key, const char *value,
	       char *err, size_t errlen)
{
	const struct key *k = key_find(key);
	char *field;
	char why[128] = "";
	double num;

	if (k == NULL) {
		snprintf(err, errlen, "unknown key '%s'", key);
		return -1;
	}
	field = (char *)c + k->offset;
	switch (k->type) {
	case KEY_INT:
	case KEY_SIZE:
	case KEY_SECONDS:
		if (parse_number(k, value, &num, why, sizeof why) < 0)
			goto invalid;
		if (k->type == KEY_INT)
			*(int *)(void *)field = (int)num;
		else if (k->type == KEY_SIZE)
			*(int64_t *)(void *)field = (int64_t)num;
		else
			*(double *)(void *)field = num;
		return 0;
	case KEY_PATH:
		if (value[0] == '\0' || strlen(value) >= PATH_MAX) {
			snprintf(why, sizeof why, "expected a non-empty path");
			goto invalid;
		}
		strcpy(field, value);
		return 0;
	case KEY_ADDRESS: {
		unsigned char buf[sizeof(struct in6_addr)];
		if (strlen(value) >= sizeof c->listen_address ||
		    (inet_pton(AF_INET, value, buf) != 1 &&
		     inet_pton(AF_INET6, value, buf) != 1)) {
			snprintf(why, sizeof why, "expected an IPv4 or IPv6 address");
			goto invalid;
		}
		strcpy(field, value);
		return 0;
	}
	case KEY_VERSION:
		if (value[0] == '\0' || strlen(value) >= sizeof c->mephisto_task_version ||
		    strpbrk(value, " \t\"\\") != NULL) {
			snprintf(why, sizeof why, "expected a version such as 2.0.4");
			goto invalid;
		}
		strcpy(field, value);
		return 0;
	case KEY_ENDPOINT: {
		char addr[64];
		int port;
		if (strlen(value) >= sizeof c->metrics_listen ||
		    config_endpoint(value, addr, sizeof addr, &port) < 0) {
			snprintf(why, sizeof why, "expected address:port ([v6]:port) or none");
			goto invalid;
		}
		strcpy(field, value);
		return 0;
	}
	case KEY_CIDRS: {
		struct cidr_list list;
		if (cidr_list_parse(value, &list, why, sizeof why) < 0)
			goto invalid;
		if (strlen(value) >= sizeof c->backend_allow) {
			snprintf(why, sizeof why, "too long");
			goto invalid;
		}
		strcpy(field, value);
		return 0;
	}
	case KEY_LOG_LEVEL: {
		enum log_level level;
		if (log_level_parse(value, &level) < 0) {
			snprintf(why, sizeof why, "expected error, warn, info or debug");
			goto invalid;
		}
		*(int *)(void *)field = (int)level;
		return 0;
	}
	}
invalid:
	snprintf(err, errlen, "%s: invalid value '%s' (%s)", key, value, why);
	return -1;
}

int config_endpoint(const char *text, char *addr, size_t addrlen, int *port)
{
	const char *colon;
	unsigned char buf[sizeof(struct in6_addr)];
	char *end;
	long p;
	size_t n;

	if (strcmp(text, "none") == 0) {
		*port = 0;
		addr[0] = '\0';
		return 0;
	}
	colon = strrchr(text, ':');
	if (colon == NULL)
		return -1;
	if (text[0] == '[') {
		if (colon == text || colon[-1] != ']')
			return -1;
		n = (size_t)(colon - 1 - (text + 1));
		text++;
	} else {
		n = (size_t)(colon - text);
	}
	if (n == 0 || n >= addrlen)
		return -1;
	memcpy(addr, text, n);
	addr[n] = '\0';
	if (inet_pton(AF_INET, addr, buf) != 1 && inet_pton(AF_INET6, addr, buf) != 1)
		return -1;
	p = strtol(colon + 1, &end, 10);
	if (end == colon + 1 || *end != '\0' || p < 1 || p > 65535)
		return -1;
	*port = (int)p;
	return 0;
}

void config_defaults(struct config *c)
{
	char err[256];

	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NKEYS; i++)
		if (config_set(c, keys[i].name, keys[i].default_value, err,
			       sizeof err) < 0)
			fatal("bad built-in default: %s", err);
}

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

int config_parse(struct config *c, const char *text, const char *name,
		 char *err, size_t errlen)
{
	char seen[NKEYS] = { 0 };
	char *copy = xstrdup(text), *line, *next;
	int lineno = 0, rc = 0;

	for (line = copy; line != NULL && rc == 0; line = next) {
		char *eq, *key, *value, why[512];
		const struct key *k;

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		lineno++;
		line = trim(line);
		if (line[0] == '\0' || line[0] == '#')
			continue;
		eq = strchr(line, '=');
		if (eq == NULL) {
			snprintf(err, errlen, "%s:%d: expected 'key = value', got '%.60s'",
				 name, lineno, line);
			rc = -1;
			break;
		}
		*eq = '\0';
		key = trim(line);
		value = trim(eq + 1);
		k = key_find(key);
		if (k != NULL && seen[k - keys]) {
			snprintf(err, errlen, "%s:%d: duplicated key '%s'", name,
				 lineno, key);
			rc = -1;
		} else if (config_set(c, key, value, why, sizeof why) < 0) {
			snprintf(err, errlen, "%s:%d: %s", name, lineno, why);
			rc = -1;
		} else {
			seen[k - keys] = 1;
		}
	}
	free(copy);
	return rc;
}

int config_load_file(struct config *c, const char *path, char *err,
		     size_t errlen)
{
	FILE *f = fopen(path, "r");
	char *text;
	long size = 0;
	int rc;

	if (f == NULL) {
		snprintf(err, errlen, "cannot read config file %s: %s", path,
			 strerror(errno));
		return -1;
	}
	if (fseek(f, 0, SEEK_END) < 0 || (size = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET) < 0 || size > 1 << 20) {
		snprintf(err, errlen, "cannot read config file %s: %s", path,
			 size > 1 << 20 ? "larger than 1 MiB" : strerror(errno));
		fclose(f);
		return -1;
	}
	text = xmalloc((size_t)size + 1);
	if (fread(text, 1, (size_t)size, f) != (size_t)size) {
		snprintf(err, errlen, "cannot read config file %s", path);
		free(text);
		fclose(f);
		return -1;
	}
	text[size] = '\0';
	fclose(f);
	if (strlen(text) != (size_t)size) {
		snprintf(err, errlen, "%s: config file contains a NUL byte", path);
		free(text);
		return -1;
	}
	rc = config_parse(c, text, path, err, errlen);
	free(text);
	return rc;
}

int config_apply_env(struct config *c, char *err, size_t errlen)
{
	const char *port = getenv("PORT");
	char why[256];

	if (port == NULL || port[0] == '\0')
		return 0;
	if (config_set(c, "port", port, why, sizeof why) < 0) {
		snprintf(err, errlen, "environment variable PORT: %s", why);
		return -1;
	}
	return 0;
}

static void format_value(const struct config *c, const struct key *k,
			 char *out, size_t outlen)
{
	const char *field = (const char *)c + k->offset;

	switch (k->type) {
	case KEY_INT:
		snprintf(out, outlen, "%d", *(const int *)(const void *)field);
		break;
	case KEY_SIZE:
		snprintf(out, outlen, "%lld",
			 (long long)*(const int64_t *)(const void *)field);
		break;
	case KEY_SECONDS:
		snprintf(out, outlen, "%.17g", *(const double *)(const void *)field);
		break;
	case KEY_PATH:
	case KEY_ADDRESS:
	case KEY_VERSION:
	case KEY_CIDRS:
	case KEY_ENDPOINT:
		snprintf(out, outlen, "%s", field);
		break;
	case KEY_LOG_LEVEL:
		snprintf(out, outlen, "%s",
			 log_level_name((enum log_level)*(const int *)(const void *)field));
		break;
	}
}

char *config_format(const struct config *c)
{
	struct buf out = BUF_INIT;

	for (size_t i = 0; i < NKEYS; i++) {
		char value[PATH_MAX + 64];

		format_value(c, &keys[i], value, sizeof value);
		buf_printf(&out, "%s = %s\n", keys[i].name, value);
	}
	return buf_take(&out, NULL);
}

static size_t field_size(enum key_type type)
{
	switch (type) {
	case KEY_INT:
	case KEY_LOG_LEVEL: return sizeof(int);
	case KEY_SIZE: return sizeof(int64_t);
	case KEY_SECONDS: return sizeof(double);
	case KEY_PATH: return PATH_MAX;
	case KEY_ADDRESS: return sizeof ((struct config *)0)->listen_address;
	case KEY_VERSION: return sizeof ((struct config *)0)->mephisto_task_version;
	case KEY_CIDRS: return sizeof ((struct config *)0)->backend_allow;
	case KEY_ENDPOINT: return sizeof ((struct config *)0)->metrics_listen;
	}
	return 0;
}

int config_reload(struct config *running, const struct config *loaded,
		  char *restart_keys, size_t len)
{
	int count = 0;
	size_t used = 0;

	if (len > 0)
		restart_keys[0] = '\0';
	for (size_t i = 0; i < NKEYS; i++) {
		char *dst = (char *)running + keys[i].offset;
		const char *src = (const char *)loaded + keys[i].offset;
		size_t size = field_size(keys[i].type);
		int is_text = keys[i].type == KEY_PATH || keys[i].type == KEY_ADDRESS ||
			      keys[i].type == KEY_VERSION || keys[i].type == KEY_CIDRS ||
			      keys[i].type == KEY_ENDPOINT;

		if (is_text ? strcmp(dst, src) == 0 : memcmp(dst, src, size) == 0)
			continue;
		if (keys[i].reloadable) {
			memcpy(dst, src, size);
			continue;
		}
		if (used < len)
			used += (size_t)snprintf(restart_keys + used, len - used,
						 "%s%s", count ? ", " : "",
						 keys[i].name);
		count++;
	}
	return count;
}

int config_worker_count(const struct config *c)
{
	long n;

	if (c->workers > 0)
		return c->workers;
	n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	return n > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : (int)n;
}
