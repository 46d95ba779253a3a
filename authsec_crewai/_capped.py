"""Reading an HTTP body with a size cap, shared by the live transport and the fetcher.

A hostile or broken server can answer with gigabytes; the body is streamed and
abandoned as soon as it passes the cap, so at most ``limit`` bytes (plus one
chunk) are ever held in memory.
"""

from __future__ import annotations

import httpx

__all__ = ["BodyTooLarge", "read_capped"]


class BodyTooLarge(Exception):
    """The body passed the cap; the caller turns this into its own typed error."""


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes.

    A declared Content-Length over the limit is refused before reading anything.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
