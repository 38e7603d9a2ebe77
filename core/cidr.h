/* Address lists for access rules: "127.0.0.0/8, ::1, 10.1.2.3/32", IPv4
 * and IPv6, a bare address meaning one host. An IPv4 peer seen through an
 * IPv6 socket (::ffff:a.b.c.d) matches the IPv4 entries. Pure: no IO. */
#ifndef MR_CIDR_H
#define MR_CIDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CIDR_MAX 32 /* entries in one list */

struct cidr {
	int family; /* AF_INET or AF_INET6 */
	unsigned char addr[16];
	int prefix; /* bits */
};

struct cidr_list {
	struct cidr entry[CIDR_MAX];
	size_t count;
};

/* Parse a comma- or space-separated list ("" or "none": empty). Returns 0,
 * or -1 with the reason in err. */
int cidr_list_parse(const char *text, struct cidr_list *out, char *err, size_t errlen);

/* 1 when the address (AF_INET or AF_INET6 sockaddr) is in the list. */
int cidr_list_match_sockaddr(const struct cidr_list *l, const struct sockaddr *sa);

/* The same for an address in text form (as in X-Forwarded-For); 0 for text
 * that is not an address. */
int cidr_list_match_text(const struct cidr_list *l, const char *text);

#endif
