/* The worker's HTTP and WebSocket code (worker/http.c, worker/ws.c) run
 * in-process for the fuzz harnesses fuzz_http_head.c and fuzz_multipart.c:
 * see http_driver.c. */
#ifndef MR_FUZZ_HTTP_DRIVER_H
#define MR_FUZZ_HTTP_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/* Once, before the first run: the lws context and the temporary
 * static_dir and upload_dir. */
void http_driver_init(void);

/* One client connection that sends these bytes, served until the worker
 * is done with them; then the client hangs up. */
void http_driver_run(const uint8_t *bytes, size_t len);

#endif
