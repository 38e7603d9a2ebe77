#include "idtable.h"

#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

uint64_t idtable_add(struct idtable *t, void *item)
{
	uint32_t idx;

	if (t->nfree > 0) {
		idx = t->free_slots[--t->nfree];
	} else {
		if (t->used == t->cap) {
			uint32_t cap = t->cap ? t->cap * 2 : 64;
			t->items = xrealloc(t->items, cap * sizeof *t->items);
			t->generations = xrealloc(t->generations, cap * sizeof *t->generations);
			t->free_slots = xrealloc(t->free_slots, cap * sizeof *t->free_slots);
			memset(t->generations + t->cap, 0,
			       (cap - t->cap) * sizeof *t->generations);
			t->cap = cap;
		}
		idx = t->used++;
	}
	t->generations[idx]++;
	t->items[idx] = item;
	t->count++;
	return ((uint64_t)t->generations[idx] << 32) | idx;
}

void *idtable_get(const struct idtable *t, uint64_t id)
{
	uint32_t idx = (uint32_t)id;

	if (idx >= t->used || t->items[idx] == NULL ||
	    t->generations[idx] != (uint32_t)(id >> 32))
		return NULL;
	return t->items[idx];
}

void *idtable_del(struct idtable *t, uint64_t id)
{
	void *item = idtable_get(t, id);

	if (item != NULL) {
		t->items[(uint32_t)id] = NULL;
		t->free_slots[t->nfree++] = (uint32_t)id;
		t->count--;
	}
	return item;
}

void *idtable_next(const struct idtable *t, uint32_t *pos)
{
	while (*pos < t->used) {
		void *item = t->items[(*pos)++];
		if (item != NULL)
			return item;
	}
	return NULL;
}

void idtable_free(struct idtable *t)
{
	free(t->items);
	free(t->generations);
	free(t->free_slots);
	memset(t, 0, sizeof *t);
}
