/* The SQLite agent-state database, owned by the supervisor alone. */
#ifndef MR_STORE_H
#define MR_STORE_H

#include <stddef.h>

#define STORE_SCHEMA_VERSION 1

struct store;

/* Open (creating if needed) the database at path, in WAL mode, and apply
 * schema.sql. Returns NULL with the reason in err when the file cannot be
 * opened or written, is not a database, or has a newer schema. */
struct store *store_open(const char *path, char *err, size_t errlen);
void store_close(struct store *s);

/* Set one router_meta row. Returns 0 or -1 (logged). */
int store_set_meta(struct store *s, const char *key, const char *value);

#endif
