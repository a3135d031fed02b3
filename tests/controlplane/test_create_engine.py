from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from controlplane.models import AuditEvent, Engine, hash_token


@pytest.mark.django_db
def test_create_engine_prints_the_token_once_and_stores_only_its_hash():
    out = StringIO()
    call_command("create_engine", "momo-us-1", "--mode", "paper", "--tag", "momentum", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert token.startswith("cpe_") and len(token) > 40
    engine = Engine.objects.get(name="momo-us-1")
    assert engine.mode == "paper"
    assert engine.strategy_tags == ["momentum"]
    assert engine.token_hash == hash_token(token)
    assert token not in str(Engine.objects.filter(pk=engine.pk).values().get())
    assert AuditEvent.objects.filter(action="engine_create", target_id=str(engine.pk)).exists()


@pytest.mark.django_db
def test_create_engine_refuses_a_duplicate_name_and_keeps_the_first(engine_and_token):
    engine, _ = engine_and_token
    before = Engine.objects.get(pk=engine.pk).token_hash
    with pytest.raises(CommandError, match="name: Engine with this Name already exists"):
        call_command("create_engine", engine.name, stdout=StringIO())
    assert Engine.objects.get(pk=engine.pk).token_hash == before


@pytest.mark.django_db
def test_create_engine_refuses_a_bad_name():
    with pytest.raises(CommandError, match="name:"):
        call_command("create_engine", "no spaces allowed", stdout=StringIO())
    assert not Engine.objects.exists()
