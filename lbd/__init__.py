"""lbd: a Layer-7 HTTP load balancer daemon for hospital information systems."""

__version__ = "0.1.0"
