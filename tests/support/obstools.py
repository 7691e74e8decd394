"""Tools of the observability tests (loaded with DAGO_TOOL_MODULES=testtools,obstools)."""

from __future__ import annotations

import os
from typing import Any

from dago.nodes.base import NodeContext, Tool


async def _die(args: Any, ctx: NodeContext) -> Any:
    """Kills its worker process outright while the marker file exists (a poison message);
    once the marker is gone it returns normally."""
    if os.path.exists(str(args["marker"])):  # noqa: ASYNC240 - a test tool, one stat
        os._exit(17)
    return {"survived": True, "attempt": ctx.attempt}


def dago_tools() -> list[Tool]:
    """The tools this module provides."""
    return [Tool("die", "Kills its worker while the marker file exists.", _die)]
