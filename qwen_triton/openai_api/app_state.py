"""What every handler of one service instance shares: its config, the served model, the engine client."""
from __future__ import annotations

from dataclasses import dataclass

from .config import ServedModel, ServiceConfig
from .engine_client import EngineClient


@dataclass(frozen=True)
class ServiceState:
    """Built once per app by `app.create_app`; stored on the app, never in a module global."""

    config: ServiceConfig
    model: ServedModel
    engine: EngineClient
