/* The Mephisto packet model: packet types, agent statuses, and what routing
 * needs to know of a packet. The packet's JSON travels as opaque bytes
 * (payload); workers parse and validate it, the supervisor never does. */
#ifndef MR_PACKET_H
#define MR_PACKET_H

#include <stddef.h>

enum packet_type {
	PKT_UNKNOWN = 0,
	PKT_ALIVE,
	PKT_HEARTBEAT,
	PKT_MEPHISTO_BOUND_LIVE_UPDATE,
	PKT_CLIENT_BOUND_LIVE_UPDATE,
	PKT_UPDATE_STATUS,
	PKT_REQUEST_STATUSES,
	PKT_RETURN_STATUSES,
	PKT_REGISTER_AGENT,
	PKT_AGENT_DETAILS,
	PKT_SUBMIT_ONBOARDING,
	PKT_SUBMIT_UNIT,
	PKT_SUBMIT_METADATA,
	PKT_LOG_ERROR,
	PKT_TYPE_COUNT
};

/* The subject_id of the backend itself. */
#define PACKET_MEPHISTO "mephisto"

/* Bounds checked where a packet enters (a WebSocket message, a POST), so
 * that what the router builds from them (return_statuses, the IPC
 * messages, log lines) stays small: Mephisto's agent ids are short
 * numbers, its request ids uuids, its statuses a few words. */
#define PACKET_MAX_ID_BYTES 256     /* subject_id, request_id, USED_AGENT_ID */
#define PACKET_MAX_STATUS_BYTES 64  /* data.status of update_status */

/* What routing needs of one packet that arrived on a WebSocket. Absent
 * numbers are NAN; absent strings NULL. */
struct packet {
	enum packet_type type;
	const char *subject_id;
	const char *status;     /* update_status: data.status */
	const char *request_id; /* agent_details: data.request_id, else subject_id */
	double client_timestamp;
	double server_timestamp;
	double router_incoming_timestamp;
	/* The packet's JSON object as it will be forwarded: with
	 * router_incoming_timestamp set and without router_outgoing_timestamp
	 * (the sending worker adds it). A heartbeat's payload has no "data"
	 * member: the answer supplies its own. */
	const char *payload;
	size_t len;
};

enum packet_type packet_type_parse(const char *name);
const char *packet_type_name(enum packet_type type);

/* Statuses in which the heartbeat-silence rule applies. */
int status_is_live(const char *status);
/* Statuses after which nothing changes an agent any more (completed,
 * expired, approved, ...): a closed socket does not turn these into
 * "disconnect". */
int status_is_final(const char *status);

/* Write json with one more member appended into dst, which must hold
 * len + member_len + 2 bytes. Returns the length written (no NUL). */
size_t packet_add_member_into(char *dst, const char *json, size_t len,
			      const char *member, size_t member_len);

/* A copy of the JSON object text json with one more member appended:
 * member is '"name":value'. json must be an object ("{...}"). Returns a
 * malloc'ed string of *outlen bytes (NUL-terminated). */
char *packet_add_member(const char *json, size_t len, const char *member,
			size_t member_len, size_t *outlen);

#endif
