"""Linking and keeping each org's WhatsApp session alive: the session manager, its state in
the database, and the live status stream (SSE)."""
