"""The engine protocol over HTTP, and random frames thrown at the gateway."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.models import Command, EngineEvent, Fill, Order
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

URL = "/api/v1/engine/events"


def post(client, token: str | None, body: bytes | str):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.post(URL, data=body, content_type="application/json", **headers)


def test_a_missing_or_wrong_token_gets_401_and_nothing_is_stored(client, engine_and_token):
    for token in (None, "cpe_wrong", "Basic abc"):
        response = post(client, token, f.events_frame(f.order(1, "o-1")))
        assert response.status_code == 401
        assert response.json()[0]["code"] == "unauthorized"
    assert not Order.objects.exists()


def test_events_over_http_are_stored_and_acked(client, engine_and_token):
    engine, token = engine_and_token
    response = post(client, token, f.events_frame(f.order(1, "o-1"), f.fill(2, "f-1", "o-1")))
    assert response.status_code == 200
    assert response.json() == [{"type": "ack", "seq": 2}]
    again = post(client, token, f.events_frame(f.order(1, "o-1"), f.fill(2, "f-1", "o-1")))
    assert again.json() == [{"type": "ack", "seq": 2}]
    assert Fill.objects.filter(engine=engine).count() == 1


def test_hello_over_http_gets_the_welcome(client, engine_and_token):
    engine, token = engine_and_token
    hello = p.Hello(
        protocol=1,
        engine_build="b",
        config_hash="c",
        mode="paper",
        broker="x",
        account="y",
        trading_state="ACTIVE",
        last_seq=0,
    )
    [welcome] = post(client, token, p.encode(hello)).json()
    assert welcome["type"] == "welcome"
    assert welcome["engine_name"] == engine.name


def test_a_malformed_body_gets_400_naming_the_problem(client, engine_and_token):
    _, token = engine_and_token
    response = post(client, token, "{not json")
    assert response.status_code == 400
    assert response.json()[0]["code"] == "malformed_json"
    response = post(client, token, json.dumps({"type": "heartbeat", "ts": "yesterday"}))
    assert response.status_code == 400
    error = response.json()[0]
    assert error["code"] == "invalid_frame"
    assert error["field"] == "ts"


def test_pending_commands_are_listed_for_the_token_engine_only(client, make_engine):
    alpha, alpha_token = make_engine("alpha")
    beta, _ = make_engine("beta")
    Command.objects.create(engine=alpha, kind="pause", reason="lunch", issued_by_label="ops")
    Command.objects.create(engine=beta, kind="kill", reason="beta only", issued_by_label="ops")
    response = client.get("/api/v1/engine/commands", HTTP_AUTHORIZATION=f"Bearer {alpha_token}")
    assert response.status_code == 200
    [command] = response.json()
    assert command["kind"] == "pause"
    assert Command.objects.get(engine=alpha).status == "delivered"
    assert Command.objects.get(engine=beta).status == "pending"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(
            ["order", "fill", "position", "account", "metric", "log", "state", "nope"]
        ),
        "seq": st.integers(min_value=-2, max_value=50),
    },
    optional={
        "ts": st.sampled_from(["2026-11-23T14:00:00Z", "2026-11-23T14:00:00", "x", 5]),
        "symbol": st.text(max_size=40),
        "quantity": json_values,
        "price": json_values,
        "client_order_id": st.text(max_size=70),
        "fill_id": st.text(max_size=70),
        "side": st.sampled_from(["buy", "sell", "hold"]),
        "status": st.text(max_size=10),
        "order_type": st.sampled_from(["limit", "market", "x"]),
        "equity": json_values,
        "cash": json_values,
        "name": st.text(max_size=10),
        "value": json_values,
        "level": st.sampled_from(["info", "error", "loud"]),
        "message": st.text(max_size=30),
    },
)
frames = st.one_of(
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.builds(
        lambda evs: json.dumps({"type": "events", "events": evs}), st.lists(event_like, max_size=8)
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=frames)
def test_random_frames_never_break_the_gateway_or_change_stored_data(
    client, engine_and_token, body
):
    engine, token = engine_and_token
    if not Order.objects.filter(engine=engine, client_order_id="anchor").exists():
        post(
            client, token, f.events_frame(f.order(1, "anchor"), f.fill(2, "anchor-fill", "anchor"))
        )
    anchor = Order.objects.filter(client_order_id="anchor").values().get()
    anchor_fill = Fill.objects.filter(fill_id="anchor-fill").values().get()

    response = post(client, token, body)

    assert response.status_code in (200, 400), response.content
    answer = response.json()
    assert isinstance(answer, list)
    for frame in answer:
        assert frame["type"] in ("ack", "error", "welcome", "heartbeat")
        if frame["type"] == "error":
            assert frame["code"] in p.ERROR_CODES and frame["message"]
    # Whatever came in, what was already stored is untouched.
    assert Order.objects.filter(client_order_id="anchor").values().get() == anchor
    assert Fill.objects.filter(fill_id="anchor-fill").values().get() == anchor_fill
    assert EngineEvent.objects.filter(engine=engine, seq__lte=2).count() == 2


def test_command_ack_and_result_move_the_command_forward_and_never_back(client, make_engine):
    alpha, token = make_engine("alpha")
    _, beta_token = make_engine("beta")
    command = Command.objects.create(engine=alpha, kind="pause", reason="r", issued_by_label="o")
    client.get("/api/v1/engine/commands", HTTP_AUTHORIZATION=f"Bearer {token}")
    # Another engine's token cannot touch it.
    post(client, beta_token, p.encode(p.CommandAck(command_id=command.pk)))
    assert Command.objects.get(pk=command.pk).status == "delivered"
    post(client, token, p.encode(p.CommandAck(command_id=command.pk)))
    assert Command.objects.get(pk=command.pk).status == "acknowledged"
    # Acknowledged without a result: delivered again (the engine applies each id once).
    again = client.get("/api/v1/engine/commands", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert [c["command_id"] for c in again] == [str(command.pk)]
    result = p.CommandResult(
        command_id=command.pk,
        status="succeeded",
        detail="paused",
        data={"cancelled": 2},
        trading_state="PAUSED",
    )
    post(client, token, p.encode(result))
    post(client, token, p.encode(p.CommandAck(command_id=command.pk)))  # a late repeat
    stored = Command.objects.get(pk=command.pk)
    assert stored.status == "succeeded"
    assert stored.result == {"cancelled": 2}
    assert stored.completed_at is not None
    alpha.refresh_from_db()
    assert alpha.reported_state == "PAUSED"
    assert client.get("/api/v1/engine/commands", HTTP_AUTHORIZATION=f"Bearer {token}").json() == []


def test_an_engine_over_its_request_rate_gets_429_and_another_engine_does_not(
    client, make_engine, settings
):
    # Ten seconds a token: none comes back during the test.
    settings.ENGINE_MAX_FRAMES_PER_S, settings.ENGINE_FRAME_BURST = 0.1, 2
    alpha, alpha_token = make_engine("alpha")
    _, beta_token = make_engine("beta")
    assert post(client, alpha_token, f.events_frame(f.metric(1))).status_code == 200
    assert post(client, alpha_token, f.events_frame(f.metric(2))).status_code == 200

    refused = post(client, alpha_token, f.events_frame(f.metric(3)))
    assert refused.status_code == 429
    [error] = refused.json()
    assert error["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 10
    polled = client.get("/api/v1/engine/commands", HTTP_AUTHORIZATION=f"Bearer {alpha_token}")
    assert polled.status_code == 429
    # Not processed: seq 3 is neither stored nor acked, the engine sends it again.
    alpha.refresh_from_db()
    assert alpha.last_seq == 2
    assert post(client, beta_token, f.events_frame(f.metric(1))).json() == [
        {"type": "ack", "seq": 1}
    ]


def test_a_body_over_the_upload_limit_is_refused_frame_too_large(
    client, engine_and_token, settings
):
    _, token = engine_and_token
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(client, token, f.events_frame(*(f.metric(seq) for seq in range(1, 40))))
    assert response.status_code == 400
    assert response.json()[0]["code"] == "frame_too_large"


def test_an_event_the_database_will_not_store_is_refused_alone_over_http(client, engine_and_token):
    engine, token = engine_and_token
    big = "9000000000000000"  # two fills of it: a position NUMERIC(24, 8) cannot hold
    response = post(
        client,
        token,
        f.events_frame(
            f.order(1, "o-1", qty=big),
            f.fill(2, "f-1", "o-1", qty=big),
            f.fill(3, "f-2", "o-1", qty=big),
            f.metric(4),
        ),
    )

    # Not a 503 that the engine would resend for ever: the event is refused, the rest stored.
    assert response.status_code == 200
    refused, ack = response.json()
    assert (refused["code"], refused["field"], refused["seq"]) == ("event_refused", "events[2]", 3)
    assert ack == {"type": "ack", "seq": 4}
    assert list(Fill.objects.filter(engine=engine).values_list("seq", flat=True)) == [2]


def test_the_protocol_schema_is_served_to_anyone_and_is_the_published_file(client, db):
    from tests.sdk.test_schema import SCHEMA_FILE

    response = client.get("/api/v1/protocol.schema.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response.json() == json.loads(SCHEMA_FILE.read_text())
    assert client.post("/api/v1/protocol.schema.json").status_code == 405


@pytest.mark.parametrize("kind", ["[]", "{}", "1", "null", "true", '["events"]'])
def test_a_type_that_is_not_a_string_is_refused_naming_the_field(client, engine_and_token, kind):
    _, token = engine_and_token
    response = post(client, token, f'{{"type": {kind}}}'.encode())
    assert response.status_code == 400
    [error] = response.json()
    assert (error["code"], error["field"]) == ("invalid_frame", "type"), error
