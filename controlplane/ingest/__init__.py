"""Durable, idempotent storage of engine event batches (controlplane.ingest.store), with the
position ledger's arithmetic (ledger) and the statements' SQL (sql) apart."""

from __future__ import annotations

from controlplane.ingest.store import (
    COPY_MIN_ROWS,
    IngestResult,
    UnknownEngine,
    ingest_batches,
    ingest_events,
)

__all__ = ("COPY_MIN_ROWS", "IngestResult", "UnknownEngine", "ingest_batches", "ingest_events")
