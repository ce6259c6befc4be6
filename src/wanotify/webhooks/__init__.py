"""Outbound webhooks to the host app: a transactional outbox and a signed, retried sender."""
