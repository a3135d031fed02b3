"""The ingest's SQL texts (controlplane.ingest.sql) follow the models, without a database: the
columns they name are the models' columns, and a new instrument gets the model's defaults."""

from __future__ import annotations

import pytest
from django.db import models

from controlplane.ingest import sql
from controlplane.models import (
    AccountSnapshot,
    Engine,
    EngineLog,
    Fill,
    Instrument,
    MetricSample,
    Order,
    Position,
)


def _columns(model: type[models.Model]) -> set[str]:
    return {field.column for field in model._meta.concrete_fields}


@pytest.mark.parametrize(
    ("model", "columns"),
    [
        (Order, sql.ORDER_COLUMNS),
        (Position, sql.POSITION_COLUMNS),
        (AccountSnapshot, sql.ACCOUNT_COLUMNS),
        (MetricSample, sql.METRIC_COLUMNS),
        (EngineLog, sql.LOG_COLUMNS),
    ],
)
def test_the_rows_written_are_the_model_s_columns(model, columns):
    assert set(sql.names(columns)) <= _columns(model)


def test_the_fills_copied_and_the_engine_columns_set_are_the_model_s():
    assert set(sql.FILL_COLUMNS) <= _columns(Fill)
    assert set(sql.ENGINE_COLUMNS) | set(sql.ENGINE_FIELDS) <= _columns(Engine)


def test_the_statements_name_the_models_tables():
    assert f"INSERT INTO {Fill._meta.db_table} " in sql.INSERT_FILLS
    assert f"INSERT INTO {Order._meta.db_table} AS o" in sql.UPSERT_ORDERS_JSON
    assert f"UPDATE {Engine._meta.db_table} e SET" in sql.update_engines(("last_seq",))
    metrics = MetricSample._meta.db_table
    appended = sql.append(metrics, sql.METRIC_COLUMNS)
    assert appended.startswith(f"INSERT INTO {metrics} (engine_id, ts, name, value, seq) SELECT")


def test_a_new_symbol_gets_the_instrument_model_s_defaults():
    bare = Instrument(symbol="NEWCO")
    values = (
        f"'{bare.sector}', '{bare.asset_class}', {bare.multiplier}, '{bare.currency}', "
        f"'{bare.described_by}'"
    )
    assert f"SELECT s, {values} FROM unnest" in sql.CREATE_INSTRUMENTS
