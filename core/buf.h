/* The one growable byte buffer: text or bytes appended at the end, the
 * allocation doubling as it fills (out of memory is fatal, core/xalloc.h).
 * A zeroed struct buf (BUF_INIT) is an empty buffer with nothing
 * allocated. */
#ifndef MR_BUF_H
#define MR_BUF_H

#include <stddef.h>

struct buf {
	char *data; /* NULL until something is reserved */
	size_t len; /* bytes used */
	size_t cap; /* bytes allocated */
};

#define BUF_INIT { NULL, 0, 0 }

/* Room for n bytes after the len used (the check inline: it runs for
 * every string of every packet in wire.c's fast path). */
void buf_grow(struct buf *b, size_t n);
static inline void buf_reserve(struct buf *b, size_t n)
{
	if (n > b->cap - b->len)
		buf_grow(b, n);
}
void buf_append(struct buf *b, const void *data, size_t n);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The bytes with a NUL after them, now the caller's to free; *len (when
 * not NULL) is their length. The buffer is empty again. */
char *buf_take(struct buf *b, size_t *len);
void buf_free(struct buf *b);

#endif
