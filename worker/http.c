/* HTTP requests of one worker: dispatch, POST bodies and answers.
 *
 * A request's path is looked up in the endpoint table (endpoints.c): GET
 * endpoints answer from their row, any other GET is a file (static.c).
 * POST endpoints read their body (JSON, or multipart/form-data through
 * lws_spa with files streamed to upload_dir, upload.c), have their packet
 * for the backend built with jansson and hand it to the supervisor
 * (HTTP_REQUEST); the answer comes back as HTTP_ANSWER, at once or, for
 * request_agent and submit_onboarding, when the backend's agent_details
 * arrives (or the request times out). Connections that came in on
 * metrics_listen are served /metrics only.
 *
 * Every answer is written in one lws_write (headers and body together) and
 * carries X-Router-Worker and Cache-Control: no-cache; a download's bytes
 * follow its headers a piece at a time (static.c). Each answer is counted
 * in its endpoint's histogram and, with access_log, logged. */
#include "http.h"

#include "../core/clock.h"
#include "../core/idtable.h"
#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/xalloc.h"
#include "wire.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Requests waiting for the supervisor, by the id sent in HTTP_REQUEST. */

/* What the HTTP side is given of its process (http_init); http.h. */
const struct worker_env *http_env;

void http_init(const struct worker_env *env)
{
	http_env = env;
}

static struct idtable pending;

/* Bytes of request bodies held in memory now (body_memory_bytes). */
static size_t body_memory;

/* ---- requests ----
 *
 * The session is lws's user data of our protocol, and lws frees it and
 * makes a new, zeroed one whenever it binds the protocol to the
 * connection again (lws_bind_protocol): when a keep-alive transaction
 * completes (lws_http_transaction_completed) and when the next request's
 * head arrives, and no callback we handle says so. So a request lives
 * within its transaction: it is freed before the transaction is
 * completed, whoever completes it (on_writeable, static_send_piece,
 * http_file_done), or its pointer is lost with the session. */

struct http_req *http_req_get(struct session *s)
{
	if (s->req == NULL) {
		s->req = xcalloc(1, sizeof *s->req);
		s->req->fd = -1;
		s->req->file_fd = -1;
	}
	return s->req;
}

void http_req_free(struct session *s)
{
	struct http_req *r = s->req;

	if (r == NULL)
		return;
	if (r->pending)
		idtable_del(&pending, r->pending);
	body_memory -= r->memory;
	upload_free(r);
	if (r->file_fd >= 0)
		close(r->file_fd);
	free(r->body);
	free(r->answer);
	free(r);
	s->req = NULL;
}

uint64_t http_pending_add(struct lws *wsi, struct http_req *r)
{
	r->pending = idtable_add(&pending, wsi);
	return r->pending;
}

struct lws *http_pending_take(uint64_t id)
{
	struct lws *wsi = idtable_del(&pending, id);

	if (wsi != NULL)
		((struct session *)lws_wsi_user(wsi))->req->pending = 0;
	return wsi;
}

void http_free_all(void)
{
	idtable_free(&pending);
	static_free_all();
}

/* ---- answers ---- */

static int add_worker_header(struct lws *wsi, unsigned char **p,
			     unsigned char *end)
{
	char slot[16];
	int n = snprintf(slot, sizeof slot, "%d", http_env->slot);

	return lws_add_http_header_by_name(wsi, (const unsigned char *)"x-router-worker:",
					   (const unsigned char *)slot, n, p, end);
}

int http_add_router_headers(struct lws *wsi, unsigned char **p, unsigned char *end)
{
	if (add_worker_header(wsi, p, end) ||
	    lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
					(const unsigned char *)"no-cache", 8, p, end))
		return -1;
	return 0;
}

/* One line per request: client, method, path, status, bytes, time,
 * written when the answer is made (the path as the client sent it, escaped
 * and cut by the log). */
static void access_line(struct lws *wsi, struct http_req *r, unsigned int status,
			long long bytes)
{
	char client[64] = "?";

	if (r == NULL || r->method[0] == '\0')
		return;
	lws_get_peer_simple(wsi, client, sizeof client);
	log_info("access %s \"%s %s\" %u %lld %.1f ms", client, r->method, r->path, status,
		 bytes, (clock_epoch() - r->started) * 1000);
	r->method[0] = '\0'; /* once */
}

/* The request's time into its endpoint's histogram, once. */
static void count_time(struct session *s)
{
	if (s == NULL || s->endpoint < 0 || s->started == 0)
		return;
	ipc_latency_count(http_env->stats->latency[s->endpoint],
			  &http_env->stats->latency_sum[s->endpoint],
			  clock_epoch() - s->started);
	s->endpoint = -1;
}

/* A file that lws sends (lws_serve_http_file) is done, or is about to be
 * (a HEAD, whose transaction lws completes itself): counted and logged
 * once, and the request freed before lws completes the transaction and
 * frees the session. */
void http_file_done(struct lws *wsi, struct session *s, unsigned int status)
{
	if (s->endpoint >= 0) { /* not counted yet */
		http_env->stats->http_requests++;
		if (status >= 400)
			http_env->stats->http_errors++;
	}
	access_line(wsi, s->req, status, -1);
	count_time(s);
	http_req_free(s);
}

/* Prepare the whole answer (content_length announced, len bytes of body
 * written) and ask for the WRITEABLE callback. close_after: the request
 * body was not (fully) read, so the connection cannot be reused. */
int http_answer_sized(struct lws *wsi, struct session *s, unsigned int status,
		      const char *type, const char *body, size_t len,
		      lws_filepos_t content_length, int close_after)
{
	struct http_req *r = http_req_get(s);
	unsigned char *start, *p, *end;
	int head_only = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;

	free(r->answer);
	r->answer = xmalloc(LWS_PRE + HEADER_BUF + len);
	start = p = r->answer + LWS_PRE;
	end = start + HEADER_BUF - 1;
	if (lws_add_http_common_headers(wsi, status, type, content_length, &p, end) ||
	    http_add_router_headers(wsi, &p, end) ||
	    (close_after && lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION,
				(const unsigned char *)"close", 5, &p, end)) ||
	    lws_finalize_http_header(wsi, &p, end))
		return -1;
	if (!head_only && len > 0) {
		memcpy(p, body, len);
		p += len;
	}
	r->answer_len = (size_t)(p - start);
	r->close_after = close_after;
	r->status = status;
	access_line(wsi, r, status, (long long)content_length);
	count_time(s);
	http_env->stats->http_requests++;
	if (status >= 400)
		http_env->stats->http_errors++;
	lws_callback_on_writable(wsi);
	return 0;
}

int http_answer(struct lws *wsi, struct session *s, unsigned int status,
		const char *type, const char *body, size_t len, int close_after)
{
	return http_answer_sized(wsi, s, status, type, body, len, (lws_filepos_t)len,
				 close_after);
}

int http_answer_json(struct lws *wsi, struct session *s, unsigned int status,
		     const char *json)
{
	return http_answer(wsi, s, status, "application/json", json, strlen(json), 0);
}

void http_printable_copy(char *out, size_t outlen, const char *in, size_t len)
{
	size_t n = len < outlen - 1 ? len : outlen - 1;

	for (size_t i = 0; i < n; i++)
		out[i] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : '?';
	out[n] = '\0';
}

/* An error answer: {"error": message}. */
int http_answer_error(struct lws *wsi, struct session *s, unsigned int status,
		      const char *message, int close_after)
{
	char safe[512];
	json_t *obj;
	char *text;
	int rc;

	/* Messages may quote what the client sent (a parser's error near a
	 * token): only printable ASCII goes into the JSON. */
	http_printable_copy(safe, sizeof safe, message, strlen(message));
	obj = json_pack("{s:s}", "error", safe);
	text = json_dumps(obj, JSON_COMPACT);

	/* A refused request leaves nothing behind, before the client hears. */
	if (s->req != NULL)
		upload_discard(s->req);
	json_decref(obj);
	if (text == NULL)
		fatal("out of memory");
	rc = http_answer(wsi, s, status, "application/json", text, strlen(text),
			 close_after);
	free(text);
	return rc;
}

static int on_writeable(struct lws *wsi, struct session *s)
{
	struct http_req *r = s->req;
	int close_after, n;

	if (r == NULL)
		return 0;
	if (r->answer == NULL)
		return r->file_fd >= 0 ? static_send_piece(wsi, s) : 0;
	if (r->file_fd >= 0) { /* the headers, then the file */
		n = lws_write(wsi, r->answer + LWS_PRE, r->answer_len, LWS_WRITE_HTTP_HEADERS);
		free(r->answer);
		r->answer = NULL;
		if (n < (int)r->answer_len)
			return -1;
		lws_callback_on_writable(wsi);
		return 0;
	}
	n = lws_write(wsi, r->answer + LWS_PRE, r->answer_len, LWS_WRITE_HTTP_FINAL);
	close_after = r->close_after;
	if (n < (int)r->answer_len)
		close_after = 1;
	http_req_free(s);
	if (close_after)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void http_answer_from_supervisor(uint64_t id, unsigned int status,
				 const char *body, size_t len)
{
	struct lws *wsi = http_pending_take(id);
	struct session *s;
	const char *ok;

	if (wsi == NULL) {
		log_debug("answer for request %llu, whose client is gone: dropped",
			  (unsigned long long)id);
		return;
	}
	s = lws_wsi_user(wsi);
	ok = s->req->post->ok_body;
	if (body == NULL && ok != NULL)
		body = ok, len = strlen(ok);
	if (http_answer(wsi, s, status, "application/json", body ? body : "{}",
			body ? len : 2, 0) < 0)
		lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
}

void http_metrics_text(uint64_t id, const char *text, size_t len)
{
	struct lws *wsi = http_pending_take(id);

	if (wsi == NULL)
		return;
	http_answer(wsi, lws_wsi_user(wsi), HTTP_STATUS_OK,
		    "text/plain; version=0.0.4; charset=utf-8", text, len, 0);
}

/* ---- POST bodies ---- */

/* The request body as a JSON object: parsed from the JSON body, or made of
 * the multipart form's fields (values as strings). */
static json_t *body_object(struct http_req *r, char *why, size_t whylen)
{
	json_error_t error;
	json_t *obj;

	if (r->multipart)
		return upload_form_object(r, why, whylen);
	obj = json_loadb(r->body ? r->body : "", r->len, JSON_REJECT_DUPLICATES, &error);
	if (obj == NULL) {
		snprintf(why, whylen, "the body is not JSON: %s at line %d column %d",
			 error.text, error.line, error.column);
		return NULL;
	}
	if (!json_is_object(obj)) {
		json_decref(obj);
		snprintf(why, whylen, "the body is not a JSON object");
		return NULL;
	}
	return obj;
}

static int post_complete(struct lws *wsi, struct session *s)
{
	struct http_req *r = s->req;
	struct packet_parts parts;
	char why[512];
	const char *refused;
	json_t *body, *packet;
	char *payload;
	size_t len;
	uint64_t id;

	refused = upload_form_end(r);
	if (refused != NULL)
		return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, refused, 0);
	body = body_object(r, why, sizeof why);
	if (body == NULL)
		return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, why, 0);
	snprintf(why, sizeof why, "the packet for the backend could not be built");
	packet = endpoint_packet(r->post, r, body, &parts, why, sizeof why);
	if (packet == NULL) {
		json_decref(body);
		return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, why, 0);
	}
	payload = json_dumps(packet, JSON_COMPACT);
	json_decref(packet);
	if (payload == NULL)
		fatal("out of memory");
	len = strlen(payload);
	if (len + WIRE_OUTGOING_STAMP_BYTES > (size_t)http_env->cfg->backend_max_frame_bytes) {
		snprintf(why, sizeof why, "the packet for the backend would be %zu bytes, "
			 "more than backend_max_frame_bytes (%lld)", len,
			 (long long)http_env->cfg->backend_max_frame_bytes);
		free(payload);
		json_decref(body);
		return http_answer_error(wsi, s, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, why, 0);
	}
	/* The files first: recorded before the packet that names them. */
	for (size_t i = 0; i < r->nfiles; i++) {
		const struct upload *u = &r->files[i];
		struct ipc_message m = { .type = IPC_UPLOAD_STORED };

		m.upload_stored.stored = u->stored;
		m.upload_stored.original = u->original;
		m.upload_stored.field = u->field;
		m.upload_stored.agent_id = parts.agent_id;
		m.upload_stored.size = u->size;
		m.upload_stored.dev = u->dev;
		m.upload_stored.ino = u->ino;
		http_env->send(&m);
	}
	id = http_pending_add(wsi, r);
	{
		struct ipc_message m = { .type = IPC_HTTP_REQUEST };

		m.http_request.req = id;
		m.http_request.flags = r->post->flags;
		m.http_request.agent_id = parts.agent_id;
		m.http_request.request_id = parts.request_id[0] ? parts.request_id : NULL;
		m.http_request.packet = payload;
		m.http_request.len = len;
		http_env->send(&m);
	}
	r->committed = 1;
	free(payload);
	json_decref(body);
	return 0;
}

static int header_value(struct lws *wsi, enum lws_token_indexes token, char *out,
			size_t len)
{
	out[0] = '\0';
	if (lws_hdr_total_length(wsi, token) <= 0)
		return -1;
	return lws_hdr_copy(wsi, out, (int)len, token) < 0 ? -1 : 0;
}

static int post_start(struct lws *wsi, struct session *s, const struct endpoint *ep)
{
	struct http_req *r;
	char value[256];
	const char *refused;
	long long length;
	char *end;
	size_t in_memory;

	if (ep == NULL || ep->method != ENDPOINT_POST)
		return http_answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 1);
	r = http_req_get(s);
	r->post = ep;
	/* lws reads the raw value itself (into 32 bytes): one it cannot read
	 * it takes for a 100 MB body, while lws_hdr_copy() below gives the
	 * digits. So the raw value too must be digits only, and short. */
	if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 18)
		return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
					 "bad Content-Length", 1);
	if (header_value(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, value, sizeof value) < 0)
		/* lws cannot read chunked bodies (LWS-NOTES trap 5) */
		return http_answer_error(wsi, s, HTTP_STATUS_LENGTH_REQUIRED,
					 "Content-Length is required", 1);
	/* Both: a proxy in front that honours Transfer-Encoding would see
	 * another request than this one (request smuggling). */
	if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
		return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
					 "Transfer-Encoding with Content-Length", 1);
	/* Digits only: strtoll() also takes "+42", " 42" and "0x"-less junk. */
	if (value[0] == '\0' || strspn(value, "0123456789") != strlen(value) ||
	    strlen(value) > 18)
		return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
					 "bad Content-Length", 1);
	length = strtoll(value, &end, 10);
	if (length > http_env->cfg->max_body_bytes) {
		snprintf(value, sizeof value, "the body is larger than max_body_bytes (%lld)",
			 (long long)http_env->cfg->max_body_bytes);
		return http_answer_error(wsi, s, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, value, 1);
	}
	r->expected = (size_t)length;
	header_value(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, value, sizeof value);
	/* Only uploaded files may make a body large (they go to disk): what
	 * is kept in memory becomes the packet for the backend, bounded by
	 * backend_max_frame_bytes (form fields get twice that, so that a
	 * field too large for the packet is a 413 from post_complete(), not a
	 * storage overflow). */
	in_memory = strncasecmp(value, "multipart/form-data", 19) == 0
			    ? (size_t)(length < 2 * http_env->cfg->backend_max_frame_bytes
					       ? length : 2 * http_env->cfg->backend_max_frame_bytes) + 1024
			    : (size_t)length + 1;
	if (strncasecmp(value, "multipart/form-data", 19) != 0 &&
	    length > http_env->cfg->backend_max_frame_bytes) {
		snprintf(value, sizeof value, "a JSON body larger than backend_max_frame_bytes "
			 "(%lld) cannot become a packet for the backend",
			 (long long)http_env->cfg->backend_max_frame_bytes);
		return http_answer_error(wsi, s, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, value, 1);
	}
	if (body_memory + in_memory > (size_t)http_env->cfg->body_memory_bytes) {
		http_env->stats->bodies_refused++;
		log_warn("request bodies in memory would exceed body_memory_bytes (%lld); "
			 "answered 503 (%llu so far)", (long long)http_env->cfg->body_memory_bytes,
			 (unsigned long long)http_env->stats->bodies_refused);
		return http_answer_error(wsi, s, HTTP_STATUS_SERVICE_UNAVAILABLE,
					 "too many requests in progress; try again", 1);
	}
	r->memory = in_memory;
	body_memory += in_memory;
	/* The whole body within body_timeout plus its size at body_min_rate:
	 * a body that trickles in is cut off, whatever its pace. */
	lws_set_timer_usecs(wsi, (lws_usec_t)((http_env->cfg->body_timeout +
					       (double)length / (double)http_env->cfg->body_min_rate) *
					      LWS_US_PER_SEC));
	if (strncasecmp(value, "multipart/form-data", 19) == 0) {
		refused = upload_form_start(wsi, s, value, in_memory);
		if (refused != NULL)
			return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, refused, 1);
	} else {
		r->body = xmalloc(r->expected + 1);
	}
	if (length == 0)
		return post_complete(wsi, s);
	return 0;
}

static int post_body(struct lws *wsi, struct session *s, const char *in, size_t len)
{
	struct http_req *r = s->req;

	(void)wsi;
	/* already answered (an error), or not a POST (a GET with a body): the
	 * rest is dropped */
	if (r == NULL || r->answer != NULL || r->post == NULL)
		return 0;
	if (r->spa != NULL) {
		upload_form_body(r, in, len);
		return 0;
	}
	if (r->len + len > r->expected)
		len = r->expected - r->len;
	memcpy(r->body + r->len, in, len);
	r->len += len;
	return 0;
}

/* ---- dispatch ---- */

static int on_request(struct lws *wsi, struct session *s)
{
	char *uri = NULL;
	int ulen = 0;
	int method = lws_http_get_uri_and_method(wsi, &uri, &ulen);
	const struct endpoint *ep = NULL;

	http_req_free(s);
	s->started = clock_epoch(); /* its time is counted */
	s->endpoint = IPC_EP_OTHER;
	if (method >= 0 && uri != NULL) {
		ep = endpoint_find(uri);
		s->endpoint = ep != NULL ? ep->histogram
			      : method == LWSHUMETH_POST ? IPC_EP_OTHER : IPC_EP_STATIC;
	}
	if (http_env->cfg->access_log && method >= 0 && uri != NULL) {
		static const char *const names[] = { "GET", "POST", "OPTIONS", "PUT",
						     "PATCH", "DELETE", "CONNECT", "HEAD" };
		struct http_req *r = http_req_get(s);

		r->started = s->started;
		snprintf(r->method, sizeof r->method, "%s",
			 (size_t)method < sizeof names / sizeof names[0] ? names[method] : "?");
		snprintf(r->path, sizeof r->path, "%.*s", ulen, uri);
	}
	if (method < 0 || uri == NULL)
		return http_answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, "bad request", 1);
	if (http_env->is_metrics_connection(wsi)) {
		if ((method != LWSHUMETH_GET && method != LWSHUMETH_HEAD) || ep == NULL ||
		    ep->method != ENDPOINT_METRICS_GET)
			return http_answer_error(wsi, s, HTTP_STATUS_NOT_FOUND,
						 "only /metrics is served here", 0);
		return ep->answer(wsi, s, uri + strlen(ep->path));
	}
	log_debug("%s %s", method == LWSHUMETH_POST ? "POST" : "GET", uri);
	if (method == LWSHUMETH_POST)
		return post_start(wsi, s, ep);
	if (method != LWSHUMETH_GET && method != LWSHUMETH_HEAD)
		return http_answer_error(wsi, s, HTTP_STATUS_METHOD_NOT_ALLOWED,
					 "method not allowed", 1);
	if (ep != NULL && ep->method == ENDPOINT_GET)
		return ep->answer(wsi, s, uri + strlen(ep->path));
	return static_serve(wsi, s, uri);
}

int http_callback(struct lws *wsi, enum lws_callback_reasons reason,
		  struct session *s, void *in, size_t len)
{
	switch (reason) {
	case LWS_CALLBACK_ADD_HEADERS: { /* the WebSocket upgrade answer */
		struct lws_process_html_args *args = in;
		unsigned char *p = (unsigned char *)args->p;
		if (add_worker_header(wsi, &p, p + args->max_len))
			return -1;
		args->p = (char *)p;
		return 0;
	}
	case LWS_CALLBACK_HTTP:
		return on_request(wsi, s);
	case LWS_CALLBACK_HTTP_BODY:
		return post_body(wsi, s, in, len);
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		lws_set_timer_usecs(wsi, LWS_SET_TIMER_USEC_CANCEL);
		/* not a POST (a GET with a body; access_log makes a request
		 * for every method), already answered, or handed over */
		if (s->req == NULL || s->req->post == NULL || s->req->answer != NULL ||
		    s->req->pending)
			return 0;
		return post_complete(wsi, s);
	case LWS_CALLBACK_TIMER: /* the body's deadline (post_start) */
		if (s->req == NULL || s->req->answer != NULL || s->req->pending)
			return 0;
		http_env->stats->body_timeouts++;
		log_info("a request body was not complete in time (%zu of %zu bytes); "
			 "answered 408 (%llu so far)", s->req->len, s->req->expected,
			 (unsigned long long)http_env->stats->body_timeouts);
		return http_answer_error(wsi, s, HTTP_STATUS_REQUEST_TIMEOUT,
					 "the request body did not arrive in time", 1);
	case LWS_CALLBACK_HTTP_WRITEABLE:
		return on_writeable(wsi, s);
	case LWS_CALLBACK_HTTP_FILE_COMPLETION:
		http_file_done(wsi, s, HTTP_STATUS_OK);
		return lws_http_transaction_completed(wsi) ? -1 : 0;
	case LWS_CALLBACK_CLOSED_HTTP:
		http_req_free(s);
		return 0;
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		/* lws frees the session next and binds a fresh one (a
		 * keep-alive connection between requests): a request still
		 * attached would be lost. http_file_done() and the answers free
		 * theirs first; this catches any path that does not. */
		if (s->req != NULL) {
			log_debug("a request still attached as lws drops the session; freed");
			http_req_free(s);
		}
		return 0;
	default:
		return 0;
	}
}
