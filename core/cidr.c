#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_one(const char *text, struct cidr *c)
{
	char addr[64];
	const char *slash = strchr(text, '/');
	size_t len = slash ? (size_t)(slash - text) : strlen(text);
	int max;

	if (len == 0 || len >= sizeof addr)
		return -1;
	memcpy(addr, text, len);
	addr[len] = '\0';
	memset(c, 0, sizeof *c);
	if (inet_pton(AF_INET, addr, c->addr) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, addr, c->addr) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		return -1;
	}
	c->prefix = max;
	if (slash != NULL) {
		char *end;
		long p = strtol(slash + 1, &end, 10);

		if (end == slash + 1 || *end != '\0' || p < 0 || p > max)
			return -1;
		c->prefix = (int)p;
	}
	return 0;
}

int cidr_list_parse(const char *text, struct cidr_list *out, char *err, size_t errlen)
{
	char copy[1024], *save = NULL, *tok;

	memset(out, 0, sizeof *out);
	if (strlen(text) >= sizeof copy) {
		snprintf(err, errlen, "the list is longer than %zu bytes", sizeof copy - 1);
		return -1;
	}
	strcpy(copy, text);
	if (strcmp(copy, "none") == 0)
		return 0;
	for (tok = strtok_r(copy, ", \t", &save); tok != NULL;
	     tok = strtok_r(NULL, ", \t", &save)) {
		if (out->count == CIDR_MAX) {
			snprintf(err, errlen, "more than %d entries", CIDR_MAX);
			return -1;
		}
		if (parse_one(tok, &out->entry[out->count]) < 0) {
			snprintf(err, errlen, "'%.64s' is not an address or address/prefix", tok);
			return -1;
		}
		out->count++;
	}
	return 0;
}

static int prefix_equal(const unsigned char *a, const unsigned char *b, int bits)
{
	int bytes = bits / 8, rest = bits % 8;

	if (memcmp(a, b, (size_t)bytes) != 0)
		return 0;
	if (rest == 0)
		return 1;
	return ((a[bytes] ^ b[bytes]) & (0xff << (8 - rest))) == 0;
}

static int match(const struct cidr_list *l, int family, const unsigned char *addr)
{
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (family == AF_INET6 && memcmp(addr, mapped, sizeof mapped) == 0) {
		family = AF_INET;
		addr += 12;
	}
	for (size_t i = 0; i < l->count; i++)
		if (l->entry[i].family == family &&
		    prefix_equal(l->entry[i].addr, addr, l->entry[i].prefix))
			return 1;
	return 0;
}

int cidr_list_match_sockaddr(const struct cidr_list *l, const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return match(l, AF_INET,
			     (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr);
	if (sa->sa_family == AF_INET6)
		return match(l, AF_INET6,
			     ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
	return 0;
}

int cidr_list_match_text(const struct cidr_list *l, const char *text)
{
	unsigned char addr[16];

	if (inet_pton(AF_INET, text, addr) == 1)
		return match(l, AF_INET, addr);
	if (inet_pton(AF_INET6, text, addr) == 1)
		return match(l, AF_INET6, addr);
	return 0;
}
