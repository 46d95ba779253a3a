"""Reading an HTTP body with a size cap, shared by the live transport and the fetcher.

A hostile or broken server can answer with gigabytes, or with a few hundred
kilobytes of gzip that inflate to gigabytes. The body is read as raw network
bytes and decompressed here, never more than the cap at a time (zlib's
``max_length``), and abandoned as soon as the decoded size passes the cap. So
at most ``limit`` decoded bytes (plus one network chunk) are ever held in
memory, whatever the compression ratio. httpx's own decoders would inflate a
whole network read before any count could run.
"""

from __future__ import annotations

import zlib

import httpx

__all__ = ["ACCEPT_ENCODING", "BodyTooLarge", "BodyUndecodable", "read_capped"]

ACCEPT_ENCODING = "gzip, deflate"
"""What requests advertise: the encodings :func:`read_capped` decodes under its cap."""

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
_STEP = 256 * 1024
"""Decoded bytes per decompression call: zlib grows its output buffer by
copying, so one huge call would briefly hold twice what it returns."""


class BodyTooLarge(Exception):
    """The body passed the cap; the caller turns this into its own typed error."""


class BodyUndecodable(Exception):
    """The body is in an encoding not asked for, or its compressed data is corrupt."""


class _Inflater:
    """Incremental gzip/deflate decoding that never produces more than asked for."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        wbits = _GZIP_WBITS if encoding in ("gzip", "x-gzip") else _ZLIB_WBITS
        self._zlib = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes, room: int) -> bytes:
        """Up to ``room + 1`` decoded bytes of ``data`` (one more says "over the cap"),
        at most :data:`_STEP` at a time; the rest of ``data`` waits in :attr:`pending`."""
        wanted = min(room + 1, _STEP)
        try:
            out = self._zlib.decompress(data, wanted)
        except zlib.error:
            if self._started or self._encoding != "deflate":
                raise BodyUndecodable(f"corrupt {self._encoding} data") from None
            # "deflate" is often sent without the zlib header (raw deflate).
            self._zlib = zlib.decompressobj(_RAW_DEFLATE_WBITS)
            try:
                out = self._zlib.decompress(data, wanted)
            except zlib.error:
                raise BodyUndecodable("corrupt deflate data") from None
        self._started = True
        return out

    @property
    def pending(self) -> bytes:
        """Compressed input not yet decoded because ``room`` ran out."""
        return self._zlib.unconsumed_tail


def _decoder(response: httpx.Response) -> _Inflater | None:
    encodings = [
        part.strip().lower()
        for part in response.headers.get("content-encoding", "").split(",")
        if part.strip() and part.strip().lower() != "identity"
    ]
    if not encodings:
        return None
    if len(encodings) == 1 and encodings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater(encodings[0])
    raise BodyUndecodable(
        f"the answer is encoded as {', '.join(encodings)!r}, which was not asked for"
    )


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The decoded body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes.

    A declared Content-Length over the limit is refused before reading anything
    (compressed data is never much larger than what it decodes to).
    ``BodyUndecodable`` for an encoding other than gzip/deflate, or corrupt
    compressed data.
    """
    if response.is_stream_consumed:
        # Read already by an in-process transport (httpx.MockTransport does):
        # the memory is spent, only the cap is left to apply.
        if len(response.content) > limit:
            raise BodyTooLarge
        return response.content
    decoder = _decoder(response)
    declared = response.headers.get("content-length", "")
    slack = 0 if decoder is None else 1024  # a gzip header and trailer
    if declared.isdigit() and int(declared) > limit + slack:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        data = raw
        while data:
            if decoder is None:
                piece, data = data, b""
            else:
                piece = decoder.feed(data, limit - size)
                data = decoder.pending
            size += len(piece)
            if size > limit:
                raise BodyTooLarge
            chunks.append(piece)
    return b"".join(chunks)
