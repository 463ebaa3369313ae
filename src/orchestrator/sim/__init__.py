"""Simulated devices speaking the MQTT contract."""
