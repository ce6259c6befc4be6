"""WhatsApp Web multi-device through whatsmeow (the ``neonize`` wheel), in a supervised child.

The Go runtime inside neonize runs in ``child`` (a separate Python process); the service talks to
it through ``supervisor`` over JSON lines on the child's stdin/stdout, so a crash in the library
restarts that child and its sessions, never the API or the queue. ``adapter`` maps neonize's
event objects onto ``transports.base`` events; ``transport`` is the ``Transport`` the service uses.
neonize is imported only inside the child and the adapter's functions, so this package imports
without the ``wanotify[whatsmeow]`` extra.
"""

from __future__ import annotations

from wanotify.transports.whatsmeow.transport import WhatsmeowTransport, neonize_installed

__all__ = ["WhatsmeowTransport", "neonize_installed"]
