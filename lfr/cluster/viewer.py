"""Live video of a deployment spread over nodes: the node that runs a camera answers a browser's
WebRTC offer, carried by the console over NATS request/reply (``lfrctl.<name>.viewer.<node>``);
the media then goes straight from the node to the browser (ICE between the two), never through
the console or the NATS server.

The node side is the single-node viewer's (lfr.web.server.WebService) without its HTTP server:
the same latest-frame slots, blurring of faces that did not match, viewer cap and peer
connections, with the node's ``[web]`` settings (``ice_addresses``, ``stun_servers``,
``max_viewers_per_camera``). Who watches was authenticated by the console; the bus's
permissions say only consoles may ask.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec

from lfr.users import Principal, Role

if TYPE_CHECKING:
    from nats.aio.client import Client

    from lfr.cluster.bus import Names
    from lfr.config import Config
    from lfr.deployment import DeploymentView

log = logging.getLogger("lfr.cluster.viewer")


class ViewerRequest(msgspec.Struct, frozen=True):
    """What a console sends the node: a browser's offer for one of its cameras, or the end of
    a viewer."""

    op: Literal["offer", "close"]
    by: str  # the person, as the console authenticated them
    role: Role
    camera: str = ""
    sdp: str = ""
    type: str = "offer"
    viewer: str = ""


class NodeViewers:
    """A node's cameras for browsers: ``feed`` beside each of its deployments, ``answer`` on
    its viewer subject."""

    def __init__(self, config: Config) -> None:
        from lfr.web.server import WebService

        # The node serves no HTTP: its [web] settings without an address of their own.
        settings = msgspec.structs.replace(config.effective_web(), listen="127.0.0.1:0",
                                           tls_cert=None, tls_key=None, demo_token=False,
                                           token=None)
        self.web = WebService(settings)

    async def feed(self, deployment: DeploymentView) -> None:
        """A deployment service: its frames to the viewers; at its end (the node's cameras
        change) its viewers are closed, and their browsers ask again."""
        try:
            await self.web.feed(deployment)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for viewer in list(self.web._peers):
                    await self.web.close_viewer(viewer)

    async def close_camera(self, camera: str) -> None:
        """A camera this node stopped (it moved to another node): its viewers are closed, so
        their browsers ask again of the node that runs it now, and its last frame is let go."""
        feed = self.web._feeds.pop(camera, None)
        for viewer in list(feed.viewers) if feed is not None else []:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.web.close_viewer(viewer)

    async def answer(self, msg: Any) -> None:
        """A console's request: ``{"status", ...}`` with the answer ``{sdp, type, viewer}``
        (status 200), ``{"closed"}``, or ``{"error"}`` and an HTTP-like status."""
        try:
            request = msgspec.json.decode(msg.data, type=ViewerRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reply: dict[str, Any] = {"status": 400, "error": f"not a viewer request: {exc}"}
        else:
            if request.op == "close":
                reply = {"status": 200, "closed": await self.web.close_viewer(request.viewer)}
            elif self.web.deployment is None:
                reply = {"status": 503, "error": "this node runs no camera right now"}
            else:
                status, body = await self.web.answer_offer(
                    Principal(request.by, request.role),
                    {"sdp": request.sdp, "type": request.type, "camera": request.camera})
                reply = {"status": status, **body}
        await msg.respond(msgspec.json.encode(reply))


async def request_viewer(nc: Client, names: Names, node: str, request: dict[str, Any],
                         timeout_s: float = 15.0) -> dict[str, Any]:
    """Carry ``request`` (a ViewerRequest's fields) to ``node``; its reply. NodeAway when the
    node does not answer."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    from lfr.cluster.console import NodeAway

    try:
        reply = await nc.request(names.viewer(node), msgspec.json.encode(request),
                                 timeout=timeout_s)
    except (NoRespondersError, NatsTimeout):
        raise NodeAway(f"node {node} does not answer: its cameras cannot be watched now") from None
    answer: dict[str, Any] = msgspec.json.decode(reply.data)
    return answer
