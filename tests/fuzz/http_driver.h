/* The worker's HTTP and WebSocket code (worker/http.c, worker/ws.c) run
 * in-process for the fuzz harnesses fuzz_http_head.c and fuzz_multipart.c:
 * see http_driver.c. */
#ifndef MR_FUZZ_HTTP_DRIVER_H
#define MR_FUZZ_HTTP_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/* libFuzzer's entry points. LLVMFuzzerInitialize is http_driver.c's, the
 * same for every harness that includes this: once, before the first run,
 * it makes the lws context and the temporary static_dir and upload_dir.
 * Each harness defines LLVMFuzzerTestOneInput, which calls
 * http_driver_run(). */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One client connection that sends these bytes, served until the worker
 * is done with them; then the client hangs up. */
void http_driver_run(const uint8_t *bytes, size_t len);

#endif
