"""The console's WhatsApp page in a real browser: link by pairing code, Disconnect and reconnect
without a QR, Pause/Resume sending, Log out only once confirmed, and the last error in words a
fleet manager understands, all shown live (over SSE) without a reload."""

from __future__ import annotations

import re

import httpx
import pytest

pytest.importorskip("playwright")

from playwright.async_api import Browser, BrowserContext, Page, expect
from tests.console.test_console_browser import BUSINESS_PHONE, RECIPIENT, log_in, nav
from tests.support import Org, add_user, link_phone, message_with_status, session_status

from wanotify.runtime import Runtime
from wanotify.transports.simulator import SimulatorNetwork

ADMIN = "admin@acme.test"


async def admin_page(
    browser: Browser, live_url: str, runtime: Runtime, client: httpx.AsyncClient, org: Org
) -> tuple[BrowserContext, Page]:
    """An admin (not the owner) on the WhatsApp page, which follows the session live."""
    await add_user(runtime, client, org, email=ADMIN, role="admin")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await log_in(page, live_url, ADMIN)
    await nav(page, "WhatsApp")
    await expect(page.locator("[data-live-note]")).to_have_text(re.compile("^Live"))
    await page.evaluate("window.__sameDocument = true")
    return context, page


async def still_same_document(page: Page) -> None:
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"


async def test_link_by_pairing_code(
    browser: Browser,
    live_url: str,
    org: Org,
    runtime: Runtime,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
) -> None:
    context, page = await admin_page(browser, live_url, runtime, client, org)
    badge = page.locator("[data-session-badge]")
    await expect(badge).to_have_text("Not set up")

    # A number that is not one is refused in words, and nothing starts.
    await page.get_by_text("Link with a pairing code instead").click()
    phone_box = page.get_by_label("Phone number of the WhatsApp account")
    await phone_box.fill("12")
    await page.get_by_role("button", name="Get a pairing code").click()
    await expect(page.locator("#form-error")).to_contain_text("phone")
    await expect(page.locator("[data-pairing-code]")).to_be_hidden()

    # Any common form of the number; the page answers with the 8-character code for it.
    await page.get_by_text("Link with a pairing code instead").click()
    await phone_box.fill("(415) 555-0100")
    await page.get_by_role("button", name="Get a pairing code").click()
    code_box = page.locator("[data-pairing-code]")
    await expect(code_box).to_have_text(re.compile(r"^[1-9A-HJ-NP-TV-Z]{8}$"))
    await expect(page.get_by_role("status").filter(has_text="Pairing code for")).to_contain_text(
        f"Pairing code for {BUSINESS_PHONE}"
    )
    code = (await code_box.inner_text()).strip()
    await expect(badge).to_have_text("Waiting for the QR code to be scanned")
    await expect(page.locator("[data-live-note]")).to_have_text(re.compile("^Live"))
    await page.evaluate("window.__sameDocument = true")

    # The code is the phone's to type: another number cannot use it; the right one links, and
    # the page turns to "connected" by itself.
    with pytest.raises(ValueError, match="another phone number"):
        network.enter_pairing_code(RECIPIENT, code)
    network.enter_pairing_code(BUSINESS_PHONE, code)
    await expect(badge).to_have_text("Connected")
    await expect(page.locator("[data-session-phone]")).to_contain_text(BUSINESS_PHONE)
    await expect(page.locator("img#qr")).to_be_hidden()
    await expect(page.get_by_text("Link with a pairing code instead")).to_be_hidden()
    await still_same_document(page)
    assert (await session_status(client, org))["phone_number"] == BUSINESS_PHONE
    await context.close()


async def test_pause_resume_disconnect_and_log_out_with_confirmation(
    browser: Browser,
    live_url: str,
    org: Org,
    runtime: Runtime,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
) -> None:
    await link_phone(client, network, org, BUSINESS_PHONE)
    context, page = await admin_page(browser, live_url, runtime, client, org)
    badge = page.locator("[data-session-badge]")
    paused = page.locator("[data-session-paused]")
    pause = page.get_by_role("button", name="Pause sending")
    resume = page.get_by_role("button", name="Resume sending")
    await expect(badge).to_have_text("Connected")
    await expect(paused).to_be_hidden()

    # Pause: the page says so, and what it says happens: a message sent meanwhile fails.
    await pause.click()
    await expect(page.get_by_role("status").first).to_contain_text("Sending paused")
    await expect(page.get_by_role("status").first).to_contain_text("session not connected")
    await expect(paused).to_be_visible()
    await expect(paused).to_have_text("· sending is paused")
    await expect(pause).to_be_hidden()
    await expect(resume).to_be_visible()
    assert (await session_status(client, org))["enabled"] is False
    sent = await client.post(
        "/api/messages/send", json={"to": RECIPIENT, "text": "while paused"}, headers=org.headers
    )
    failed = await message_with_status(client, org, sent.json()["message_id"], "failed")
    assert failed["error"] == "session not connected"
    await page.goto(f"{live_url}/")
    await expect(page.locator(".session-glance")).to_contain_text("sending paused")
    await nav(page, "WhatsApp")

    await resume.click()
    await expect(page.get_by_role("status").first).to_have_text("Sending resumed.")
    await expect(paused).to_be_hidden()
    await expect(pause).to_be_visible()
    await expect(resume).to_be_hidden()
    assert (await session_status(client, org))["enabled"] is True

    # Disconnect keeps the link: Connect comes back without a QR code.
    await page.get_by_role("button", name="Disconnect").click()
    await expect(page.get_by_role("status").first).to_contain_text("Disconnected.")
    await expect(badge).to_have_text("Not connected")
    await expect(page.locator("[data-session-error]")).to_have_text(
        "Someone disconnected this session. Press Connect to reconnect (no new QR code needed)."
    )
    await expect(page.get_by_role("button", name="Disconnect")).to_be_hidden()
    await page.locator("#connect").click()
    await expect(badge).to_have_text("Connected")
    await expect(page.locator("img#qr")).to_be_hidden()
    await expect(page.locator("[data-session-error]")).to_be_hidden()
    assert len(network.devices(BUSINESS_PHONE)) == 1  # the same linked device

    # Log out: without ticking the box nothing happens (the browser will not submit it) …
    await page.get_by_text("Log out of WhatsApp (unlink this phone)…").click()
    confirm = page.get_by_label("Yes, unlink this phone")
    # One button of that name on the page (the header's is "Sign out").
    log_out = page.get_by_role("button", name="Log out of WhatsApp", exact=True)
    await log_out.click()
    assert await confirm.evaluate("box => !box.checkValidity()")
    await expect(page).to_have_url(re.compile(r"/whatsapp\?notice=connecting$"))
    await expect(badge).to_have_text("Connected")
    # … and the server refuses an unconfirmed POST too (a script, no JavaScript checks).
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    refused = await page.request.post(
        f"{live_url}/whatsapp/logout", form={"csrf_token": token or ""}, max_redirects=0
    )
    assert refused.status == 422
    assert "tick the box to confirm" in await refused.text()
    assert (await session_status(client, org))["status"] == "connected"
    assert len(network.devices(BUSINESS_PHONE)) == 1

    # Confirmed: logged out, the phone forgot the device, and linking again needs a new QR.
    await confirm.check()
    await log_out.click()
    await expect(page.get_by_role("status").first).to_have_text(
        "Logged out: the phone is unlinked."
    )
    await expect(badge).to_have_text("Logged out")
    assert (await session_status(client, org))["status"] == "logged_out"
    assert network.devices(BUSINESS_PHONE) == []
    await page.locator("#connect").click()
    await expect(badge).to_have_text("Waiting for the QR code to be scanned")
    await expect(page.locator("img#qr")).to_be_visible()
    await context.close()


async def test_the_last_error_is_shown_in_plain_words(
    browser: Browser,
    live_url: str,
    org: Org,
    runtime: Runtime,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
) -> None:
    await link_phone(client, network, org, BUSINESS_PHONE)
    context, page = await admin_page(browser, live_url, runtime, client, org)
    badge = page.locator("[data-session-badge]")
    error = page.locator("[data-session-error]")
    await expect(badge).to_have_text("Connected")
    await expect(error).to_be_hidden()

    # The phone removes the linked device (WhatsApp → Linked devices → Log out).
    assert network.unlink(BUSINESS_PHONE) == 1
    await expect(badge).to_have_text("Logged out")
    await expect(error).to_have_text(
        "The phone removed this linked device. Connect again and scan a new QR code."
    )
    await expect(page.locator("#connect")).to_be_visible()
    await still_same_document(page)

    # Nobody scans the QR in time.
    network.qr_timeout_seconds = 1.5
    await page.locator("#connect").click()
    await page.evaluate("window.__sameDocument = true")
    await expect(page.locator("img#qr")).to_be_visible()
    await expect(error).to_be_hidden()
    await expect(badge).to_have_text("Not connected", timeout=10_000)
    await expect(error).to_have_text(
        "QR code was not scanned within 1.5 seconds. Press Connect to get a new QR code."
    )
    await expect(page.locator("img#qr")).to_be_hidden()
    await still_same_document(page)

    # The same words on the dashboard, where the session is shown at a glance.
    await nav(page, "Dashboard")
    await expect(page.locator(".session-glance")).to_contain_text(
        "QR code was not scanned within 1.5 seconds."
    )
    await context.close()
