"""Parking: vehicles, lanes, sessions, tariffs, monthly passes and occupancy."""
