"""The durable queue: enqueueing (the send endpoints too, since sending is enqueuing),
claiming in batches, and the dispatcher that renders, sends and records."""
