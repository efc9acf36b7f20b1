#include <zlib.h>

/* deflateInit2 and inflateInit2 are macros (they pass ZLIB_VERSION and sizeof(z_stream)), which Swift
 * cannot call: these wrappers are the functions Swift sees. Raw DEFLATE (no zlib header) is a
 * negative windowBits, as permessage-deflate (RFC 7692) needs. */
static inline int czlib_deflate_init_raw(z_streamp stream, int level, int windowBits, int memLevel) {
    return deflateInit2(stream, level, Z_DEFLATED, -windowBits, memLevel, Z_DEFAULT_STRATEGY);
}

static inline int czlib_inflate_init_raw(z_streamp stream, int windowBits) {
    return inflateInit2(stream, -windowBits);
}
