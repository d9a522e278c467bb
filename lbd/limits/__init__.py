"""Edge protection of a frontend: source access lists, per-source abuse limits, maxconn."""
