#include "buf.h"

#include "log.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_FIRST 1024 /* the first allocation; then doubled */

void buf_grow(struct buf *b, size_t n)
{
	size_t need = b->len + n, cap;

	if (need <= b->cap)
		return;
	if (need < b->len || need > SIZE_MAX / 2)
		fatal("buf_reserve: %zu more bytes after %zu is too many", n, b->len);
	cap = b->cap ? b->cap : BUF_FIRST;
	while (cap < need)
		cap *= 2;
	b->data = xrealloc(b->data, cap);
	b->cap = cap;
}

void buf_append(struct buf *b, const void *data, size_t n)
{
	if (n == 0)
		return;
	buf_reserve(b, n);
	memcpy(b->data + b->len, data, n);
	b->len += n;
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
	size_t room = b->cap - b->len;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(room > 0 ? b->data + b->len : NULL, room, fmt, ap);
	va_end(ap);
	if (n < 0)
		fatal("buf_printf: bad format \"%s\"", fmt);
	if ((size_t)n >= room) { /* it did not fit (with its NUL): again, with room */
		buf_reserve(b, (size_t)n + 1);
		va_start(ap, fmt);
		vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	b->len += (size_t)n;
}

char *buf_take(struct buf *b, size_t *len)
{
	char *data;

	buf_reserve(b, 1);
	b->data[b->len] = '\0';
	data = b->data;
	if (len != NULL)
		*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return data;
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}
