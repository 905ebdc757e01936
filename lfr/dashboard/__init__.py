"""The operator's terminal dashboard (``lfr run CONFIG --dashboard``): cameras, pipeline, alerts
with half-block thumbnails, deployment counters, and adjudication by keys."""

from lfr.dashboard.render import CameraFlow, DashboardView, LogLine, render
from lfr.dashboard.service import DashboardService, flows

__all__ = ["CameraFlow", "DashboardService", "DashboardView", "LogLine", "flows", "render"]
