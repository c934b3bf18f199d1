"""Gate access: people, cards, gates, access groups, and the passages the edge reports."""
