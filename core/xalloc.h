/* Allocation that cannot fail: out of memory, the process logs it and
 * exits (a worker is restarted by the supervisor), as every caller did by
 * hand. */
#ifndef MR_XALLOC_H
#define MR_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* len bytes of data and a NUL after them. */
char *xmemdup0(const void *data, size_t len);

#endif
