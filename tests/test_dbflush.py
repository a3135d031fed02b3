"""The test database is emptied after a test that committed, as Django's flush empties it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection

from controlplane import roles
from controlplane.models import Engine


def _tables_with_rows() -> list[str]:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    with connection.cursor() as cursor:
        return [
            table
            for table in tables
            if cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {connection.ops.quote_name(table)})")
            and cursor.fetchone()[0]
        ]


@pytest.mark.django_db(transaction=True)
def test_a_flush_empties_every_table_then_the_roles_are_written_again(
    make_engine: Callable[..., tuple[Engine, str]], operator: User
) -> None:
    make_engine("alpha", mode="live", strategy_tags=["momentum"])
    written = set(_tables_with_rows())
    # Rows that point at others (an engine's stage change at the engine, a user's group at the
    # group): truncating them needs the tables they point at in the same statement, or CASCADE.
    assert {"auth_user", "auth_user_groups", "auth_group"} <= written

    # As a test's teardown calls it (TransactionTestCase).
    call_command(
        "flush", interactive=False, verbosity=0, reset_sequences=False, inhibit_post_migrate=True
    )
    assert _tables_with_rows() == []

    call_command("flush", interactive=False, verbosity=0, reset_sequences=False)
    assert not User.objects.exists() and not Engine.objects.exists()
    assert set(Group.objects.values_list("name", flat=True)) == set(roles.ROLES)
    # The roles hold the permissions of the apps migrated last too (journal after golive).
    operator_may = set(
        Group.objects.get(name=roles.OPERATOR).permissions.values_list(
            "content_type__app_label", "codename"
        )
    )
    assert {("golive", "request_promotion"), ("journal", "sign_review")} <= operator_may
