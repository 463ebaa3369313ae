"""Fleet firmware-upgrade orchestrator for OneNET OTA."""

__version__ = "0.1.0"
