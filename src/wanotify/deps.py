"""Request-level dependencies every router shares that are not about the database or users.

Dependencies are ``async def`` even when they await nothing: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop per request for reading an attribute."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from wanotify.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
