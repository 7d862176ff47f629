"""Joining a Ray cluster: `serve --ray` and `check --ray` share the address check and the
import, so that both refuse a bad address or a missing Ray in one line, at once."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from onnxtwin.runtime.errors import OnnxtwinError, first_line

CONNECT_TIMEOUT_S = 5.0
"""How long the head's port may take to accept a connection before `--ray` gives up."""


def import_ray(option: str = "--ray") -> Any:
    """The ray module, or one line saying how to install it (for `option`)."""
    try:
        import ray
    except ImportError as e:
        raise OnnxtwinError(f"{option}: expected ray installed (pip install 'onnxtwin[ray]'), "
                            f"got {first_line(e)}") from None
    return ray


def check_address(address: str) -> None:
    """One line, at once, for an address no head listens at: ray.init would retry for
    minutes and then end the process. Ray Client (ray://) is
    refused too: it cannot stream a task's results or ship a working directory the way a
    driver on the cluster does."""
    if address == "auto":  # the cluster started on this machine, found by ray.init
        return
    host, colon, port = address.rpartition(":")
    if not colon or not host or "://" in host or not port.isdigit() or \
            not 0 < int(port) < 65536:
        raise OnnxtwinError(f"--ray: expected HOST:PORT of a Ray head (or auto), got "
                            f"{address!r}" + (" (Ray Client is not supported)"
                                              if "://" in host else ""))
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise OnnxtwinError(f"--ray: expected a Ray cluster listening at {address}, got "
                            f"{e.strerror or type(e).__name__}") from None


@contextmanager
def joining(address: str) -> Iterator[None]:
    """Around ray.init at `address`: its failures (no cluster there, a version mismatch)
    as one line."""
    try:
        yield
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise OnnxtwinError(f"--ray: expected a Ray cluster at {address}, got "
                            f"{first_line(e)}") from None
