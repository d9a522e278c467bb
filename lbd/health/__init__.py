"""Server health: state.py (the rise/fall machine, sans-IO, the one truth behind
`ServerState.up`), active.py (check tasks), passive.py (observation of live traffic, called by
the proxy) and manager.py (configuration, reload, operator enable/disable)."""
