# SPDX-License-Identifier: MIT
"""What CurvdOptimizer's state_dict is, and how a session taken over by
another optimizer is recognised.

Taking a live session over (CurvdOptimizer(session=id), or loading a
state_dict of the older pointer form) moves its state into a new session
labelled TAKEN_FROM=<old id> and deletes the old one. The daemon then
answers 404 to whoever still steps the old id, and the label tells that
404 apart from a session deleted or expired: the optimizer left behind
raises SessionTakenOver naming its successor instead of stepping beside it.
"""

from contextlib import contextmanager

from ..client import Client
from ..errors import NotFound

STATE_FORMAT = "curvd.torch.CurvdOptimizer/2"
TAKEN_FROM = "curvd.torch.taken_from"


class SessionTakenOver(RuntimeError):
    """This optimizer's session moved to another optimizer (session id
    in .successor)."""

    def __init__(self, old: str, successor: str):
        self.session = old
        self.successor = successor
        super().__init__(
            f"session {old} was taken over by another CurvdOptimizer (session=, or "
            f"load_state_dict of a state naming only the session id): its state moved to "
            f"session {successor} and this optimizer can no longer step; step the optimizer "
            "that took it over, or load a state_dict() snapshot to train a copy")


@contextmanager
def taken_over_check(client: Client, session_id: str):
    """A 404 on @session_id inside becomes SessionTakenOver when a session
    of the daemon carries the label naming it (else it stays NotFound)."""
    try:
        yield
    except NotFound:
        for s in client.list_sessions(label=f"{TAKEN_FROM}={session_id}"):
            raise SessionTakenOver(session_id, s.id) from None
        raise
