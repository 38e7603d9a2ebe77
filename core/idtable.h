/* Pointers addressed by 64-bit ids that are never reused: the slot index in
 * the low 32 bits, the slot's generation in the high 32. A stale id (its
 * object gone, the slot reused) finds nothing. O(1) everything. */
#ifndef MR_IDTABLE_H
#define MR_IDTABLE_H

#include <stddef.h>
#include <stdint.h>

struct idtable {
	void **items;
	uint32_t *generations;
	uint32_t *free_slots;
	uint32_t cap, used, nfree;
	size_t count;
};

uint64_t idtable_add(struct idtable *t, void *item);
void *idtable_get(const struct idtable *t, uint64_t id);
void *idtable_del(struct idtable *t, uint64_t id);
/* Iterate: *pos starts at 0; returns NULL when done. */
void *idtable_next(const struct idtable *t, uint32_t *pos);
void idtable_free(struct idtable *t);

#endif
