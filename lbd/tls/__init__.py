"""TLS: termination on frontends (SNI, hot-reloaded certificates) and TLS to servers."""
