/* A hash map from byte-string keys (copied) to pointers: open addressing
 * with linear probing and backward-shift deletion. */
#ifndef MR_MAP_H
#define MR_MAP_H

#include <stddef.h>

struct map;

struct map *map_new(void);
void map_free(struct map *m);
void *map_get(const struct map *m, const void *key, size_t len);
/* Insert or replace; returns the previous value or NULL. */
void *map_put(struct map *m, const void *key, size_t len, void *value);
/* Remove; returns the removed value or NULL. */
void *map_del(struct map *m, const void *key, size_t len);
size_t map_count(const struct map *m);

/* Iteration: start with *pos = 0; returns 0 when done. Do not insert or
 * delete while iterating. */
int map_next(const struct map *m, size_t *pos, const void **key, size_t *len,
	     void **value);

#endif
