"""The engine gateway: where engines connect (docs/protocol.md).

- ``socket``: the WebSocket consumer at /ws/engine/v1, and the writers that store the events
  frames and command answers of every engine socket of a web process together.
- ``http``: the same envelopes over HTTP, for engines that cannot hold a socket.
- ``decoding``: what arrives; ``session``: hello, welcome, heartbeats, answers;
  ``batches``: storing events frames, refusing what cannot be stored, acknowledging.
- ``ratelimit``: the frames an engine may send per second.
"""
