"""Session persistence: the persistence cookie (cookie.py), stick tables (table.py), the
per-backend policy the engine consults (policy.py) and the periodic table sweep (sweeper.py)."""
