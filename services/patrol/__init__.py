"""Patrol: routes, checkpoints, scheduled rounds, handheld scans, missed-round detection, incidents."""
