"""How the web process is run: the uvicorn options every launcher uses (``manage.py up``, the
tests' servers, bench/; the Dockerfile repeats them, as it cannot import this)."""

from __future__ import annotations

UVICORN_OPTIONS: tuple[str, ...] = (
    "--lifespan",
    "off",
    "--no-access-log",
    # The client's address is REMOTE_ADDR, the TCP peer: uvicorn would otherwise take it from
    # X-Forwarded-For of any connection from 127.0.0.1. TRUSTED_PROXY_COUNT decides instead.
    "--no-proxy-headers",
    # Frames of 2,000 engine events fit (docs/protocol.md: MAX_FRAME_BYTES).
    "--ws-max-size",
    "16777216",
    # No permessage-deflate: compressing every fleet update once per browser took a third of the
    # event loop with a hundred browsers (bench/fanout.py), and the sockets are on a desk's LAN.
    "--ws-per-message-deflate",
    "false",
)
