"""The WeChat followers' subscriptions and last shared locations, in the deployment's database.

Through ``shared/db`` (SQLite embedded, PostgreSQL distributed), so they survive a restart and
every publisher replica sees the same. Component ``publisher-wechat``:

- ``wechat_subscriptions``: (openid, kind, ref) — kind ``route`` (ref: GTFS ``route_id``),
  ``stop`` (``stop_id``) or ``road`` (the road's name); ``label`` as the follower saw it; a stop
  keeps its WGS-84 point, so the stops near a warning are found by one box query.
- ``wechat_locations``: the follower's last location (WGS-84; WeChat sends GCJ-02, converted at
  the callback), for "停车" and nearby answers.

An ``openid`` is the follower's id for this account only; it is not a name or a phone number.
A follower who unfollows is forgotten (:meth:`WechatStore.forget`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.db import Database
from shared.errors import BadRequest

MIGRATIONS = [
    """
    CREATE TABLE wechat_subscriptions (openid TEXT NOT NULL, kind TEXT NOT NULL,
        ref TEXT NOT NULL, label TEXT NOT NULL, lon DOUBLE PRECISION,
        lat DOUBLE PRECISION, created_at {TS} NOT NULL, PRIMARY KEY (openid, kind, ref));
    CREATE INDEX wechat_subscriptions_ref ON wechat_subscriptions (kind, ref);
    CREATE INDEX wechat_subscriptions_stop ON wechat_subscriptions (kind, lat, lon);
    CREATE TABLE wechat_locations (openid TEXT PRIMARY KEY, lon DOUBLE PRECISION NOT NULL,
        lat DOUBLE PRECISION NOT NULL, label TEXT NOT NULL, at {TS} NOT NULL)
    """,
]

KINDS = ("route", "stop", "road")
MAX_PER_FOLLOWER = 10
_CHUNK = 200  # parameters per IN list


LOOKUP_BATCH = 500
"""Followers' locations read with one query at most (SQLite allows 32,766 parameters)."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a follower follows."""

    openid: str
    kind: str
    ref: str
    label: str
    created_at: datetime
    lon: float | None = None
    lat: float | None = None


@dataclass(frozen=True, slots=True)
class Location:
    """A follower's last shared location (WGS-84)."""

    lon: float
    lat: float
    label: str
    at: datetime


def _subscription(row: dict[str, object]) -> Subscription:
    return Subscription(str(row["openid"]), str(row["kind"]), str(row["ref"]),
                        str(row["label"]), row["created_at"],  # type: ignore[arg-type]
                        row.get("lon"), row.get("lat"))  # type: ignore[arg-type]


_COLUMNS = "openid, kind, ref, label, created_at, lon, lat"


class WechatStore:
    """Subscriptions and locations of the account's followers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Open the database and apply this component's migrations."""
        await self.db.open()
        await self.db.migrate("publisher-wechat", MIGRATIONS)

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()

    # --- subscriptions ---

    async def subscribe(self, sub: Subscription) -> bool:
        """Save a subscription; False when the follower already had it.

        :class:`BadRequest` (``too_many``) past :data:`MAX_PER_FOLLOWER` subscriptions.
        """
        if sub.kind not in KINDS:
            raise BadRequest(f"kind must be one of {', '.join(KINDS)}")
        async with self.db.transaction() as tx:
            held = await tx.fetch_value("SELECT COUNT(*) FROM wechat_subscriptions "
                                        "WHERE openid = $1", sub.openid)
            exists = await tx.fetch_value(
                "SELECT COUNT(*) FROM wechat_subscriptions WHERE openid = $1 AND kind = $2 "
                "AND ref = $3", sub.openid, sub.kind, sub.ref)
            if exists:
                return False
            if held >= MAX_PER_FOLLOWER:
                raise BadRequest(f"at most {MAX_PER_FOLLOWER} subscriptions per follower",
                                 code="too_many")
            await tx.execute(
                f"INSERT INTO wechat_subscriptions ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, "
                "$6, $7) ON CONFLICT (openid, kind, ref) DO NOTHING", sub.openid, sub.kind,
                sub.ref, sub.label, sub.created_at, sub.lon, sub.lat)
        return True

    async def list_subscriptions(self, openid: str) -> list[Subscription]:
        """A follower's subscriptions, oldest first (the numbers a follower cancels by)."""
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM wechat_subscriptions WHERE "
                                   "openid = $1 ORDER BY created_at, kind, ref", openid)
        return [_subscription(r) for r in rows]

    async def unsubscribe(self, openid: str, kind: str, ref: str) -> bool:
        """Cancel one subscription; False when there was none."""
        return bool(await self.db.execute(
            "DELETE FROM wechat_subscriptions WHERE openid = $1 AND kind = $2 AND ref = $3",
            openid, kind, ref))

    async def unsubscribe_all(self, openid: str) -> int:
        """Cancel every subscription of a follower; how many there were."""
        return await self.db.execute("DELETE FROM wechat_subscriptions WHERE openid = $1",
                                     openid)

    async def find_subscribers(self, *, routes: Iterable[str] = (), roads: Iterable[str] = (),
                               stops_in: Sequence[float] | None = None) -> list[Subscription]:
        """Subscriptions to any of these routes or roads, or to a stop inside the box
        ``stops_in`` (min lon, min lat, max lon, max lat)."""
        found: list[Subscription] = []
        for kind, refs in (("route", sorted(set(routes))), ("road", sorted(set(roads)))):
            for i in range(0, len(refs), _CHUNK):
                chunk = refs[i:i + _CHUNK]
                marks = ", ".join(f"${n + 2}" for n in range(len(chunk)))
                rows = await self.db.fetch(
                    f"SELECT {_COLUMNS} FROM wechat_subscriptions WHERE kind = $1 AND ref IN "
                    f"({marks})", kind, *chunk)
                found.extend(_subscription(r) for r in rows)
        if stops_in is not None:
            rows = await self.db.fetch(
                f"SELECT {_COLUMNS} FROM wechat_subscriptions WHERE kind = 'stop' AND "
                "lat BETWEEN $2 AND $4 AND lon BETWEEN $1 AND $3", *stops_in[:4])
            found.extend(_subscription(r) for r in rows)
        return found

    # --- locations ---

    async def save_location(self, openid: str, lon: float, lat: float, label: str,
                            at: datetime) -> None:
        """Remember a follower's last location (WGS-84)."""
        await self.db.execute(
            "INSERT INTO wechat_locations (openid, lon, lat, label, at) VALUES ($1, $2, $3, "
            "$4, $5) ON CONFLICT (openid) DO UPDATE SET lon = excluded.lon, "
            "lat = excluded.lat, label = excluded.label, at = excluded.at",
            openid, lon, lat, label[:200], at)

    async def find_location(self, openid: str) -> Location | None:
        """The follower's last location, or None."""
        return (await self.find_locations([openid])).get(openid)

    async def find_locations(self, openids: Sequence[str]) -> dict[str, Location]:
        """The last locations of those of ``openids`` who shared one (one query per
        :data:`LOOKUP_BATCH`)."""
        found: dict[str, Location] = {}
        for i in range(0, len(openids), LOOKUP_BATCH):
            chunk = openids[i:i + LOOKUP_BATCH]
            marks = ", ".join(f"${k}" for k in range(1, len(chunk) + 1))
            for row in await self.db.fetch("SELECT openid, lon, lat, label, at FROM "
                                           f"wechat_locations WHERE openid IN ({marks})",
                                           *chunk):
                found[str(row["openid"])] = Location(float(row["lon"]), float(row["lat"]),
                                                     str(row["label"]), row["at"])
        return found

    async def forget(self, openid: str) -> None:
        """A follower unfollowed: drop their subscriptions and location."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM wechat_subscriptions WHERE openid = $1", openid)
            await tx.execute("DELETE FROM wechat_locations WHERE openid = $1", openid)
