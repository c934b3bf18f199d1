"""The operations console: JSON HTTP API for staff (the web UI comes with later issues)."""
