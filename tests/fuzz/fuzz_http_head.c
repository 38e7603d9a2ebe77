/* libFuzzer harness: the worker's HTTP requests (worker/http.c on
 * libwebsockets' parser) and, after an upgrade, its WebSockets
 * (worker/ws.c): each input is the whole byte stream of one client
 * connection, request heads, bodies, pipelined requests and WebSocket
 * frames as they come. How the worker is run in-process: http_driver.c. */
#include "http_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	http_driver_run(data, size);
	return 0;
}
