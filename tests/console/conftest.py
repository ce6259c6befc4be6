"""The console's browser tests: the shared settings, with a QR that rotates quickly so a test
can watch the picture change."""

from __future__ import annotations

import pytest

from wanotify.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.sim_delivery_delay_seconds = 0.05
    settings.sim_qr_rotate_seconds = 2.0
    return settings
