#include "packet.h"

#include "log.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

static const char *const type_names[PKT_TYPE_COUNT] = {
	[PKT_UNKNOWN] = "unknown",
	[PKT_ALIVE] = "alive",
	[PKT_HEARTBEAT] = "heartbeat",
	[PKT_MEPHISTO_BOUND_LIVE_UPDATE] = "mephisto_bound_live_update",
	[PKT_CLIENT_BOUND_LIVE_UPDATE] = "client_bound_live_update",
	[PKT_UPDATE_STATUS] = "update_status",
	[PKT_REQUEST_STATUSES] = "request_statuses",
	[PKT_RETURN_STATUSES] = "return_statuses",
	[PKT_REGISTER_AGENT] = "register_agent",
	[PKT_AGENT_DETAILS] = "agent_details",
	[PKT_SUBMIT_ONBOARDING] = "submit_onboarding",
	[PKT_SUBMIT_UNIT] = "submit_unit",
	[PKT_SUBMIT_METADATA] = "submit_metadata",
	[PKT_LOG_ERROR] = "log_error",
};

enum packet_type packet_type_parse(const char *name)
{
	for (int i = 1; i < PKT_TYPE_COUNT; i++)
		if (strcmp(name, type_names[i]) == 0)
			return (enum packet_type)i;
	return PKT_UNKNOWN;
}

const char *packet_type_name(enum packet_type type)
{
	if ((int)type < 0 || type >= PKT_TYPE_COUNT)
		return "unknown";
	return type_names[type];
}

static int in_list(const char *status, const char *const *list)
{
	for (; *list != NULL; list++)
		if (strcmp(status, *list) == 0)
			return 1;
	return 0;
}

int status_is_live(const char *status)
{
	static const char *const live[] = { "onboarding", "waiting", "in task", NULL };
	return in_list(status, live);
}

int status_is_final(const char *status)
{
	static const char *const final[] = {
		"completed", "disconnect", "timeout", "partner disconnect", "expired",
		"returned", "approved", "soft_rejected", "rejected", NULL
	};
	return in_list(status, final);
}

size_t packet_add_member_into(char *dst, const char *json, size_t len,
			      const char *member, size_t member_len)
{
	size_t close = len, n;
	int empty = 1;

	while (close > 0 && json[close - 1] != '}')
		close--;
	if (close == 0)
		fatal("packet_add_member: not a JSON object");
	close--; /* index of the final '}' */
	for (size_t i = 1; i < close; i++) {
		if (json[i] != ' ' && json[i] != '\n' && json[i] != '\t' && json[i] != '\r') {
			empty = 0;
			break;
		}
	}
	memcpy(dst, json, close);
	n = close;
	if (!empty)
		dst[n++] = ',';
	memcpy(dst + n, member, member_len);
	n += member_len;
	dst[n++] = '}';
	return n;
}

char *packet_add_member(const char *json, size_t len, const char *member,
			size_t member_len, size_t *outlen)
{
	char *out = xmalloc(len + member_len + 3);

	*outlen = packet_add_member_into(out, json, len, member, member_len);
	out[*outlen] = '\0';
	return out;
}
