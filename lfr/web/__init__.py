"""Browser viewer for supervisors: live video over WebRTC, alerts and decisions (``--web``)."""

from lfr.web.server import TooManyViewers, WebService, WebStats, ice_host_addresses
from lfr.web.tracks import ViewerStats, ViewerTrack

__all__ = [
    "TooManyViewers",
    "ViewerStats",
    "ViewerTrack",
    "WebService",
    "WebStats",
    "ice_host_addresses",
]
