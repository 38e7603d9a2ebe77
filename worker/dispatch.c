/* The worker's protocol callback, but for what only the real worker does
 * (counting connections, the listener, the per-address table): the guards
 * every connection goes through, and the routing of each reason to ws.c
 * or http.c. worker.c and the fuzz harness (tests/fuzz/http_driver.c) both
 * call it, so the fuzzed code is the served code. */
#include "worker.h"

enum handler { NONE, WS, HTTP };

/* Which of ws.c and http.c handles a reason, if either. */
static enum handler handler_of(enum lws_callback_reasons reason)
{
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
	case LWS_CALLBACK_RECEIVE:
	case LWS_CALLBACK_SERVER_WRITEABLE:
	case LWS_CALLBACK_CLOSED:
		return WS;
	case LWS_CALLBACK_ADD_HEADERS: /* the WebSocket upgrade answer */
	case LWS_CALLBACK_HTTP:
	case LWS_CALLBACK_HTTP_BODY:
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
	case LWS_CALLBACK_HTTP_WRITEABLE:
	case LWS_CALLBACK_HTTP_FILE_COMPLETION:
	case LWS_CALLBACK_CLOSED_HTTP:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
	case LWS_CALLBACK_TIMER:
		return HTTP;
	default:
		return NONE;
	}
}

int worker_dispatch(struct lws *wsi, enum lws_callback_reasons reason, void *user,
		    void *in, size_t len, int guard_lws_bugs)
{
	struct session *s = user;
	enum handler h = handler_of(reason);

	/* every handled reason but the upgrade's headers uses the session */
	if (s == NULL && h != NONE && reason != LWS_CALLBACK_ADD_HEADERS)
		/* lws calls back for connections that never reached our
		 * protocol and so have no session: one that sent nothing
		 * before its timeout, a malformed request, an unknown method.
		 * Nothing of ours to clean up; anything else closes it. */
		return reason == LWS_CALLBACK_CLOSED || reason == LWS_CALLBACK_CLOSED_HTTP ||
				       reason == LWS_CALLBACK_HTTP_FILE_COMPLETION ||
				       reason == LWS_CALLBACK_HTTP_DROP_PROTOCOL
			       ? 0 : -1;
	/* Two bugs of lws 4.1.6 that a client can set off (found by
	 * tests/fuzz/fuzz_http_head):
	 * - an unknown Upgrade value on a keep-alive connection: lws answers
	 *   403, frees the header table and goes on with the value it pointed
	 *   into (use after free); hanging up once the table is gone stops it;
	 * - a request with a body pipelined behind another: lws_http_action()
	 *   reads its buffer again and again, completing the body each time
	 *   (the worker spins at 100%); a second completion of one request is
	 *   that loop, and hanging up ends it. */
	if (guard_lws_bugs && reason == LWS_CALLBACK_HTTP_CONFIRM_UPGRADE &&
	    lws_hdr_total_length(wsi, WSI_TOKEN_UPGRADE) <= 0)
		return -1;
	if (reason == LWS_CALLBACK_HTTP && s != NULL)
		s->body_completions = 0;
	if (guard_lws_bugs && reason == LWS_CALLBACK_HTTP_BODY_COMPLETION && s != NULL &&
	    ++s->body_completions > 1)
		return -1;
	if (h == WS)
		return ws_callback(wsi, reason, s, in, len);
	if (h == HTTP)
		return http_callback(wsi, reason, s, in, len);
	/* Unhandled reasons must reach the dummy handler (LWS-NOTES trap 2). */
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}
