"""The url_policy in force for a request, resolved once per configuration.

Rules: a module's `url_policy` overrides its frontend's; requests no module claims ("other")
follow the frontend's. `url_policy_dry_run` turns every url_policy refusal into "would-reject":
recorded, then forwarded unchanged. Built by the runtime from the frozen config; read-only.
"""

from __future__ import annotations

from lbd.config.schema import Frontend, UrlPolicy


class UrlPolicies:
    __slots__ = ("default", "dry_run", "modules")

    def __init__(self, frontend: Frontend) -> None:
        self.default: UrlPolicy = frontend.url_policy
        self.dry_run = frontend.url_policy_dry_run
        self.modules: dict[str, UrlPolicy] = {
            m.name: m.url_policy for m in frontend.modules if m.url_policy is not None
        }

    def for_module(self, module: str) -> UrlPolicy:
        return self.modules.get(module, self.default)
