"""The protocol's JSON Schema (docs/protocol.schema.json), drawn from the structs of
``engine_sdk.protocol`` so that the two cannot drift apart: a test compares the committed file
with what this module prints.

    python -m engine_sdk.schema > docs/protocol.schema.json

The schema states each frame's fields, types, enumerations and bounds. A few rules are checked in
code rather than in the schema (docs/protocol.md, section 1): decimals' range and places, no U+0000
in free text, timestamps with a timezone between 1900 and 2999, the nesting depth of free JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

from engine_sdk import protocol

__all__ = ["protocol_schema"]

_REF = "#/$defs/{name}"


def protocol_schema() -> dict[str, Any]:
    """One document: the frames an engine sends and the frames a server sends, by ``type``."""
    (engine, server), defs = msgspec.json.schema_components(
        [protocol.EngineFrame, protocol.ServerFrame], ref_template=_REF
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://controlplane.invalid/protocol.schema.json",
        "title": f"Engine protocol, version {protocol.PROTOCOL_VERSION}",
        "description": (
            "Every frame is one JSON object whose `type` names it. `engine_frame`: what an "
            "engine sends; `server_frame`: what the control plane sends. See docs/protocol.md."
        ),
        # anyOf: a heartbeat is both an engine's frame and a server's.
        "anyOf": [{"$ref": "#/$defs/engine_frame"}, {"$ref": "#/$defs/server_frame"}],
        "$defs": {"engine_frame": engine, "server_frame": server, **defs},
    }


def main() -> None:
    json.dump(protocol_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
