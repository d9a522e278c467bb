"""Mock EHR backends (aiohttp) and the `lbd demo` orchestration: test and demo tooling."""

from lbd.mock.app import build_app, mock_main, serve_mock, start_mock
from lbd.mock.demo import demo_main

__all__ = ["build_app", "demo_main", "mock_main", "serve_mock", "start_mock"]
