/* The header of a WebSocket message as a server sends it whole (RFC 6455
 * 5.2: FIN, text opcode, no mask, 7-, 16- or 64-bit length), the same
 * bytes lws_write(LWS_WRITE_TEXT) puts in front of one. For writers that
 * hand lws several messages in one raw write (worker/ws.c, bench/echo.c). */
#ifndef MR_WSFRAME_H
#define MR_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

#define WS_FRAME_HEADER_MAX 10

/* Write the header for a text message of len bytes into h (room for
 * WS_FRAME_HEADER_MAX); returns its length. */
static inline size_t ws_text_frame_header(unsigned char *h, size_t len)
{
	h[0] = 0x81;
	if (len < 126) {
		h[1] = (unsigned char)len;
		return 2;
	}
	if (len <= 0xffff) {
		h[1] = 126;
		h[2] = (unsigned char)(len >> 8);
		h[3] = (unsigned char)len;
		return 4;
	}
	h[1] = 127;
	for (int i = 0; i < 8; i++)
		h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
	return 10;
}

#endif
