"""What the warning engine takes as its state from outside its stream.

A previous run's active warnings (`restore`, at start), the departments' actions (acknowledge,
assign, close, raise by hand: `apply_department_action`) and, on a standby, the versions the
active replica published (`follow`): a replica that restarted begins its memory at its
consumers' ack floors, so without them it would conclude less, or the same queue or episode
under another id, than the replica it may take over from.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from services.warning.rules.ruleset import RuleSet
from services.warning.workflow import roles
from services.warning.workflow.actions import apply_action, raised_warning
from shared.errors import Forbidden, NotFound
from shared.events import Warning, WarningAction, WarningKind, WarningStatus
from shared.roadnet import RoadNetwork

MAX_ENDED = 5000
"""Ended warnings the engine keeps (the API's ``ended`` list)."""

FOLLOWED = Counter("tti_warning_followed_total",
                   "Warning versions a standby took from the active replica (newer than its own)",
                   ["kind"])


class Adoption:
    """The engine's state as others change it (a mixin of `WarningEngine`, whose state it is)."""

    warnings: dict[str, Warning]
    ended: OrderedDict[str, Warning]
    silenced: dict[str, Warning]
    queues: dict[str, set[str]]
    rules: RuleSet
    network: RoadNetwork | None
    _followed: OrderedDict[str, None]

    if TYPE_CHECKING:
        def _count_active(self) -> None: ...

        async def _put_warning(self, w: Warning, *, analyse: bool,
                               event_suffix: str = "") -> None: ...

        async def _emit(self, w: Warning, event_suffix: str = "") -> None: ...

        def find_warning(self, warning_id: str) -> Warning | None: ...

    def restore(self, warnings: list[Warning]) -> None:
        """Resume the active warnings a previous run persisted (before the first event)."""
        for w in warnings:
            if not w.active:
                continue
            self.warnings[w.warning_id] = w
            if _is_queue(w):
                self.queues[w.warning_id] = set(w.segment_ids)
            self.rules.resume(w)  # vehicle alarms: their rule goes on with the episode
        self._count_active()

    def follow(self, w: Warning) -> bool:
        """Take a version the active replica published (the workflow store) where it is newer
        than this replica's own: a standby that restarted, or missed what made a warning,
        holds what the active one holds, and goes on from there. Returns whether it changed
        anything. What this replica concluded that the active one did not stays (it is sent
        if this replica takes over), except an episode or a queue of its own that the
        active replica's warning stands for under another id, which gives way.
        """
        wid = w.warning_id
        held = self.warnings.get(wid) or self.silenced.get(wid) or self.ended.get(wid)
        if held is not None and held.version >= w.version:
            return False
        FOLLOWED.labels(w.kind.value).inc()
        replaced = self.rules.follow(w)
        if replaced is not None and replaced != wid:
            self.warnings.pop(replaced, None)
        queue = _is_queue(w)
        if w.active:
            self.ended.pop(wid, None)
            self.silenced.pop(wid, None)
            self.warnings[wid] = w
            if queue:
                segs = set(w.segment_ids)
                for own, own_segs in list(self.queues.items()):
                    if own != wid and own_segs & segs and own in self.warnings \
                            and own not in self._followed:
                        self.warnings.pop(own)  # ours, where theirs is: theirs goes on
                        self.queues.pop(own)
                self.queues[wid] = segs
        else:
            self.warnings.pop(wid, None)
            if queue and w.status in (WarningStatus.CLOSED, WarningStatus.CANCELLED):
                self.silenced[wid] = w  # closed by hand while the queue goes on
                self.queues[wid] = set(w.segment_ids)
            else:
                self.silenced.pop(wid, None)
                self.queues.pop(wid, None)
            self.ended[wid] = w
            while len(self.ended) > MAX_ENDED:
                self.ended.popitem(last=False)
        self._followed[wid] = None
        while len(self._followed) > MAX_ENDED + 10_000:
            self._followed.popitem(last=False)
        self._count_active()
        return True

    async def apply_department_action(self, a: WarningAction) -> Warning:
        """Apply one department action to the warning state and publish the result."""
        if a.action == "raise":
            w = raised_warning(a, self.network)
            held = self.find_warning(w.warning_id)
            if held is not None:
                return held  # the same action again (redelivered): already raised
            if not roles.may_raise(a.role, w.kind):
                raise Forbidden(f"role {a.role} may not raise {w.kind.value} warnings")
            await self._put_warning(w, analyse=bool(w.segment_ids))
            return w
        held = self.find_warning(a.warning_id) or self.silenced.get(a.warning_id)
        if held is None:
            raise NotFound(f"no warning {a.warning_id!r}")
        if not roles.sees(a.role, held.kind):
            raise Forbidden(f"role {a.role} does not act on {held.kind.value} warnings")
        done: list[dict[str, Any]] = list(held.details.get("actions", []))  # type: ignore
        if any(n.get("action_id") == a.action_id for n in done):
            return held  # redelivered
        w = apply_action(held, a)
        w = replace(w, details={**w.details, "actions": [
            *done, {"action_id": a.action_id, "action": a.action, "user": a.user,
                    "at": a.at.isoformat()}][-50:]})
        congestion_queue = w.kind == WarningKind.CONGESTION and w.warning_id in self.queues
        if not w.active and congestion_queue:
            self.silenced[w.warning_id] = w
            self.warnings.pop(w.warning_id, None)
            self.ended[w.warning_id] = w
            await self._emit(w)
            self._count_active()
            return w
        self.silenced.pop(w.warning_id, None)
        if w.warning_id in self.ended and w.active:
            del self.ended[w.warning_id]
        self.rules.adopt(w)
        await self._put_warning(w, analyse=False)
        return w

    def closed_segments(self) -> set[str]:
        """Segments closed by active closure warnings (routing avoids them)."""
        return {s for w in self.warnings.values() if w.kind == WarningKind.CLOSURE
                for s in w.segment_ids}


def _is_queue(w: Warning) -> bool:
    """A queue's warning (congestion, or the suspected incident a bottleneck queue is)."""
    return bool(w.segment_ids) and (w.kind == WarningKind.CONGESTION
                                    or w.warning_id.startswith("cong-"))
