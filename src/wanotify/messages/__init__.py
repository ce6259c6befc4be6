"""Message history, receipts (sent → delivered → read) and incoming replies (opt-outs)."""
