#ifndef MR_STATUS_H
#define MR_STATUS_H

#include <stddef.h>
#include <stdio.h>

/* Print the summary of the state database at path. Returns 0, or -1 with
 * the reason in err. Opens the database read-only. */
int status_print(const char *path, FILE *out, char *err, size_t errlen);
/* The same as one JSON object, for scripts. */
int status_print_json(const char *path, FILE *out, char *err, size_t errlen);

#endif
