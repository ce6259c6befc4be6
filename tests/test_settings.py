"""Settings come from ``WANOTIFY_*`` environment variables and a ``.env`` file in the working
directory; a variable set in the environment wins over the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from wanotify.settings import Settings


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no ``WANOTIFY_*`` variables of the caller's."""
    monkeypatch.chdir(tmp_path)
    for name in ("WANOTIFY_DEFAULT_REGION", "WANOTIFY_DISPATCH_POLL_SECONDS", "WANOTIFY_PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_dotenv_file_in_the_working_directory_sets_settings(workdir: Path) -> None:
    assert Settings().default_region == "US"  # no file yet: the defaults
    (workdir / ".env").write_text(
        "# wanotify\nWANOTIFY_DEFAULT_REGION=KE\nWANOTIFY_DISPATCH_POLL_SECONDS=2.5\n"
        "WANOTIFY_PORT=8123\n"
    )
    settings = Settings()
    assert settings.default_region == "KE"
    assert settings.dispatch_poll_seconds == 2.5
    assert settings.port == 8123


def test_the_environment_wins_over_the_dotenv_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / ".env").write_text("WANOTIFY_DEFAULT_REGION=KE\nWANOTIFY_PORT=8123\n")
    monkeypatch.setenv("WANOTIFY_DEFAULT_REGION", "GB")
    settings = Settings()
    assert settings.default_region == "GB"
    assert settings.port == 8123


def test_a_dotenv_file_elsewhere_is_not_read(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / ".env").write_text("WANOTIFY_DEFAULT_REGION=KE\n")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Settings().default_region == "US"


def test_a_negative_claim_linger_is_refused_by_name(workdir: Path) -> None:
    with pytest.raises(ValidationError, match="dispatch_claim_linger_seconds"):
        Settings(_env_file=None, dispatch_claim_linger_seconds=-0.5)  # type: ignore[call-arg]
