/* The checks a configuration must pass before the router starts, shared by
 * the start itself and --check-config, so that a file the check passes is
 * one the router runs with (and SIGHUP's reload can be checked first). */
#include "supervisor.h"

#include "../core/ipc.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* A folder the router writes into: there (made, when create; for a check,
 * one the start can make will do), a folder, writable. */
static int writable_dir(const char *key, const char *dir, int create, char *err,
			size_t errlen)
{
	char copy[PATH_MAX];
	struct stat st;
	int e;

	if (stat(dir, &st) < 0) {
		e = errno;
		if (e == ENOENT && create && mkdir(dir, 0700) == 0)
			return writable_dir(key, dir, 0, err, errlen);
		snprintf(copy, sizeof copy, "%s", dir);
		if (e == ENOENT && !create && access(dirname(copy), W_OK | X_OK) == 0)
			return 0; /* the start makes it */
		snprintf(err, errlen, "%s %s: %s", key, dir, strerror(e));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s %s: not a folder", key, dir);
		return -1;
	}
	if (access(dir, W_OK | X_OK) < 0) {
		snprintf(err, errlen, "%s %s: not writable by this user (%s)", key, dir,
			 strerror(errno));
		return -1;
	}
	return 0;
}

/* The state database's file, or its folder when it does not exist yet. */
static int state_path_usable(const char *path, char *err, size_t errlen)
{
	char copy[PATH_MAX];

	if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0)
		return 0;
	if (access(path, F_OK) == 0) {
		if (access(path, R_OK | W_OK) < 0) {
			snprintf(err, errlen, "state_path %s: %s", path, strerror(errno));
			return -1;
		}
		return store_check_file(path, err, errlen);
	}
	snprintf(copy, sizeof copy, "%s", path);
	if (access(dirname(copy), W_OK | X_OK) < 0) {
		snprintf(copy, sizeof copy, "%s", path);
		snprintf(err, errlen, "state_path %s: its folder %s is missing or not "
			 "writable (%s)", path, dirname(copy), strerror(errno));
		return -1;
	}
	return 0;
}

int supervisor_check(const struct config *c, int create, char *err, size_t errlen)
{
	size_t message = ipc_max_message(c->max_message_bytes, c->backend_max_frame_bytes);
	struct rlimit rl;
	rlim_t need = (rlim_t)c->max_connections + 64;

	if ((size_t)c->ipc_buffer_bytes < message) {
		snprintf(err, errlen, "ipc_buffer_bytes (%lld) must hold one IPC message of "
			 "the largest packet (%zu bytes for max_message_bytes = %lld and "
			 "backend_max_frame_bytes = %lld)", (long long)c->ipc_buffer_bytes,
			 message, (long long)c->max_message_bytes,
			 (long long)c->backend_max_frame_bytes);
		return -1;
	}
	if (c->body_memory_bytes < c->backend_max_frame_bytes + 1024) {
		snprintf(err, errlen, "body_memory_bytes (%lld) cannot hold one POST body "
			 "of backend_max_frame_bytes (%lld)", (long long)c->body_memory_bytes,
			 (long long)c->backend_max_frame_bytes);
		return -1;
	}
	/* The limit the supervisor raises itself to (soft up to hard); at
	 * start each worker checks it and exits 2 (not respawned), so only
	 * the check looks here. */
	if (!create && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max < need) {
		snprintf(err, errlen, "max_connections = %lld needs %llu open files but the "
			 "limit is %llu: lower max_connections or raise the limit (ulimit -n, "
			 "LimitNOFILE=)", (long long)c->max_connections,
			 (unsigned long long)need, (unsigned long long)rl.rlim_max);
		return -1;
	}
	if (writable_dir("upload_dir", c->upload_dir, create, err, errlen) < 0 ||
	    state_path_usable(c->state_path, err, errlen) < 0)
		return -1;
	return 0;
}
