/* The supervisor process: binds the port, owns the state database, forks
 * and watches the workers (pool.c), and is the hub of their IPC (hub.c);
 * supervisor.c starts, signals and stops it. */
#ifndef MR_SUPERVISOR_H
#define MR_SUPERVISOR_H

#include "../core/config.h" /* and EXIT_CONFIG */

/* Run the router until SIGTERM/SIGINT. config_path may be NULL (embedded
 * default; SIGHUP then has nothing to re-read). self_exe is what workers
 * are executed from. Returns the process exit code. */
int supervisor_main(const struct config *cfg, const char *config_path,
		    const char *self_exe);

/* Everything a configuration must pass to start (combinations of keys, the
 * open-file limit, upload_dir and state_path usable), for the start itself
 * (create: a missing upload_dir is made, 0700) and --check-config (nothing
 * is made). Returns 0, or -1 with the reason in err. */
int supervisor_check(const struct config *c, int create, char *err, size_t errlen);

#endif
