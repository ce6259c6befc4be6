"""The dispatcher: claims due notifications in batches and sends each through its org's session.

It sleeps on an event that enqueues set (so a new notification is picked up within
milliseconds), bounded by the next due time and a polling fallback for enqueues made by other
processes. Rules (SPEC §3): no session, logged out, failed or paused → fail at once ("session not
connected"); linked but disconnected → wait for the reconnect (and go as soon as it comes);
opted-out recipient → fail; not on WhatsApp → fail without retry; other errors → retry with
backoff up to max_attempts.

Account safety (``pacing``): a paused number (temporary ban), quiet hours and the pacing rules
(gap, budgets, warm-up, per-recipient cap) put a notification back to pending until the moment
it may go, with its attempt refunded; a ``critical`` notification type bypasses opt-outs (audited)
and quiet hours, never pacing. Repeated send errors pause the number like a ban.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from wanotify import backoff, metrics
from wanotify.clock import utcnow
from wanotify.db.audit import record
from wanotify.db.engine import SessionFactory
from wanotify.db.group_commit import Batch, GroupCommit
from wanotify.db.notify import QUEUE_CHANNEL, PgListener
from wanotify.errors import DomainError
from wanotify.logs import bind
from wanotify.messages import service as messages
from wanotify.notifications import queue
from wanotify.notifications.context import Context, read_contexts
from wanotify.notifications.models import Notification
from wanotify.notifications.queue import Claimed
from wanotify.pacing import rules as pacing_rules
from wanotify.pacing import service as pacing
from wanotify.sessions.manager import SessionManager
from wanotify.settings import Settings
from wanotify.templates import rendering
from wanotify.templates.models import WhatsAppTemplate
from wanotify.transports.base import Connection, NotConnected, RecipientNotOnWhatsApp, SendError

log = logging.getLogger(__name__)

NOT_CONNECTED = "session not connected"
OPTED_OUT = "recipient opted out"
NOT_ON_WHATSAPP = "recipient is not on WhatsApp"
#: ``last_error`` of a notification waiting for its linked session to reconnect
WAITING_FOR_SESSION = f"{NOT_CONNECTED}: waiting for the session to reconnect"


@dataclass(frozen=True)
class Outcome:
    """What happened to one notification; applied to the row in one transaction."""

    status: str  # completed | pending | failed
    error: str | None = None
    retry_in: float | None = None
    refund_attempt: bool = False
    provider_id: str | None = None  # the id the back end assigned, when not ours (Cloud API)


@dataclass(frozen=True)
class _Sending:
    """A message row to write before its send; the notification type when it is a critical
    one going to an opted-out recipient (audited)."""

    message: messages.Outgoing
    bypassed_opt_out_type: str | None


@dataclass(frozen=True)
class _Settling:
    """An outcome on its way to the database, with the time it was reached."""

    row: Claimed
    outcome: Outcome
    at: datetime


class Dispatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        factory: SessionFactory,
        sessions: SessionManager,
        listener: PgListener | None = None,
        commits: GroupCommit | None = None,
        own_backends: Collection[int] = (),
    ) -> None:
        self.settings = settings
        # PostgreSQL LISTEN wanotify_queue: enqueues by other processes wake this one at once.
        # Those this process made woke it already (every in-process path that makes a row
        # pending calls ``wake``): their NOTIFY, sent from one of ``own_backends``, would only
        # cost a second, empty claim. A path that forgot to wake waits for the poll.
        self.listener = listener
        self._own_backends = own_backends
        self._subscribed = False
        self.factory = factory
        # Group commit: the message rows written before sends share transactions when many are
        # ready at once (a send still waits for its row's commit), and so do the settles; and
        # each is a ``Batch``, so a group is a few multi-row statements, not a few per item.
        # Two flushers, so a send's row never waits behind a group of settles. ``commits``:
        # the settles' flusher, shared with the session manager's receipts (the same rows).
        self._before_send = GroupCommit(factory, name="dispatcher-messages")
        self._settles = commits or GroupCommit(factory, name="dispatcher-settles")
        self._settle_batch = Batch("settles", self._apply_settles)
        self._message_batch = Batch("message rows", self._record_messages)
        self.sessions = sessions
        self.instance_id = settings.instance_id
        self._wake = asyncio.Event()
        #: set while the loop sleeps with nothing to do and no wake-up pending (until the next
        #: due time or the poll); cleared by any wake-up
        self.idle = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        #: when the first pending row not claimed is due (read with the last short claim)
        self._next_due: datetime | None = None
        self._slots_full = False  # the loop waits for a send to finish
        self._stopping = False
        self._last_sweep = 0.0
        # pacing: one decision at a time per number, and sends decided but not yet recorded
        self._pacing_locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._reserved: dict[uuid.UUID, dict[uuid.UUID, pacing_rules.Sent]] = {}
        self._reserved_by: dict[uuid.UUID, uuid.UUID] = {}  # notification → session
        self._send_errors: dict[uuid.UUID, int] = {}
        # orgs whose number may send to nobody before a time (gap, budgets, pause): their rows
        # are not claimed until then, so a backlog is not claimed and put back at every send
        self._blocked: dict[uuid.UUID, datetime] = {}
        # orgs whose session (re)connected: their notifications waiting for it are due now
        self._reconnected: set[uuid.UUID] = set()

    # ---- control -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Something became due (an enqueue, a reconnect): look now instead of at the timeout."""
        self._wake.set()
        self.idle.clear()

    async def start(self) -> None:
        self._stopping = False
        self._loop = asyncio.create_task(self._run(), name="dispatcher")
        if self.listener is not None:
            if not self._subscribed:
                self.listener.subscribe(QUEUE_CHANNEL, self._notified, ignore_from=self._sent_here)
                self._subscribed = True
            await self.listener.start()

    def session_connected(self, org_id: uuid.UUID) -> None:
        """An org's session (re)connected or was resumed: what waits for it goes now, not at
        its next re-check (``disconnected_retry_seconds``)."""
        self._reconnected.add(org_id)
        self.wake()

    def _notified(self, _payload: str) -> None:
        self.wake()

    def _sent_here(self, pid: int) -> bool:
        return pid in self._own_backends

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop claiming; let sends in flight finish (their leases cover a hard kill)."""
        self._stopping = True
        self._wake.set()
        if self.listener is not None:
            await self.listener.stop()
        if self._loop:
            # Let the loop finish its current step: cancelling it inside a transaction would
            # leave SQLite's write lock held by an abandoned connection.
            done, _ = await asyncio.wait({self._loop}, timeout=grace)
            if not done:
                self._loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=grace)
        # Still sending after the grace: cancel and wait, so nothing touches the database after
        # the engine is disposed (their leases bring the rows back).
        late = list(self._inflight)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        await self._before_send.drain(grace=grace)
        await self._settles.drain(grace=grace)

    # ---- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._sweep_expired()
                await self._release_waiting()
                more = await self._claim()
            except Exception:
                log.exception("claim failed; retrying after the poll interval")
                self._next_due = None
                more = False
            if more and self._free_slots() > 0:
                continue
            await self._sleep()
            await self._linger()

    async def _linger(self) -> None:
        """Woken while sends are in flight: wait ``dispatch_claim_linger_seconds`` before
        claiming, so what is enqueued meanwhile (the next group of API requests) is claimed in
        the same transaction, and its sends and settles share theirs. An idle dispatcher
        claims at once, so a lone notification waits for nothing."""
        linger = self.settings.dispatch_claim_linger_seconds
        if linger > 0 and self._inflight and not self._stopping:
            await asyncio.sleep(linger)

    def _free_slots(self) -> int:
        return self.settings.dispatch_concurrency - len(self._inflight)

    async def _claim(self) -> bool:
        """Claim what is due, as many as there are free slots. True when the batch came back
        full (there may be more); else the next due time is known (``_next_due``), read in the
        same transaction, so the loop can sleep until then without asking again."""
        free = self._free_slots()
        if free <= 0:
            return False
        limit = min(free, self.settings.dispatch_batch_size)
        blocked = self._blocked_orgs()
        now = utcnow()
        async with self.factory() as db, db.begin():
            rows = await queue.claim(
                db,
                instance_id=self.instance_id,
                limit=limit,
                lease_seconds=self.settings.notification_lease_seconds,
                now=now,
                skip_orgs=blocked,
            )
            full = len(rows) == limit  # then it claims again at once: no need to know
            batch = await read_contexts(
                db, rows=rows, settings=self.settings, next_due=not full, skip_orgs=blocked
            )
        # A row due by the claim's own time that it left is another instance's (its number's
        # owner claims it): a wake-up, not a spin, brings the loop back for anything of ours.
        # One due after it is ours to wake for, even if that moment has passed by the time the
        # loop sleeps (a timer may fire a little early, and the claim take a while).
        due = batch.next_due
        self._next_due = due if due is not None and due > now else None
        for row in rows:
            task = asyncio.create_task(
                self._process(row, batch.contexts[row.id]), name=f"notification-{row.id}"
            )
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        return full

    def _blocked_orgs(self) -> list[uuid.UUID]:
        now = utcnow()
        for org_id, until in list(self._blocked.items()):
            if until <= now:
                del self._blocked[org_id]
        return list(self._blocked)

    def _block(self, org_id: uuid.UUID, until: datetime) -> None:
        self._blocked[org_id] = max(until, self._blocked.get(org_id, until))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._slots_full:  # the loop waits for a free slot: this is one
            self.wake()

    async def _sleep(self) -> None:
        if self._free_slots() <= 0:
            self._slots_full = True
            try:
                await self._wake.wait()  # a send finishing sets it
            finally:
                self._slots_full = False
            return
        timeout = self.settings.dispatch_poll_seconds
        if self._next_due is not None:  # ours, due after the last claim (``_claim``)
            timeout = max(0.0, min(timeout, (self._next_due - utcnow()).total_seconds()))
        if self._blocked_orgs():  # wake when the first block ends
            ends = min(self._blocked.values())
            timeout = max(0.0, min(timeout, (ends - utcnow()).total_seconds()))
        if timeout > 0 and not self._wake.is_set():
            self.idle.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self.idle.clear()

    async def _sweep_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self.settings.notification_lease_seconds / 4:
            return
        self._last_sweep = now
        async with self.factory() as db, db.begin():
            released = await queue.release_expired(db, now=utcnow())
        if released:
            log.warning("returned %d notifications with expired leases to pending", released)

    async def _release_waiting(self) -> None:
        if not self._reconnected:
            return
        org_ids, self._reconnected = self._reconnected, set()
        try:
            async with self.factory() as db, db.begin():
                await queue.release_waiting(
                    db, org_ids=org_ids, last_error=WAITING_FOR_SESSION, now=utcnow()
                )
        except BaseException:
            self._reconnected |= org_ids  # tried again on the next pass
            raise

    # ---- one notification --------------------------------------------------------------------

    async def _process(self, row: Claimed, context: Context) -> None:
        session_id = str(context.session.id) if context.session else None
        with bind(org_id=str(row.org_id), session_id=session_id, notification_id=str(row.id)):
            try:
                outcome = await self._send(row, context)
            except Exception as exc:
                log.exception("processing failed")
                outcome = self._retry_or_fail(row, f"internal error: {exc}")
            try:
                await self._settle(row, outcome)
            except Exception:
                log.exception("could not record the outcome; the lease will return it")
            finally:
                self._release(row.id)

    async def _send(self, row: Claimed, context: Context) -> Outcome:
        session, opted_out, template = context.session, context.opted_out, context.template
        existing = context.message if row.message_id else None
        policy, timezone = context.policy, context.timezone
        critical = row.notification_type in policy.critical_types
        if opted_out and not critical:
            return Outcome("failed", OPTED_OUT)
        if (
            session is None
            or not session.enabled
            or session.auth_state is None
            or session.status in ("logged_out", "failed")
        ):
            return Outcome("failed", NOT_CONNECTED)
        now = utcnow()
        if session.paused_until is not None and session.paused_until > now:
            reason = f"sending paused until {session.paused_until.isoformat()}"
            self._block(row.org_id, session.paused_until)
            return self._defer(session.paused_until, f"{reason}: {session.pause_reason}")
        quiet = None if critical else pacing_rules.quiet_until(policy, now=now, timezone=timezone)
        if quiet is not None:
            return self._defer(quiet, f"quiet hours ({timezone}) until {quiet.isoformat()}")
        connection = self.sessions.connection(session.id)
        if connection is None:
            return self._wait_for_session(row)
        try:
            body = existing.message_body if existing else self._render(row, template)
        except DomainError as exc:
            return Outcome("failed", exc.detail)
        decision = await self._pace(row, session.id, session.linked_at, policy)
        if decision.not_before is not None:
            if decision.blocked_until is not None:
                self._block(row.org_id, decision.blocked_until)
            return self._defer(decision.not_before, f"pacing: {decision.reason}")
        return await self._deliver(
            row,
            session.id,
            connection,
            body,
            template,
            policy=policy,
            bypassed_opt_out=opted_out,
            none_yet=context.message is None,
        )

    async def _pace(
        self,
        row: Claimed,
        session_id: uuid.UUID,
        linked_at: datetime | None,
        policy: pacing_rules.Policy,
    ) -> pacing_rules.Decision:
        """Ask the pacing rules, counting sends this process has decided but not yet
        recorded; a "send now" reserves its slot before the lock is let go."""
        if not policy.enforced:
            return pacing_rules.SEND_NOW
        lock = self._pacing_locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            now = utcnow()
            async with self.factory() as db:
                history = await pacing.recent_sends(db, session_id=session_id, now=now)
            reserved = self._reserved.setdefault(session_id, {})
            history.extend(reserved.values())
            decision = pacing_rules.decide(
                policy, now=now, to=row.recipient_phone, history=history, linked_at=linked_at
            )
            if decision.send_now:
                reserved[row.id] = pacing_rules.Sent(at=now, to=row.recipient_phone)
                self._reserved_by.setdefault(row.id, session_id)
            return decision

    def _release(self, notification_id: uuid.UUID) -> None:
        """The send's outcome is in the database now (``sent_at``): drop its reservation."""
        session_id = self._reserved_by.pop(notification_id, None)
        if session_id is not None:
            self._reserved.get(session_id, {}).pop(notification_id, None)

    @staticmethod
    def _defer(until: datetime, reason: str) -> Outcome:
        """Not yet: back to pending until ``until``, without using an attempt."""
        wait = max(0.0, (until - utcnow()).total_seconds())
        return Outcome("pending", reason, retry_in=wait, refund_attempt=True)

    def _render(self, row: Claimed, template: WhatsAppTemplate | None) -> str:
        if row.template_id is None and "text" in row.message_data:
            return str(row.message_data["text"])
        if template is None:  # deleting a template sets its notifications' template_id NULL
            raise DomainError("the template of this notification was deleted")
        if not template.is_active:
            raise DomainError(f"template {template.name} is inactive")
        return rendering.render(
            source=template.message_template,
            variables=row.message_data,
            declared=template.variables,
        )

    async def _deliver(
        self,
        row: Claimed,
        session_id: uuid.UUID,
        connection: Connection,
        body: str,
        template: WhatsAppTemplate | None = None,
        *,
        policy: pacing_rules.Policy,
        bypassed_opt_out: bool,
        none_yet: bool = False,
    ) -> Outcome:
        # committed before the send, as ever: a crash after it finds the row (same message id)
        sending = _Sending(
            messages.Outgoing(
                org_id=row.org_id,
                session_id=session_id,
                notification_id=row.id,
                recipient_phone=row.recipient_phone,
                body=body,
                template_id=row.template_id,
                sent_by=row.sent_by,
                none_yet=none_yet,
            ),
            row.notification_type if bypassed_opt_out else None,
        )
        message_id, wamid = await self._before_send.run_batched(self._message_batch, sending)
        row.message_id = message_id
        if bypassed_opt_out:
            log.warning("critical notification sent to an opted-out recipient")
        metrics.QUEUE_LATENCY_SECONDS.observe(
            max(0.0, (utcnow() - row.next_attempt_at).total_seconds())
        )
        if policy.typing_enabled:
            with contextlib.suppress(Exception):  # a person's pause; never a reason to fail
                seconds = pacing_rules.typing_seconds(body)
                await connection.show_typing(to=row.recipient_phone, seconds=seconds)
        started = time.perf_counter()
        try:
            sent_id = await self._send_one(row, connection, body, template, wamid)
        except RecipientNotOnWhatsApp:
            return Outcome("failed", NOT_ON_WHATSAPP)
        except SendError as exc:
            reason = str(exc) or type(exc).__name__
            if not exc.retryable:
                return Outcome("failed", reason)
            if not isinstance(exc, NotConnected):
                await self._count_send_error(row, session_id, reason)
            return self._retry_or_fail(row, reason)
        finally:
            metrics.SEND_SECONDS.observe(time.perf_counter() - started)
        self._send_errors.pop(session_id, None)
        return Outcome("completed", provider_id=sent_id if sent_id != wamid else None)

    @staticmethod
    async def _record_messages(
        db: AsyncSession, group: list[_Sending]
    ) -> list[tuple[uuid.UUID, str]]:
        """The message rows of a group about to be sent (one multi-row ``INSERT``), and the
        audit entry of each critical one sent to an opted-out recipient."""
        ids = await messages.record_outgoing_many(db, outgoing=[s.message for s in group])
        for sending in group:
            if sending.bypassed_opt_out_type is None:
                continue
            m = sending.message
            await record(
                db,
                org_id=m.org_id,
                session_id=m.session_id,
                action="optout.bypassed",
                details={
                    "notification_id": str(m.notification_id),
                    "notification_type": sending.bypassed_opt_out_type,
                    "phone": m.recipient_phone,
                },
            )
        return ids

    @staticmethod
    async def _send_one(
        row: Claimed,
        connection: Connection,
        body: str,
        template: WhatsAppTemplate | None,
        wamid: str,
    ) -> str:
        """Send as the provider's approved template when the back end has them (Cloud API) and
        the template is mapped to one; else as text. Returns the id the back end assigned."""
        send_template = getattr(connection, "send_template", None)
        if template is not None and template.provider_template_name and send_template:
            parameters = [
                str(row.message_data.get(v["name"], "")) for v in template.variables or []
            ]
            return str(
                await send_template(
                    to=row.recipient_phone,
                    name=template.provider_template_name,
                    language=template.language,
                    parameters=parameters,
                    message_id=wamid,
                )
            )
        return await connection.send_text(to=row.recipient_phone, text=body, message_id=wamid)

    async def _count_send_error(self, row: Claimed, session_id: uuid.UUID, reason: str) -> None:
        """N send errors in a row look like WhatsApp throttling the number: pause it, as a
        temporary ban would, rather than keep pushing."""
        count = self._send_errors.get(session_id, 0) + 1
        self._send_errors[session_id] = count
        limit = self.settings.ban_detect_failures
        if limit <= 0 or count < limit:
            return
        self._send_errors.pop(session_id, None)
        until = utcnow() + timedelta(seconds=self.settings.ban_pause_seconds)
        await self.sessions.pause(
            org_id=row.org_id,
            session_id=session_id,
            until=until,
            reason=f"{count} send errors in a row (last: {reason})",
        )

    def _wait_for_session(self, row: Claimed) -> Outcome:
        """Linked but not connected right now: wait for the reconnect without using an attempt,
        up to a limit, then fail."""
        waited = (utcnow() - row.created_at).total_seconds()
        if waited > self.settings.disconnected_max_wait_seconds:
            return Outcome("failed", f"{NOT_CONNECTED} (waited {int(waited)}s for a reconnect)")
        return Outcome(
            "pending",
            WAITING_FOR_SESSION,
            retry_in=self.settings.disconnected_retry_seconds,
            refund_attempt=True,
        )

    def _retry_or_fail(self, row: Claimed, reason: str) -> Outcome:
        if row.attempts >= row.max_attempts:
            return Outcome("failed", f"{reason} (after {row.attempts} attempts)")
        wait = backoff.delay(
            row.attempts,
            base=self.settings.retry_base_seconds,
            cap=self.settings.retry_max_seconds,
        )
        return Outcome("pending", reason, retry_in=wait)

    async def _settle(self, row: Claimed, outcome: Outcome) -> None:
        # settled with the other outcomes ready meanwhile: a few multi-row statements a group
        # (a failed group is rolled back and each settle runs again alone, held by its lease)
        settling = _Settling(row, outcome, utcnow())
        applied = await self._settles.run_batched(self._settle_batch, settling)
        if applied is None:
            log.warning("lease lost before settling; another worker has this notification")
            return
        outcome = applied
        if outcome.status == "pending":  # due again later: the loop's next wake-up may move
            self.wake()
        metrics.PROCESSED.labels(outcome.status).inc()
        if outcome.status == "failed":
            log.warning("notification failed: %s", outcome.error)
        elif outcome.status == "pending":
            log.info("notification will be retried: %s", outcome.error)

    async def _apply_settles(
        self, db: AsyncSession, group: list[_Settling]
    ) -> list[Outcome | None]:
        """The outcomes as applied (None: the lease was lost). Sends that went out, the bulk,
        take two statements for the whole group, the queue rows and the messages' ``sent``
        (and their status events when an org's webhook listens); retries and failures one by
        one."""
        sent = {
            s.row.id: (s, s.row.message_id)
            for s in group
            if s.outcome.status == "completed" and s.row.message_id is not None
        }
        held = await queue.complete_many(
            db,
            instance_id=self.instance_id,
            done={nid: (s.at, message_id) for nid, (s, message_id) in sent.items()},
        )
        await messages.mark_sent_many(
            db,
            sent={
                message_id: messages.Sent(s.at, s.outcome.provider_id)
                for nid, (s, message_id) in sent.items()
                if nid in held
            },
        )
        # Not completed: the lease was lost, or the provider reported the send failed already
        # (a Cloud API webhook that overtook this bookkeeping): the notification fails with it.
        late = await messages.failures_of(
            db, message_ids=[message_id for nid, (_, message_id) in sent.items() if nid not in held]
        )
        applied: list[Outcome | None] = []
        for settling in group:
            row_id, outcome = settling.row.id, settling.outcome
            if row_id in held:
                applied.append(outcome)
                continue
            if row_id in sent:
                error = late.get(sent[row_id][1])
                if error is None:
                    applied.append(None)
                    continue
                outcome = Outcome("failed", error)
            applied.append(await self._settle_one(db, settling, outcome))
        return applied

    async def _settle_one(
        self, db: AsyncSession, settling: _Settling, outcome: Outcome
    ) -> Outcome | None:
        """A retry, a deferral or a failure (a send that went out is settled with its group in
        ``_apply_settles``): the queue row, the message, the audit entry."""
        row, now = settling.row, settling.at
        values: dict[str, object] = {"last_error": outcome.error}
        if row.message_id:
            values["message_id"] = row.message_id
        if outcome.status == "pending":
            values["next_attempt_at"] = now + timedelta(seconds=outcome.retry_in or 0)
            if outcome.refund_attempt:
                values["attempts"] = Notification.attempts - 1
        held = await queue.settle(
            db,
            notification_id=row.id,
            instance_id=self.instance_id,
            now=now,
            status=outcome.status,
            **values,
        )
        if not held:
            return None
        if row.message_id and outcome.status == "failed":
            await messages.mark_failed(
                db, message_id=row.message_id, error=outcome.error or "failed", at=now
            )
        if outcome.status == "failed":
            await record(
                db,
                org_id=row.org_id,
                action="notification.failed",
                details={"notification_id": str(row.id), "error": outcome.error},
            )
        return outcome
