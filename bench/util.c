/* Clocks, limits, and just enough JSON reading for packets. */
#include "bench.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

uint64_t now_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

long raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur == RLIM_INFINITY ? 1L << 20 : (long)rl.rlim_cur;
}

static const char *skip_blanks(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

const char *json_find(const char *text, size_t len, const char *key)
{
	const char *end = text + len, *p = text;
	size_t klen = strlen(key);

	while (p < end) {
		const char *q = memchr(p, '"', (size_t)(end - p));

		if (q == NULL || (size_t)(end - q) < klen + 2)
			return NULL;
		if (memcmp(q + 1, key, klen) == 0 && q[klen + 1] == '"') {
			const char *v = skip_blanks(q + klen + 2, end);
			if (v < end && *v == ':')
				return skip_blanks(v + 1, end);
		}
		p = q + 1;
	}
	return NULL;
}

int json_string_at(const char *p, const char *end, const char **s, size_t *n)
{
	const char *q;

	if (p == NULL || p >= end || *p != '"')
		return -1;
	q = memchr(p + 1, '"', (size_t)(end - p - 1));
	if (q == NULL)
		return -1;
	*s = p + 1;
	*n = (size_t)(q - p - 1);
	return 0;
}

int json_get_string(const char *text, size_t len, const char *key,
		    const char **s, size_t *n)
{
	return json_string_at(json_find(text, len, key), text + len, s, n);
}

int json_get_u64(const char *text, size_t len, const char *key, uint64_t *out)
{
	const char *p = json_find(text, len, key), *end = text + len;
	uint64_t v = 0;

	if (p == NULL || p >= end || *p < '0' || *p > '9')
		return -1;
	while (p < end && *p >= '0' && *p <= '9')
		v = v * 10 + (uint64_t)(*p++ - '0');
	*out = v;
	return 0;
}

const char *fmt_count(char *buf, size_t size, double v)
{
	char digits[32];
	size_t n, o = 0;
	long long x = (long long)(v + (v >= 0 ? 0.5 : -0.5));

	if (x < 0) {
		if (o + 1 < size)
			buf[o++] = '-';
		x = -x;
	}
	n = (size_t)snprintf(digits, sizeof digits, "%lld", x);
	for (size_t i = 0; i < n && o + 1 < size; i++) {
		if (i > 0 && (n - i) % 3 == 0 && o + 1 < size)
			buf[o++] = ',';
		if (o + 1 < size)
			buf[o++] = digits[i];
	}
	buf[o] = '\0';
	return buf;
}
