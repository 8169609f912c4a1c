"""Request bodies read with bounds: the raw size and the decoded size are checked while reading,
so a large or compressed body (a 1 MB gzip that expands to 1 GiB) costs the engine little.

The server runs with aiohttp's automatic decompression off (engine.service.server); bodies are
decoded here, only for routes that read them, after the secret was checked.
"""

from __future__ import annotations

import zlib

from aiohttp import web

from engine.service.errors import ApiError

READ_CHUNK = 64 * 1024
#: zlib window bits per Content-Encoding; "deflate" is the zlib format (RFC 9110), raw tried next.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def too_large(limit: int, setting: str) -> ApiError:
    return ApiError(
        413, "body_too_large", f"the request body is larger than the {limit} bytes allowed ({setting})"
    )


async def read_body(request: web.Request, limit: int, setting: str) -> bytes:
    """The body, decoded, at most `limit` bytes before and after decoding; 413/415/400 otherwise."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit, setting)
    encodings = [e.strip().lower() for e in request.headers.get("Content-Encoding", "").split(",")]
    encodings = [e for e in encodings if e and e != "identity"]
    unknown = [e for e in encodings if e not in _WBITS]
    if unknown:
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {unknown[0][:40]!r} is not supported; send gzip, deflate or none",
        )
    data = bytearray()
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise too_large(limit, setting)
    body = bytes(data)
    for encoding in reversed(encodings):  # the last one listed was applied last
        body = _decode(body, encoding, limit, setting)
    return body


def _decode(data: bytes, encoding: str, limit: int, setting: str) -> bytes:
    for wbits in (_WBITS[encoding], -zlib.MAX_WBITS) if encoding == "deflate" else (_WBITS[encoding],):
        inflater = zlib.decompressobj(wbits)
        try:
            # At most limit + 1 bytes come out, however much the input would expand to.
            out = inflater.decompress(data, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            raise too_large(limit, f"{setting}, after {encoding} decoding")
        if inflater.eof and not inflater.unused_data:
            return out
    raise ApiError(
        400, "undecodable_body", f"the body is not valid {encoding} data (Content-Encoding: {encoding})"
    )
