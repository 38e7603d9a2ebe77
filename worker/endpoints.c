/* The router's endpoints: one row each in the table below, with the
 * method it is asked with, the histogram its time is counted in, and what
 * answers it.
 *
 * GET endpoints are answered by their row's function. A POST endpoint's
 * row names the packet it becomes for the backend, the IPC_HTTP_* flags
 * the supervisor handles it with, the answer once the supervisor has the
 * packet, and its builder: a small function, named after the endpoint,
 * that makes the packet's data and ids out of the request body (http.c
 * reads the body, endpoint_packet() wraps what the builder made into the
 * packet). Any other path is a static file (static.c). */
#include "http.h"

#include "../core/ipc.h"
#include "../core/packet.h"
#include "wire.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- GET ---- */

static int answer_is_alive(struct lws *wsi, struct session *s, const char *rest)
{
	(void)rest;
	return http_answer_json(wsi, s, HTTP_STATUS_OK, "{\"status\": \"Alive!\"}");
}

static int answer_get_timestamp(struct lws *wsi, struct session *s, const char *rest)
{
	char json[64];
	/* whole microseconds first, so the milliseconds are not cut short */
	long long us = llround(wire_now() * 1e6);

	(void)rest;
	snprintf(json, sizeof json, "{\"timestamp\": %lld}", us / 1000);
	return http_answer_json(wsi, s, HTTP_STATUS_OK, json);
}

/* The supervisor has the figures: asked here, answered by
 * http_metrics_text(). */
static int answer_metrics(struct lws *wsi, struct session *s, const char *rest)
{
	uint64_t id = http_pending_add(wsi, http_req_get(s));

	(void)rest;
	http_env->send(&(struct ipc_message){ .type = IPC_METRICS_REQUEST,
					   .metrics_request = { .req = id } });
	return 0;
}

/* ---- POST: the builders ---- */

static void uuid4(char out[37])
{
	char hex[33];

	random_hex(hex, 16);
	hex[12] = '4';
	hex[16] = "89ab"[(hex[16] - '0') & 3];
	snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
		 hex + 16, hex + 20);
}

/* A member that may be a JSON object or JSON text holding one. */
static json_t *object_or_text(json_t *v, const char *name, char *why, size_t whylen)
{
	json_error_t error;
	json_t *parsed;

	if (v == NULL || json_is_null(v))
		return json_object();
	if (json_is_object(v))
		return json_incref(v);
	if (!json_is_string(v)) {
		snprintf(why, whylen, "%s must be an object or JSON text", name);
		return NULL;
	}
	parsed = json_loadb(json_string_value(v), json_string_length(v), 0, &error);
	if (parsed == NULL || !json_is_object(parsed)) {
		snprintf(why, whylen, "%s is not a JSON object%s%s", name,
			 parsed ? "" : ": ", parsed ? "" : error.text);
		json_decref(parsed);
		return NULL;
	}
	return parsed;
}

static int build_request_agent(const struct http_req *r, json_t *body,
			       struct packet_parts *parts, char *why, size_t whylen)
{
	json_t *pd = json_object_get(body, "provider_data");

	(void)r;
	if (pd != NULL && !json_is_object(pd)) {
		snprintf(why, whylen, "provider_data is not an object");
		return -1;
	}
	uuid4(parts->request_id);
	parts->data = json_pack("{s:O, s:s}", "provider_data", pd ? pd : json_object(),
				"request_id", parts->request_id);
	if (pd == NULL)
		json_decref(json_object_get(parts->data, "provider_data"));
	parts->subject = parts->request_id;
	return 0;
}

static int build_submit_onboarding(const struct http_req *r, json_t *body,
				   struct packet_parts *parts, char *why, size_t whylen)
{
	json_t *pd = json_object_get(body, "provider_data");

	(void)r;
	if (!json_is_object(pd) || !json_is_string(json_object_get(pd, "USED_AGENT_ID"))) {
		snprintf(why, whylen, "provider_data.USED_AGENT_ID is missing or not a string");
		return -1;
	}
	if (json_string_length(json_object_get(pd, "USED_AGENT_ID")) > PACKET_MAX_ID_BYTES) {
		snprintf(why, whylen, "provider_data.USED_AGENT_ID is longer than %d bytes",
			 PACKET_MAX_ID_BYTES);
		return -1;
	}
	parts->data = json_deep_copy(pd);
	parts->agent_id = json_string_value(json_object_get(pd, "USED_AGENT_ID"));
	json_object_del(parts->data, "USED_AGENT_ID");
	if (json_object_get(parts->data, "onboarding_data") == NULL)
		json_object_set_new(parts->data, "onboarding_data", json_object());
	uuid4(parts->request_id);
	json_object_set_new(parts->data, "request_id", json_string(parts->request_id));
	parts->subject = parts->agent_id;
	return 0;
}

/* The agent submitting, for submit_task and submit_metadata. */
static int submitting_agent(json_t *body, struct packet_parts *parts, char *why,
			    size_t whylen)
{
	json_t *agent = json_object_get(body, "USED_AGENT_ID");

	if (!json_is_string(agent)) {
		snprintf(why, whylen, "USED_AGENT_ID is missing or not a string");
		return -1;
	}
	parts->agent_id = parts->subject = json_string_value(agent);
	return 0;
}

/* The submitted member name (missing: how the error names it), an object
 * or JSON text holding one. */
static json_t *submitted_object(json_t *body, const char *name, const char *missing,
				char *why, size_t whylen)
{
	json_t *v = json_object_get(body, name);

	/* lws_spa cannot tell an empty field from a missing one */
	if (v == NULL || json_is_null(v)) {
		snprintf(why, whylen, "%s is missing or empty", missing);
		return NULL;
	}
	return object_or_text(v, name, why, whylen);
}

static int build_submit_task(const struct http_req *r, json_t *body,
			     struct packet_parts *parts, char *why, size_t whylen)
{
	json_t *final_data = json_object_get(body, "final_data");

	if (submitting_agent(body, parts, why, whylen) < 0)
		return -1;
	if (final_data != NULL) {
		/* The backend requires a data object (PROTOCOL.md, point 10). */
		if (!json_is_object(final_data)) {
			snprintf(why, whylen, "final_data is not an object");
			return -1;
		}
		parts->data = json_incref(final_data);
	} else {
		parts->data = submitted_object(body, "final_string_data",
					       "final_data (or final_string_data)", why, whylen);
		if (parts->data == NULL)
			return -1;
	}
	return upload_add_files(r, parts->data, why, whylen);
}

static int build_submit_metadata(const struct http_req *r, json_t *body,
				 struct packet_parts *parts, char *why, size_t whylen)
{
	if (submitting_agent(body, parts, why, whylen) < 0)
		return -1;
	parts->data = submitted_object(body, "metadata", "metadata", why, whylen);
	if (parts->data == NULL)
		return -1;
	return upload_add_files(r, parts->data, why, whylen);
}

static int build_log_error(const struct http_req *r, json_t *body,
			   struct packet_parts *parts, char *why, size_t whylen)
{
	json_t *agent = json_object_get(body, "USED_AGENT_ID");
	json_t *e = json_object_get(body, "error_data");

	(void)r, (void)why, (void)whylen;
	parts->subject = json_is_string(agent) ? json_string_value(agent) : "";
	/* The backend requires a data object (PROTOCOL.md, point 10). */
	if (e == NULL || json_is_null(e))
		parts->data = json_object();
	else if (json_is_object(e))
		parts->data = json_incref(e);
	else
		parts->data = json_pack("{s:O}", "error_data", e);
	return 0;
}

/* ---- the table ---- */

/* Every endpoint of the router protocol; any other path is a static file. */
static const struct endpoint endpoints[] = {
	{ .path = "/is_alive", .method = ENDPOINT_GET, .histogram = IPC_EP_IS_ALIVE,
	  .answer = answer_is_alive },
	{ .path = "/get_timestamp", .method = ENDPOINT_GET,
	  .histogram = IPC_EP_GET_TIMESTAMP, .answer = answer_get_timestamp },
	{ .path = "/download_file/", .method = ENDPOINT_GET, .histogram = IPC_EP_DOWNLOAD,
	  .answer = static_serve_download },
	{ .path = "/metrics", .method = ENDPOINT_METRICS_GET,
	  .histogram = IPC_EP_METRICS, .answer = answer_metrics },
	{ .path = "/request_agent", .method = ENDPOINT_POST,
	  .histogram = IPC_EP_REQUEST_AGENT, .packet_type = "register_agent",
	  .flags = IPC_HTTP_WAIT_DETAILS, .build = build_request_agent },
	{ .path = "/submit_onboarding", .method = ENDPOINT_POST,
	  .histogram = IPC_EP_SUBMIT_ONBOARDING, .packet_type = "submit_onboarding",
	  .flags = IPC_HTTP_WAIT_DETAILS | IPC_HTTP_FORGET_AGENT | IPC_HTTP_PRECIOUS,
	  .build = build_submit_onboarding },
	{ .path = "/submit_task", .method = ENDPOINT_POST, .histogram = IPC_EP_SUBMIT_TASK,
	  .packet_type = "submit_unit", .flags = IPC_HTTP_PRECIOUS | IPC_HTTP_FORGET_AGENT,
	  .ok_body = "{\"status\": \"Submitted!\"}", .build = build_submit_task },
	{ .path = "/submit_metadata", .method = ENDPOINT_POST,
	  .histogram = IPC_EP_SUBMIT_METADATA, .packet_type = "submit_metadata",
	  .flags = IPC_HTTP_PRECIOUS, .ok_body = "{\"status\": \"Submitted metadata\"}",
	  .build = build_submit_metadata },
	{ .path = "/log_error", .method = ENDPOINT_POST, .histogram = IPC_EP_LOG_ERROR,
	  .packet_type = "log_error", .flags = 0,
	  .ok_body = "{\"status\": \"Error log sent!\"}", .build = build_log_error },
};

const struct endpoint *endpoint_find(const char *uri)
{
	for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++) {
		const char *path = endpoints[i].path;
		size_t len = strlen(path);

		if (path[len - 1] == '/' ? strncmp(uri, path, len) == 0
					 : strcmp(uri, path) == 0)
			return &endpoints[i];
	}
	return NULL;
}

static json_t *client_timestamp_of(json_t *body)
{
	json_t *v = json_object_get(body, "client_timestamp");
	char *end;
	double d;

	if (json_is_number(v))
		return json_real(json_number_value(v));
	if (json_is_string(v)) {
		d = strtod(json_string_value(v), &end);
		if (end != json_string_value(v) && *end == '\0' && isfinite(d))
			return json_real(d);
	}
	return json_null();
}

json_t *endpoint_packet(const struct endpoint *ep, const struct http_req *r,
			json_t *body, struct packet_parts *parts, char *why,
			size_t whylen)
{
	json_t *agent = json_object_get(body, "USED_AGENT_ID"), *packet;

	memset(parts, 0, sizeof *parts);
	/* every endpoint refuses an over-long agent id, used by it or not */
	if (json_is_string(agent) && json_string_length(agent) > PACKET_MAX_ID_BYTES) {
		snprintf(why, whylen, "USED_AGENT_ID is longer than %d bytes",
			 PACKET_MAX_ID_BYTES);
		return NULL;
	}
	if (ep->build(r, body, parts, why, whylen) < 0) {
		json_decref(parts->data);
		return NULL;
	}
	packet = json_pack("{s:s, s:s, s:o, s:o, s:f}", "packet_type", ep->packet_type,
			   "subject_id", parts->subject, "data", parts->data,
			   "client_timestamp", client_timestamp_of(body),
			   "router_incoming_timestamp", wire_now());
	parts->data = NULL; /* the packet's now */
	return packet;
}
