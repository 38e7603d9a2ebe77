/* The worker's HTTP side, shared by its four files and private to them
 * (the rest of the worker uses the http_* functions of worker.h):
 *   http.c       request dispatch, POST bodies, answers, the access log
 *   endpoints.c  the endpoint table and each endpoint's packet builder
 *   static.c     static files, MIME types, downloads of stored uploads
 *   upload.c     multipart/form-data bodies and the uploads they carry
 * Prototypes are listed under the banner of the file that defines them. */
#ifndef MR_HTTP_H
#define MR_HTTP_H

#include "worker.h"

#include <jansson.h>
#include <libwebsockets.h>
#include <stddef.h>
#include <stdint.h>

/* Room for an answer's headers. */
#define HEADER_BUF 1024
#define MAX_UPLOAD_FILES 64
/* Stored uploads are named UPLOAD_PREFIX + 32 hex digits, never by the client. */
#define UPLOAD_PREFIX "mr-"
#define UPLOAD_NAME_LEN (3 + 32)

struct endpoint;

struct upload {
	char *field, *original;
	const char *mimetype;
	char stored[UPLOAD_NAME_LEN + 1];
	char *path;
	size_t size;
	uint64_t dev, ino; /* the file's identity, recorded by the supervisor */
};

struct http_req {
	const struct endpoint *post; /* the POST endpoint; NULL for anything else */
	int multipart;
	char *body;
	size_t len, expected;
	struct lws_spa *spa;
	struct upload files[MAX_UPLOAD_FILES];
	size_t nfiles;
	int fd; /* the upload being written, or -1 */
	/* the multipart boundary and the body's last bytes: lws_spa does not
	 * report a body that ends before its closing boundary */
	char boundary[80];
	char tail[128];
	size_t tail_len;
	int spa_failed;
	const char *spa_error; /* why, when not just "malformed" */
	int committed; /* the uploads now belong to the backend */
	uint64_t pending; /* waiting for the supervisor's answer */
	size_t memory;    /* its share of body_memory */
	unsigned char *answer; /* LWS_PRE + headers + body */
	size_t answer_len;
	unsigned int status; /* of the answer */
	int close_after;
	char download[UPLOAD_NAME_LEN + 1]; /* the stored name asked for */
	/* for the access log (access_log = 1) */
	double started;
	char method[8];
	char path[160];
	int file_fd;      /* a download being sent after the answer's headers */
	size_t file_left; /* its bytes still to send */
};

/* ---- http.c ---- */

/* The session's request, made on first use. */
struct http_req *http_req_get(struct session *s);
void http_req_free(struct session *s);
/* The request on wsi waits for the supervisor: returns the id its answer
 * will carry. */
uint64_t http_pending_add(struct lws *wsi, struct http_req *r);
/* The connection whose request the supervisor answers by id, no longer
 * waiting; NULL when its client is gone. */
struct lws *http_pending_take(uint64_t id);
/* A file sent by lws is done (FILE_COMPLETION, or a HEAD that lws completes
 * itself): counts and logs it and frees the request, which must happen
 * before lws_http_transaction_completed() (it frees the session). */
void http_file_done(struct lws *wsi, struct session *s, unsigned int status);
/* Our headers (X-Router-Worker, Cache-Control), appended to an lws header
 * buffer. */
int http_add_router_headers(struct lws *wsi, unsigned char **p, unsigned char *end);
/* Answers: prepared whole, written at the next WRITEABLE callback. */
int http_answer_sized(struct lws *wsi, struct session *s, unsigned int status,
		      const char *type, const char *body, size_t len,
		      lws_filepos_t content_length, int close_after);
int http_answer(struct lws *wsi, struct session *s, unsigned int status,
		const char *type, const char *body, size_t len, int close_after);
int http_answer_json(struct lws *wsi, struct session *s, unsigned int status,
		     const char *json);
int http_answer_error(struct lws *wsi, struct session *s, unsigned int status,
		      const char *message, int close_after);
/* Copy at most outlen - 1 bytes of in, each byte that is not printable
 * ASCII replaced by '?'. */
void http_printable_copy(char *out, size_t outlen, const char *in, size_t len);

/* ---- endpoints.c ---- */

/* How an endpoint is asked for. */
enum endpoint_method {
	ENDPOINT_GET,         /* GET or HEAD, on the router's port */
	ENDPOINT_POST,        /* POST, on the router's port */
	ENDPOINT_METRICS_GET, /* GET or HEAD, on metrics_listen only */
};

/* What a packet builder makes of a POST's body, besides the packet's type. */
struct packet_parts {
	json_t *data;         /* the packet's data, until endpoint_packet() puts it in */
	const char *subject;  /* its subject_id */
	const char *agent_id; /* for the supervisor; NULL when none */
	char request_id[37];  /* for the supervisor; "" when none */
};

struct endpoint {
	const char *path; /* one ending in '/' names every path under it */
	enum endpoint_method method;
	int histogram; /* the enum ipc_endpoint its time is counted in */
	/* POST: the packet for the backend, its IPC_HTTP_* flags for the
	 * supervisor, the answer once the supervisor has the packet (NULL:
	 * the supervisor's), and the function that builds the packet's parts
	 * from the body (0, or -1 with why: a 400) */
	const char *packet_type;
	unsigned int flags;
	const char *ok_body;
	int (*build)(const struct http_req *r, json_t *body, struct packet_parts *parts,
		     char *why, size_t whylen);
	/* GET and metrics: the answer, given what follows path in the URI */
	int (*answer)(struct lws *wsi, struct session *s, const char *rest);
};

/* The endpoint at uri, whatever the method; NULL when none. */
const struct endpoint *endpoint_find(const char *uri);
/* The packet for the backend from the body of a POST to ep, and its parts
 * for the supervisor; NULL with why (a 400). */
json_t *endpoint_packet(const struct endpoint *ep, const struct http_req *r,
			json_t *body, struct packet_parts *parts, char *why,
			size_t whylen);

/* ---- static.c ---- */

/* A GET for a file of static_dir (or for the task page). */
int static_serve(struct lws *wsi, struct session *s, const char *uri);
/* GET /download_file/<name>: asks the supervisor (http_download_info()). */
int static_serve_download(struct lws *wsi, struct session *s, const char *name);
/* The next piece of a download whose headers are sent. */
int static_send_piece(struct lws *wsi, struct session *s);
const char *static_mimetype(const char *name);
void static_free_all(void);

/* ---- upload.c ---- */

/* Start a multipart/form-data body: the boundary from content_type, and
 * lws_spa holding at most max_storage bytes of form fields. Returns NULL,
 * or why the request is refused (a 400). */
const char *upload_form_start(struct lws *wsi, struct session *s,
			      const char *content_type, size_t max_storage);
/* The next bytes of that body. */
void upload_form_body(struct http_req *r, const char *in, size_t len);
/* The body is all there: NULL, or why it is refused (a 400). */
const char *upload_form_end(struct http_req *r);
/* The form's fields as a JSON object (values as strings); NULL with why. */
json_t *upload_form_object(struct http_req *r, char *why, size_t whylen);
/* data.files and data.filesByFields, as the reference router's multer
 * gives them to the backend: 0, or -1 with why. */
int upload_add_files(const struct http_req *r, json_t *data, char *why, size_t whylen);
/* Delete the files of a request that will not reach the backend. */
void upload_discard(struct http_req *r);
/* Free what the request's uploads hold (deleting their files unless they
 * were committed). */
void upload_free(struct http_req *r);
/* 1 when name is one that upload.c gives a stored upload. */
int upload_is_stored_name(const char *name);
/* The path of the stored upload named stored in upload_dir: 0, or -1 when
 * it does not fit in len. */
int upload_path(char *out, size_t len, const char *stored);
/* 2 * bytes random hex digits and a NUL into out. */
void random_hex(char *out, size_t bytes);

/* http.c: the process the HTTP files serve for (http_init()). */
extern const struct worker_env *http_env;

#endif
