"""Durable, idempotent storage of engine event batches: the statements and round trips (store),
the position ledger's arithmetic on plain values (ledger), and the SQL texts built from the models
(sql)."""
