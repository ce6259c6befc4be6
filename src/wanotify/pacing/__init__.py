"""Account safety: per-number pacing, warm-up, budgets, quiet hours (between messages and
sessions in the import order)."""
