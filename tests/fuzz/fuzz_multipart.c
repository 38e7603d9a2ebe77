/* libFuzzer harness: multipart/form-data bodies (worker/http.c on lws_spa,
 * uploads streamed to upload_dir). Each input is a body, sent as
 *
 *   POST /submit_task HTTP/1.1
 *   Content-Type: multipart/form-data; boundary=B
 *   Content-Length: <the input's length>
 *
 * where B is the boundary the body's first line opens ("--B"), so the
 * fuzzer changes both at once, or a fixed one if the first line is no
 * delimiter. The whole request is served in-process (http_driver.c);
 * whole requests, multipart ones included, are fuzz_http_head's inputs. */
#include "http_driver.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The boundary of a body that starts with "--B\r\n": B, up to 70
 * characters that may appear in a header value unquoted. */
static size_t body_boundary(const uint8_t *data, size_t size, char *out, size_t outlen)
{
	size_t n = 0;

	if (size < 4 || data[0] != '-' || data[1] != '-')
		return 0;
	while (2 + n < size && n < 70 && n + 1 < outlen && data[2 + n] > ' ' &&
	       data[2 + n] < 0x7f && data[2 + n] != ';' && data[2 + n] != '"')
		n++;
	if (2 + n + 1 >= size || data[2 + n] != '\r' || data[3 + n] != '\n')
		return 0;
	memcpy(out, data + 2, n);
	out[n] = '\0';
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char boundary[80], head[512];
	size_t hlen;
	uint8_t *req;

	if (body_boundary(data, size, boundary, sizeof boundary) == 0)
		snprintf(boundary, sizeof boundary, "----fuzzBoundary7MA4YWxkTrZu0gW");
	hlen = (size_t)snprintf(head, sizeof head,
				"POST /submit_task HTTP/1.1\r\n"
				"Host: 127.0.0.1:3000\r\n"
				"Content-Type: multipart/form-data; boundary=%s\r\n"
				"Content-Length: %zu\r\n\r\n", boundary, size);
	req = malloc(hlen + size);
	if (req == NULL)
		abort();
	memcpy(req, head, hlen);
	memcpy(req + hlen, data, size);
	http_driver_run(req, hlen + size);
	free(req);
	return 0;
}
