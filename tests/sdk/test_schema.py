"""docs/protocol.schema.json is the protocol's JSON Schema: drawn from engine_sdk.protocol, and
what the SDK sends and the server answers validates against it."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import jsonschema_rs
import pytest

from engine_sdk import protocol as p
from engine_sdk.schema import protocol_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "protocol.schema.json"
NOW = p.utc_now()


def test_the_committed_schema_is_the_protocols() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == protocol_schema(), (
        "docs/protocol.schema.json is out of date: "
        "python -m engine_sdk.schema > docs/protocol.schema.json"
    )


@pytest.fixture(scope="module")
def validator() -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


FRAMES = [
    p.Hello(
        protocol=1,
        engine_build="b1",
        config_hash="c1",
        mode="paper",
        broker="sim",
        account="A1",
        trading_state="ACTIVE",
        last_seq=0,
    ),
    p.Events(
        events=[
            p.FillEvent(
                seq=1,
                ts=NOW,
                fill_id="f1",
                client_order_id="o1",
                symbol="AAPL",
                side="buy",
                quantity=Decimal("10"),
                price=Decimal("101.5"),
            ),
            p.MetricEvent(seq=2, ts=NOW, name="broker_connected", value=1.0),
        ]
    ),
    p.Heartbeat(ts=NOW, trading_state="HALTED", last_seq=2, limits_version=3),
    p.CommandResult(command_id=uuid.uuid4(), status="succeeded", data={"checks": {"gate": True}}),
    p.Welcome(
        protocol=1,
        engine_id=1,
        engine_name="e1",
        last_seq=0,
        heartbeat_interval_s=5.0,
        desired_state="ACTIVE",
        limits_version=0,
        stage="small_capital",
        capital_ceiling="25000.00",
    ),
    p.Command(command_id=uuid.uuid4(), kind="kill_drill", issued_at=NOW),
    p.Error(code="stage_forbids_live", message="paper engines may not trade live"),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_frames_validate(validator: jsonschema_rs.Draft202012Validator, frame: object) -> None:
    validator.validate(json.loads(p.encode(frame)))


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "hello", "protocol": 1},  # fields missing
        {
            "type": "welcome",
            "protocol": 1,
            "engine_id": 1,
            "engine_name": "e",
            "last_seq": 0,
            "heartbeat_interval_s": 5,
            "desired_state": "ACTIVE",
            "limits_version": 0,
            "stage": "production",
        },  # no such stage
        {
            "type": "command",
            "command_id": str(uuid.uuid4()),
            "kind": "explode",
            "issued_at": NOW.isoformat(),
        },  # no such command
        {"type": "nonsense"},
    ],
)
def test_bad_frames_do_not_validate(
    validator: jsonschema_rs.Draft202012Validator, bad: dict
) -> None:
    assert not validator.is_valid(bad)
