"""The engines core: models, commands, ingest, the engine gateway and the API."""
