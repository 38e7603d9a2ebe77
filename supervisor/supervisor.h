/* The supervisor process: binds the port, owns the state database, forks
 * and watches the workers, and is the hub of their IPC. */
#ifndef MR_SUPERVISOR_H
#define MR_SUPERVISOR_H

#include "../core/config.h"

/* Exit code of a process whose configuration cannot work: the supervisor
 * at start, or a worker that cannot serve with the config it was given.
 * Such a worker is not respawned. */
#define EXIT_CONFIG 2

/* Run the router until SIGTERM/SIGINT. config_path may be NULL (embedded
 * default; SIGHUP then has nothing to re-read). self_exe is what workers
 * are executed from. Returns the process exit code. */
int supervisor_main(const struct config *cfg, const char *config_path,
		    const char *self_exe);

#endif
