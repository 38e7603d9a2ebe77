#include "map.h"

#include "xalloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	uint64_t hash;
	char *key; /* NULL: empty */
	size_t len;
	void *value;
};

struct map {
	struct entry *slots;
	size_t cap; /* power of two */
	size_t count;
};

static uint64_t hash_bytes(const void *key, size_t len)
{
	const unsigned char *p = key;
	uint64_t h = 1469598103934665603ULL;

	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 1099511628211ULL;
	}
	return h ^ (h >> 29);
}

struct map *map_new(void)
{
	struct map *m = xcalloc(1, sizeof *m);

	m->cap = 16;
	m->slots = xcalloc(m->cap, sizeof *m->slots);
	return m;
}

void map_free(struct map *m)
{
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->cap; i++)
		free(m->slots[i].key);
	free(m->slots);
	free(m);
}

static size_t find(const struct map *m, uint64_t h, const void *key, size_t len)
{
	size_t i = h & (m->cap - 1);

	while (m->slots[i].key != NULL) {
		if (m->slots[i].hash == h && m->slots[i].len == len &&
		    memcmp(m->slots[i].key, key, len) == 0)
			return i;
		i = (i + 1) & (m->cap - 1);
	}
	return i;
}

static void grow(struct map *m)
{
	struct entry *old = m->slots;
	size_t oldcap = m->cap;

	m->cap *= 2;
	m->slots = xcalloc(m->cap, sizeof *m->slots);
	for (size_t i = 0; i < oldcap; i++) {
		if (old[i].key != NULL) {
			size_t j = old[i].hash & (m->cap - 1);
			while (m->slots[j].key != NULL)
				j = (j + 1) & (m->cap - 1);
			m->slots[j] = old[i];
		}
	}
	free(old);
}

void *map_get(const struct map *m, const void *key, size_t len)
{
	size_t i = find(m, hash_bytes(key, len), key, len);

	return m->slots[i].key != NULL ? m->slots[i].value : NULL;
}

void *map_put(struct map *m, const void *key, size_t len, void *value)
{
	uint64_t h = hash_bytes(key, len);
	size_t i;
	void *old;

	if ((m->count + 1) * 4 > m->cap * 3)
		grow(m);
	i = find(m, h, key, len);
	if (m->slots[i].key != NULL) {
		old = m->slots[i].value;
		m->slots[i].value = value;
		return old;
	}
	m->slots[i].key = xmalloc(len);
	memcpy(m->slots[i].key, key, len);
	m->slots[i].len = len;
	m->slots[i].hash = h;
	m->slots[i].value = value;
	m->count++;
	return NULL;
}

void *map_del(struct map *m, const void *key, size_t len)
{
	size_t i = find(m, hash_bytes(key, len), key, len), j;
	void *value;

	if (m->slots[i].key == NULL)
		return NULL;
	value = m->slots[i].value;
	free(m->slots[i].key);
	m->slots[i].key = NULL;
	m->count--;
	/* Backward-shift the entries that probed past the hole. */
	j = i;
	for (;;) {
		size_t home;
		j = (j + 1) & (m->cap - 1);
		if (m->slots[j].key == NULL)
			break;
		home = m->slots[j].hash & (m->cap - 1);
		if (((j - home) & (m->cap - 1)) >= ((j - i) & (m->cap - 1))) {
			m->slots[i] = m->slots[j];
			m->slots[j].key = NULL;
			i = j;
		}
	}
	return value;
}

size_t map_count(const struct map *m) { return m->count; }

int map_next(const struct map *m, size_t *pos, const void **key, size_t *len,
	     void **value)
{
	while (*pos < m->cap) {
		const struct entry *e = &m->slots[(*pos)++];
		if (e->key != NULL) {
			if (key)
				*key = e->key;
			if (len)
				*len = e->len;
			if (value)
				*value = e->value;
			return 1;
		}
	}
	return 0;
}
