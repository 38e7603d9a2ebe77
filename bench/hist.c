/* Latency histogram: log-linear buckets, mergeable (see bench.h). */
#include "bench.h"

#include <math.h>
#include <string.h>

void hist_reset(struct hist *h)
{
	memset(h, 0, sizeof *h);
}

static unsigned bucket_of(uint64_t v)
{
	unsigned k;

	if (v < 64)
		return (unsigned)v;
	k = 63 - (unsigned)__builtin_clzll(v); /* 2^k <= v < 2^(k+1), k >= 6 */
	if (k >= 40)
		return HIST_BUCKETS - 1;
	return 64 + (k - 6) * HIST_SUB + (unsigned)((v >> (k - 5)) & (HIST_SUB - 1));
}

/* The middle of a bucket's range. */
static double bucket_value(unsigned b)
{
	unsigned k, sub;
	double lo, width;

	if (b < 64)
		return b;
	k = (b - 64) / HIST_SUB + 6;
	sub = (b - 64) % HIST_SUB;
	width = ldexp(1.0, (int)k - 5);
	lo = ldexp(1.0, (int)k) + sub * width;
	return lo + width / 2;
}

void hist_add(struct hist *h, uint64_t ns)
{
	h->bucket[bucket_of(ns)]++;
	h->count++;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

void hist_merge(struct hist *into, const struct hist *from)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		into->bucket[i] += from->bucket[i];
	into->count += from->count;
	if (from->max_ns > into->max_ns)
		into->max_ns = from->max_ns;
}

double hist_quantile_ms(const struct hist *h, double q)
{
	uint64_t rank, seen = 0;

	if (h->count == 0)
		return NAN;
	rank = (uint64_t)ceil(q * (double)h->count);
	if (rank < 1)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			double v = bucket_value(i);
			if (v > (double)h->max_ns)
				v = (double)h->max_ns;
			return v / 1e6;
		}
	}
	return (double)h->max_ns / 1e6;
}
