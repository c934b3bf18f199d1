"""Gatehouse: shared pieces (settings, database, logging, bus, CLI) and the generated contracts."""
__version__ = "0.1.0"
