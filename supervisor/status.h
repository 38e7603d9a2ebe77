#ifndef MR_STATUS_H
#define MR_STATUS_H

#include <stddef.h>
#include <stdio.h>

/* Print the summary of the state database at path, and when the router
 * that wrote it runs, its live figures from the /metrics it serves on
 * `listen` (metrics_listen). Returns 0, or -1 with the reason in err. Opens
 * the database read-only. */
int status_print(const char *path, const char *listen, FILE *out, char *err,
		 size_t errlen);
/* The same as one JSON object, for scripts ("live": every sample of
 * /metrics by name{labels}, or "live_unavailable": why not). */
int status_print_json(const char *path, const char *listen, FILE *out, char *err,
		      size_t errlen);

#endif
