"""WhatsApp back ends behind one interface (``base``), and the choice among them by settings.

The rest of wanotify asks ``build_transport`` for a transport and talks to it only through
``wanotify.transports.base``, so swapping the simulator for a real back end changes no caller.
"""

from __future__ import annotations

from wanotify.settings import Settings
from wanotify.transports.base import Transport
from wanotify.transports.cloud import CloudTransport
from wanotify.transports.simulator import SimulatorNetwork, SimulatorTransport
from wanotify.transports.simulator_remote import RemoteSimulatorTransport

__all__ = ["build_transport", "network_from_settings"]


def network_from_settings(settings: Settings) -> SimulatorNetwork:
    """The simulated network the settings describe, kept in ``<data_dir>/simulator.json``.

    Persisted so a restarted ``wanotify serve`` still knows its linked devices (no new QR).
    """
    return SimulatorNetwork(
        qr_rotate_seconds=settings.sim_qr_rotate_seconds,
        qr_timeout_seconds=settings.sim_qr_timeout_seconds,
        delivery_delay_seconds=settings.sim_delivery_delay_seconds,
        send_latency_seconds=settings.sim_send_latency_seconds,
        not_on_whatsapp=settings.sim_not_on_whatsapp,
        state_path=settings.data_dir / "simulator.json",
    )


def build_transport(settings: Settings, *, network: SimulatorNetwork | None = None) -> Transport:
    """The transport ``settings.transport`` names.

    ``network`` lets the caller share one simulated network with the ``/sim`` dev API.
    ``WANOTIFY_SIM_NETWORK_URL`` (a worker): the network ``wanotify serve`` hosts at that URL.
    """
    if settings.transport == "simulator" and settings.sim_network_url and network is None:
        return RemoteSimulatorTransport(settings.sim_network_url, client_name=settings.instance_id)
    if settings.transport == "simulator":
        return SimulatorTransport(
            network if network is not None else network_from_settings(settings)
        )
    if settings.transport == "cloud":
        return CloudTransport(
            graph_url=settings.cloud_graph_url,
            api_version=settings.cloud_api_version,
            timeout_seconds=settings.cloud_timeout_seconds,
        )
    if settings.transport == "whatsmeow":
        from wanotify.transports.whatsmeow import WhatsmeowTransport, neonize_installed

        if not neonize_installed():
            raise ValueError(
                "transport 'whatsmeow' needs the optional extra: pip install 'wanotify[whatsmeow]'"
            )
        return WhatsmeowTransport(settings)
    raise ValueError(f"unknown transport {settings.transport!r}: simulator, cloud or whatsmeow")
