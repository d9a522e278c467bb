"""Logs: the access log (access.py: queue and writer thread; formats.py: httplog and JSON
lines; targets.py: stdout, file, syslog) and the event log (events.py: `lbd.events`)."""
