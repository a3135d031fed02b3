"""The models describe the database: no change waits to be made into a migration, and each
foreign key is a constraint in the database exactly where its field says so."""

from __future__ import annotations

from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db


def test_the_models_and_the_migrations_agree():
    out = StringIO()
    # Exits (SystemExit) when the models hold changes that no migration records.
    call_command("makemigrations", check=True, dry_run=True, stdout=out)
    assert "No changes detected" in out.getvalue()


def test_a_foreign_key_is_a_database_constraint_exactly_where_its_field_says_so():
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.conrelid::regclass::text, a.attname
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
            WHERE c.contype = 'f'
            """
        )
        constrained = set(cursor.fetchall())
    declared = {}
    for model in apps.get_app_config("controlplane").get_models():
        if not model._meta.managed:
            continue
        for field in model._meta.concrete_fields:
            if field.many_to_one or field.one_to_one:
                key = (model._meta.db_table, field.column)
                declared[key] = field.db_constraint
    assert declared, "no foreign keys found"
    assert {key for key, constraint in declared.items() if constraint} == {
        key for key in declared if key in constrained
    }
