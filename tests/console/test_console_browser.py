"""The web console in a real browser (Debian's chromium through Playwright) against a live
server: link WhatsApp by QR with the simulated phone, write a template with its live preview,
send a test message and follow it to "read"; a viewer gets no buttons and forged POSTs fail.

Set ``WANOTIFY_SCREENSHOTS=1`` to write every page to ``docs/screenshots/`` (the README's
pictures); otherwise they go to the test's tmp dir.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

pytest.importorskip("playwright")

from playwright.async_api import Browser, Page, expect
from tests.support import PASSWORD, Org, add_user

from wanotify.runtime import Runtime

RECIPIENT = "+14155550123"
BUSINESS_PHONE = "+14155550100"


async def shot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def log_in(page: Page, base: str, email: str) -> None:
    await page.goto(f"{base}/")
    await expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


async def nav(page: Page, name: str) -> None:
    await page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()


async def reload_until(page: Page, locator: str, text: str, tries: int = 100) -> None:
    """For pages that are not live (history): reload until ``locator`` shows ``text``."""
    for _ in range(tries):
        if (await page.locator(locator).first.inner_text()).strip() == text:
            return
        await page.wait_for_timeout(100)
        await page.reload()
    await expect(page.locator(locator).first).to_have_text(text)


async def test_owner_links_whatsapp_writes_a_template_and_follows_a_message_to_read(
    browser: Browser, live_url: str, org: Org, shots: Path
) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())

    # Log in; the login page is the first screenshot.
    await page.goto(f"{live_url}/login")
    await shot(page, shots, "login")
    await log_in(page, live_url, "owner@acme.test")
    response = await page.request.get(f"{live_url}/")
    assert "default-src 'self'" in response.headers["content-security-policy"]

    # Connect: the QR appears, rotates, and gives way to "connected" when the phone scans,
    # all without a reload (the marker set on the window survives).
    await nav(page, "WhatsApp")
    await expect(page.locator("[data-session-badge]")).to_have_text("Not set up")
    await page.locator("#connect").click()
    qr = page.locator("img#qr")
    await expect(qr).to_be_visible()
    await page.wait_for_function(
        "() => { const i = document.querySelector('img#qr'); return i.complete && i.naturalWidth }"
    )
    await expect(page.locator("[data-live-note]")).to_have_text(re.compile("^Live"))
    await page.evaluate("window.__sameDocument = true")
    first_src = await qr.get_attribute("src")
    await expect(qr).not_to_have_attribute("src", first_src or "", timeout=10_000)
    await shot(page, shots, "whatsapp-qr")
    await page.locator("#sim-phone").fill(BUSINESS_PHONE)
    await page.locator("#sim-scan").click()
    await expect(page.locator("[data-session-badge]")).to_have_text("Connected")
    await expect(page.locator("[data-session-phone]")).to_contain_text(BUSINESS_PHONE)
    await expect(qr).to_be_hidden()
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    await shot(page, shots, "whatsapp-connected")

    # A template: inline validation errors, then the preview following the typing.
    await nav(page, "Templates")
    await shot(page, shots, "templates")
    await page.get_by_role("link", name="New template").click()
    await page.locator("#name").fill("Truck Ready")
    body = page.get_by_label("Message", exact=True)
    await body.fill("Hi {{ driver }}, truck ")
    preview, problem = page.locator("#preview-text"), page.locator("#preview-error")
    await expect(problem).to_contain_text("not declared in variables: driver")
    await page.locator("#var-0-name").fill("driver")
    await page.locator("#var-0-example").fill("Amina")
    await expect(preview).to_have_text("Hi Amina, truck")
    await body.press_sequentially("{{ plate }} is ready.", delay=15)
    await expect(problem).to_contain_text("plate")
    await page.locator("#var-1-name").fill("plate")
    await page.locator("#var-1-example").fill("KX-12")
    await expect(preview).to_have_text("Hi Amina, truck KX-12 is ready.")
    await page.locator("#save-template").click()
    await expect(page.locator("#form-error")).to_contain_text("name 'Truck Ready' is not valid")
    await expect(page.locator("#name")).to_have_attribute("aria-invalid", "true")
    await expect(preview).to_have_text("Hi Amina, truck KX-12 is ready.")  # nothing was lost
    await page.locator("#name").fill("truck_ready")
    await page.locator("#save-template").click()
    await expect(page.get_by_role("status").first).to_have_text("Template saved.")
    await shot(page, shots, "template-editor")

    # Overriding a system template starts from its text.
    await page.goto(f"{live_url}/templates?kind=system&q=trial")
    await page.get_by_role("link", name="trial_welcome").click()
    await shot(page, shots, "template-system")
    await page.get_by_role("link", name="Override for my organization").click()
    await expect(page.locator("#name")).to_have_value("trial_welcome")
    # Save the override with a changed text: the org's copy is what the console shows now.
    await body.fill(await body.input_value() + " Reply STOP to opt out.")
    await expect(page.locator("#preview-text")).to_contain_text("Reply STOP to opt out.")
    await page.locator("#save-template").click()
    await expect(page.get_by_role("status").first).to_have_text("Template saved.")
    await expect(page.get_by_role("heading", name="Edit template trial_welcome")).to_be_visible()
    await expect(page.locator(".notice").filter(has_text="overrides")).to_contain_text(
        "overrides the system template trial_welcome"
    )
    await expect(body).to_have_value(re.compile(r"Reply STOP to opt out\.$"))
    await page.goto(f"{live_url}/templates?q=trial")
    row = page.locator("#template-list tbody tr").filter(has_text="trial_welcome")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("custom overrides system")

    # Send a test message from the template; follow it to delivered.
    await nav(page, "Send test")
    await page.get_by_label("Recipient phone number").fill(RECIPIENT)
    await page.get_by_label("A template").check()
    await page.get_by_label("Template", exact=True).select_option("truck_ready")
    await page.get_by_label("Template variables").fill("driver=Kofi\nplate=GH-7")
    await shot(page, shots, "send")
    await page.locator("#send").click()
    await expect(page.get_by_role("heading", name=f"Message to {RECIPIENT}")).to_be_visible()
    await reload_until(page, "#message-status", "delivered")

    await nav(page, "History")
    await reload_until(page, "#message-list [data-status]", "delivered")

    # The recipient's simulated phone shows the text; opening the chat sends "read".
    await page.goto(f"{live_url}/whatsapp?inbox={RECIPIENT.replace('+', '%2B')}")
    await expect(page.locator("#inbox")).to_contain_text("Hi Kofi, truck GH-7 is ready.")
    await shot(page, shots, "simulated-phone")
    await page.locator("#sim-read").click()
    await nav(page, "History")
    await reload_until(page, "#message-list [data-status]", "read")
    await shot(page, shots, "history")

    await page.locator("#message-list a").first.click()
    details_url = page.url
    timeline = page.locator("#timeline li.done strong")
    await expect(timeline).to_have_text(["queued", "sent", "delivered", "read"])
    await expect(page.locator("pre.bubble")).to_have_text("Hi Kofi, truck GH-7 is ready.")
    await shot(page, shots, "message-details")

    # API keys: the secret once, then revoke.
    await nav(page, "API keys")
    await page.get_by_label("Name").fill("billing service")
    await page.locator("#create-key").click()
    await expect(page.locator("#new-key")).to_have_text(re.compile(r"^wan_"))
    await shot(page, shots, "api-keys")
    await page.goto(f"{live_url}/api-keys")
    await expect(page.locator("#new-key")).to_have_count(0)
    await page.get_by_role("button", name="Revoke").click()
    await expect(page.locator("#key-list")).to_contain_text("revoked")

    await nav(page, "Audit log")
    await expect(page.locator("#audit-list")).to_contain_text("session.connected")
    await shot(page, shots, "audit-log")

    await nav(page, "Dashboard")
    await expect(page.locator("td[data-stat=sent]").first).to_have_text("1")
    await shot(page, shots, "dashboard")

    # Phone width.
    phone = await browser.new_context(
        viewport={"width": 390, "height": 844}, storage_state=await context.storage_state()
    )
    small = await phone.new_page()
    for path, heading in (
        ("/", "Dashboard"),
        ("/messages", "Notification history"),
        (details_url.removeprefix(live_url), f"Message to {RECIPIENT}"),
        ("/whatsapp", "WhatsApp settings"),
        ("/templates", "Message templates"),
    ):
        await small.goto(f"{live_url}{path}")
        await expect(small.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        width = await small.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} scrolls sideways at phone width ({width}px)"
        if path == "/":
            await shot(small, shots, "dashboard-phone")
    await phone.close()

    # Sign out: the cookie is gone, pages ask for a login again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile("/login$"))
    await page.goto(f"{live_url}/messages")
    await expect(page).to_have_url(re.compile(r"/login\?next="))
    await context.close()


async def test_viewer_sees_no_send_or_edit_buttons_and_forged_posts_are_refused(
    browser: Browser, live_url: str, org: Org, runtime: Runtime, client: httpx.AsyncClient
) -> None:
    await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    context = await browser.new_context()
    page = await context.new_page()
    await log_in(page, live_url, "viewer@acme.test")

    await expect(page.get_by_role("link", name="Send test")).to_have_count(0)
    await expect(page.get_by_role("link", name="API keys")).to_have_count(0)
    await page.goto(f"{live_url}/whatsapp")
    await expect(page.locator("#connect")).to_have_count(0)
    await page.goto(f"{live_url}/templates")
    await expect(page.get_by_role("link", name="New template")).to_have_count(0)
    assert (await page.request.get(f"{live_url}/send")).status == 403

    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    form = {"csrf_token": token, "to": RECIPIENT, "kind": "text", "text": "forged"}
    refused = await page.request.post(f"{live_url}/send", form=form, max_redirects=0)
    assert refused.status == 403, await refused.text()
    refused = await page.request.post(
        f"{live_url}/whatsapp/connect", form={"csrf_token": token}, max_redirects=0
    )
    assert refused.status == 403
    await context.close()

    # An owner's form without the CSRF token (another site posting) is refused too.
    owner = await browser.new_context()
    page = await owner.new_page()
    await log_in(page, live_url, "owner@acme.test")
    forged = await page.request.post(
        f"{live_url}/send", form={"to": RECIPIENT, "kind": "text", "text": "x"}, max_redirects=0
    )
    assert forged.status == 403
    wrong = await page.request.post(
        f"{live_url}/send",
        form={"csrf_token": "guess", "to": RECIPIENT, "kind": "text", "text": "x"},
        max_redirects=0,
    )
    assert wrong.status == 403
    history = await page.request.get(f"{live_url}/messages")
    assert "forged" not in await history.text()
    await owner.close()
