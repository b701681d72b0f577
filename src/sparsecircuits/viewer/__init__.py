"""The local viewer: `ViewerApp` (what to serve) and `ViewerServer` (stdlib HTTP, offline assets)."""

from __future__ import annotations

from sparsecircuits.viewer.server import STATIC_DIR, ViewerApp, ViewerServer

__all__ = ["STATIC_DIR", "ViewerApp", "ViewerServer"]
