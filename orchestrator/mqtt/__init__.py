"""MQTT adapter: topics, batched ingest, command publishing."""
