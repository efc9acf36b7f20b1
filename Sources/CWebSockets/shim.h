#include <libwebsockets.h>

/* Macros Swift cannot import (they are computed or 64-bit shifted), exposed as functions. */

/* Bytes lws_write() needs in front of the payload for the frame header. */
static inline size_t iotgw_lws_pre(void) { return LWS_PRE; }

/* Context option that initialises OpenSSL, needed for wss:// clients. */
static inline uint64_t iotgw_lws_option_ssl_global_init(void) { return LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT; }

/* The "no listening port" value for a client-only context. */
static inline int iotgw_lws_no_listen(void) { return CONTEXT_PORT_NO_LISTEN; }
