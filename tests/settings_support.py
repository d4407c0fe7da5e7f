"""Limits and HTTP options as the settings declare them, for tests without an environment.

``Limits`` and ``HttpOptions`` declare no defaults of their own (they are settings, declared once
in ``actors.runtime.settings`` and turned into options by the supervisor), so tests take theirs
from the same declarations and the same derivation as the service.
"""

from __future__ import annotations

from typing import Any

import attrs

from actors.domain.events import Limits
from actors.http.app import HttpOptions
from actors.runtime.settings import load_settings
from actors.supervisor import http_options


def default_limits(**overrides: Any) -> Limits:
    """The service's default ``Limits``, with ``overrides`` replacing some of them."""
    limits: Limits = attrs.evolve(load_settings({}).limits.limits(), **overrides)
    return limits


def default_http_options(**overrides: Any) -> HttpOptions:
    """The service's default ``HttpOptions``, with ``overrides`` replacing some of them."""
    options: HttpOptions = attrs.evolve(http_options(load_settings({})), **overrides)
    return options
