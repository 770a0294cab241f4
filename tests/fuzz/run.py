"""Fuzz the collector's inputs: mutated JT/T 808 frames and mutated HTTP sensor bodies.

    python -m tests.fuzz.run --frames 1000000 --bodies 100000 --seed 1     # make fuzz

Three runs, each with its invariants checked (a failure raises ``FuzzFailure`` naming the seed
and the input, so it can be replayed):

* **decoders**: every input through ``FrameSplitter``, ``decode_frame`` (with and without the
  check code), ``decode_header`` and ``decode_body``. Only ``Jt808Error`` with a known ``kind``
  may come out.
* **gateway**: every input over a real TCP connection to a real ``Jt808Gateway`` (memory bus,
  SQLite terminal store), on an authenticated session of the fuzz terminal. Each input is
  followed by a heartbeat probe (after an extra 0x7E, which ends any frame the input left open),
  so the replies of each input are known: the probe must be answered (or the input must have
  closed the connection, counted), no ``internal`` error, and the rejection counters
  (``tti_jt808_errors_total`` + ``tti_jt808_positions_total`` other than ``published``) must grow
  by at least the number of frames that were not accepted. At the end no connection is left.
* **bodies**: mutated JSON bodies POSTed to the detector and feature-state routes of the real
  collector app over HTTP (a tenth before bigdata's feature catalogue arrives over the bus, the
  rest after; a third to sensor ids never seen before): every answer is JSON with a 2xx or 4xx
  status (or the documented 503 while the catalogue loads), the server keeps serving, and the
  rejection counters grow by at least the number of refusals.

Memory is traced (``tracemalloc``): the peak of each run must stay under its bound, and the bodies
run may keep no more than ``RETAINED_PER_INPUT_BYTES`` per body once warmed up — so a leak shows
at test-suite size, not only at ``make fuzz``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from shared.jt808 import (
    ERROR_KINDS,
    FrameError,
    FrameSplitter,
    Heartbeat,
    Jt808Error,
    MsgId,
    PlatformGeneralResponse,
    RegisterResponse,
    ServerTimeReply,
    decode_body,
    decode_frame,
    decode_header,
    unescape,
)
from tests.fuzz.mutate import Mutator, fuzz_phone, load_vector_frames, phone_bcd, seed_corpus

DECODER_PEAK_BYTES = 16 * 2**20
GATEWAY_PEAK_BYTES = 64 * 2**20
BODIES_PEAK_BYTES = 32 * 2**20
"""tracemalloc peaks allowed (Python allocations while a run goes on); they do not grow with the
number of inputs: nothing of an input outlives it except counters. Measured with seed 1 at
``make fuzz`` size: decoders 0.6 MiB, gateway 1.5 MiB, bodies 5 MiB (a 1.1 MB body in flight on
both ends of the connection is most of it)."""
RETAINED_PER_INPUT_BYTES = 256
"""Python memory an HTTP body may leave behind, on average, once the first quarter of the run has
warmed the caches (bounded ones: yarl's, the metric children, the catalogue). A leak of even a few
hundred bytes a request shows here at test-suite size, long before it breaks the peak bound."""
RETAINED_SLACK_BYTES = 256 * 2**10
"""Allowance for allocator and cache noise in a short run."""

_BODY_IDS = (0x0001, 0x0100, 0x0102, 0x0200, 0x0704, 0x8001, 0x8003, 0x8100, 0x0800, 0x0801)
_CLOSE_KINDS = ("too_large", "too_many_errors", "garbage", "registration_rate")


class FuzzFailure(AssertionError):
    """An invariant broke; the message names the run, seed and input."""


@dataclass
class Report:
    """What one run saw."""

    name: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    counted: float = 0.0
    """Growth of the rejection counters over the run."""
    closes: int = 0
    peak_bytes: int = 0
    retained_bytes: int | None = None
    """Traced memory still held at the end beyond what it was after the warm-up (bodies)."""
    seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (f"{self.name}: {self.inputs} inputs in {self.seconds:.1f} s ({rate:,.0f}/s), "
                f"{self.accepted} accepted, {self.rejected} not accepted, rejection counters "
                f"+{self.counted:.0f}, {self.closes} connections closed by the gateway, "
                f"tracemalloc peak {self.peak_bytes / 2**10:,.0f} KiB"
                + ("" if self.retained_bytes is None else
                   f", {self.retained_bytes / 2**10:,.0f} KiB retained after the warm-up"))


def _counter_sum(name: str, keep: Callable[[dict[str, str]], bool] = lambda _l: True) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and keep(sample.labels):
                total += sample.value
    return total


def _jt808_rejections() -> float:
    return (_counter_sum("tti_jt808_errors_total")
            + _counter_sum("tti_jt808_positions_total", lambda lb: lb["outcome"] != "published"))


def _jt808_kind(kind: str) -> float:
    return _counter_sum("tti_jt808_errors_total", lambda lb: lb["kind"] == kind)


def _seeds(k: int = 0) -> list[bytes]:
    return seed_corpus(load_vector_frames(), fuzz_phone(k))


@contextlib.contextmanager
def _traced(report: Report, bound: int) -> Iterator[None]:
    started = time.perf_counter()
    own = not tracemalloc.is_tracing()
    if own:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        report.peak_bytes = tracemalloc.get_traced_memory()[1]
        if own:
            tracemalloc.stop()
        report.seconds = time.perf_counter() - started
    if report.peak_bytes > bound:
        raise FuzzFailure(f"{report.name}: tracemalloc peak {report.peak_bytes} > {bound} bytes")


# ---- the codec --------------------------------------------------------------------------------


def _expect_jt808(call: Callable[[], object], report: Report, what: str, seed: int, i: int,
                  data: bytes) -> bool:
    """Run ``call``: True when it decoded, False for a ``Jt808Error``; anything else fails."""
    try:
        call()
    except Jt808Error as exc:
        if exc.kind not in ERROR_KINDS:
            raise FuzzFailure(f"decoders seed {seed} input {i} {what}: unknown kind {exc.kind!r}"
                              f" for {data.hex()}") from exc
        report.kinds[exc.kind] = report.kinds.get(exc.kind, 0) + 1
        return False
    except Exception as exc:
        raise FuzzFailure(f"decoders seed {seed} input {i} {what} crashed on {data.hex()}: "
                          f"{exc!r}") from exc
    return True


def fuzz_decoders(n: int, seed: int = 1) -> Report:
    """``n`` mutated inputs straight through the decoders; returns what it saw."""
    report = Report("decoders")
    mutator = Mutator(_seeds(), seed)
    rng = random.Random(seed ^ 0x5EED)
    with _traced(report, DECODER_PEAK_BYTES):
        for i, data in enumerate(mutator.inputs(n)):
            report.inputs += 1
            splitter = FrameSplitter()
            frames: list[bytes] = []

            def split(d: bytes = data, s: FrameSplitter = splitter,
                      out: list[bytes] = frames) -> None:
                cut = rng.randrange(len(d) + 1)  # two reads: the splitter's carry-over too
                try:
                    out += s.feed(d[:cut])
                    out += s.feed(d[cut:])
                except FrameError as exc:
                    out += exc.frames
                    raise

            _expect_jt808(split, report, "split", seed, i, data)
            ok = _expect_jt808(lambda d=data: decode_frame(d), report, "frame", seed, i, data)
            for f in frames:
                ok = _expect_jt808(lambda f=f: decode_frame(f), report, "frame", seed, i, f) or ok
                _expect_jt808(lambda f=f: decode_frame(f, verify_checksum=False,
                                                       version_hint=2011),
                              report, "frame-nocheck", seed, i, f)
                _expect_jt808(lambda f=f: decode_header(unescape(f[1:-1])), report, "header",
                              seed, i, f)
            body = data[rng.randrange(len(data) + 1):]
            mid = rng.choice(_BODY_IDS)
            version = rng.choice((None, 2011, 2013, 2019))
            _expect_jt808(lambda m=mid, b=body, v=version: decode_body(m, b, v),  # type: ignore[misc]
                          report, f"body 0x{mid:04X}", seed, i, body)
            if ok:
                report.accepted += 1
            else:
                report.rejected += 1
    return report


# ---- the gateway over TCP ---------------------------------------------------------------------


async def fuzz_gateway(n: int, seed: int = 1, *, connections: int = 4,
                       workdir: Path | None = None) -> Report:
    """``n`` mutated inputs through a real gateway over TCP, ``connections`` sessions at once."""
    from tests.collector.jt808_support import running_gateway

    report = Report("gateway")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        rejections0 = _jt808_rejections()
        internal0 = _jt808_kind("internal")
        closing0 = {k: _jt808_kind(k) for k in _CLOSE_KINDS}
        with _traced(report, GATEWAY_PEAK_BYTES):
            # Limits high: the fuzz measures decoding and state, not the rate limiters.
            async with running_gateway(workdir, subscribe=False, max_frames_per_s=1e9,
                                       max_registrations_per_s=1e9) as h:
                # Each session its own stream of inputs (seeded by seed and session number),
                # made as it goes: a million inputs are never held at once.
                results = await asyncio.gather(*(
                    _gateway_worker(h.port, Mutator(_seeds(k), seed * 1000 + k).inputs(
                        n // connections + (k < n % connections)), seed, k)
                    for k in range(connections)))
                async with asyncio.timeout(10):
                    while h.gateway.connections:  # noqa: ASYNC110 - the gateway's own state
                        await asyncio.sleep(0.01)
        for accepted, not_accepted, closes in results:
            report.accepted += accepted
            report.rejected += not_accepted
            report.closes += closes
        report.inputs = n
        report.counted = _jt808_rejections() - rejections0
        internal = _jt808_kind("internal") - internal0
        closing = sum(_jt808_kind(k) - v for k, v in closing0.items())
    if internal:
        raise FuzzFailure(f"gateway seed {seed}: {internal:.0f} internal errors (see the log)")
    if report.counted < report.rejected:
        raise FuzzFailure(f"gateway seed {seed}: {report.rejected} frames not accepted but the "
                          f"rejection counters grew by {report.counted:.0f}")
    if closing < report.closes:
        raise FuzzFailure(f"gateway seed {seed}: {report.closes} unexpected closes, "
                          f"{closing:.0f} counted")
    return report


async def _session(port: int, k: int) -> Any:
    from tests.collector.jt808_support import Terminal

    # Alternate layouts: the same canonical phone, 2013 or 2019 replies. Sessions share the
    # phone, so another one's registration (or a mutated but sound 0x0100 of the fuzz
    # terminal) can replace the auth code between our 0x0100 and 0x0102: register again.
    phone = fuzz_phone(k)
    for _ in range(5):
        t = (Terminal(phone_bcd(phone, 2019), version=2019) if k % 2
             else Terminal(phone_bcd(phone, 2013)))
        await t.connect(port)
        msg = await t.register()
        if (isinstance(msg.body, RegisterResponse) and msg.body.result == 0
                and (await t.authenticate(msg.body.auth_code)).result == 0):
            return t
        await t.close()
    raise FuzzFailure(f"gateway worker {k}: the fuzz terminal cannot log in")


WINDOW = 16
"""Inputs (each with its probe) written at once before their replies are read."""


async def _gateway_worker(port: int, inputs: Iterator[bytes], seed: int, k: int
                          ) -> tuple[int, int, int]:
    """Feed ``inputs`` in windows, each input followed by a probe; count accepted, not, closes.

    When an input closes the connection, the inputs behind it in its window are sent again on
    a new session (had the gateway reset the connection, replies could be lost: that only makes
    the accounting more lenient, never stricter).
    """
    phone = fuzz_phone(k)
    accepted = not_accepted = closes = 0
    t = await _session(port, k)
    pending: list[bytes] = []
    serial = 0
    logged_out = False
    try:
        while True:
            while len(pending) < WINDOW:
                nxt = next(inputs, None)
                if nxt is None:
                    break
                pending.append(nxt)
            if not pending:
                break
            probes = []
            out = []
            for data in pending:
                serial = serial + 1 & 0x0FFF
                probes.append(0xA000 + serial)
                out.append(data + b"\x7e" + t.frame(MsgId.T_HEARTBEAT, Heartbeat(),
                                                     serial=0xA000 + serial))
            await t.send_raw(b"".join(out))
            done = 0  # inputs whose probe was answered
            ok_replies = 0
            closed = False
            try:
                while done < len(pending):
                    msg = await t.recv(10.0)
                    body = msg.body
                    if isinstance(body, PlatformGeneralResponse):
                        if (body.reply_msg_id, body.reply_serial) == (0x0002, probes[done]):
                            frames, fatal = _cut(pending[done])
                            if fatal:
                                raise FuzzFailure(
                                    f"gateway seed {seed} worker {k}: an oversize frame did "
                                    f"not close the connection: {pending[done].hex()}")
                            good = ok_replies + sum(
                                1 for f in frames if _silently_accepted(f, phone))
                            logged_out = logged_out or any(
                                _is_own_logout(f, phone) for f in frames)
                            accepted += min(good, len(frames))
                            not_accepted += max(0, len(frames) - good)
                            ok_replies = 0
                            done += 1
                            continue
                        ok_replies += body.result == 0
                    elif isinstance(body, RegisterResponse | ServerTimeReply):
                        ok_replies += getattr(body, "result", 0) == 0
            except ConnectionError:
                closed = True
            except TimeoutError as exc:
                raise FuzzFailure(f"gateway seed {seed} worker {k}: no answer to the probe "
                                  f"after {pending[done].hex()}") from exc
            if closed:
                # The input closed the connection (counted, checked by the caller) or logged
                # the terminal out (accepted): either way, a new session for the rest.
                frames, _ = _cut(pending[done])
                # A logout answered on a busy session closes it only once the frames in hand
                # (the rest of the window) are answered: the close shows in a later window.
                if not logged_out and not any(_is_own_logout(f, phone) for f in frames):
                    closes += 1
                logged_out = False
                await t.close()
                t = await _session(port, k)
                pending = pending[done + 1 :]
            else:
                pending = []
    finally:
        await t.close()
    return accepted, not_accepted, closes


def _cut(data: bytes) -> tuple[list[bytes], bool]:
    """The frames the gateway cuts from ``data`` + the probe's extra flag; True if oversize."""
    try:
        return FrameSplitter().feed(data + b"\x7e"), False
    except FrameError as exc:
        return list(exc.frames), True


def _decoded(frame: bytes) -> Any:
    try:
        return decode_frame(frame)
    except Jt808Error:
        return None


def _silently_accepted(frame: bytes, phone: str) -> bool:
    """A sound 0x0001 of the fuzz terminal: taken without an answer."""
    msg = _decoded(frame)
    return (msg is not None and msg.msg_id == MsgId.T_GENERAL_RESPONSE
            and msg.terminal_phone == phone)


def _is_own_logout(frame: bytes, phone: str) -> bool:
    msg = _decoded(frame)
    return msg is not None and msg.msg_id == MsgId.T_LOGOUT and msg.terminal_phone == phone


# ---- HTTP bodies ------------------------------------------------------------------------------


def _iso(rng: random.Random) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=rng.choice((-30, -5, -3600, 60, 86400 * 30)))
    return moment.isoformat().replace("+00:00", "Z")


def _seed_bodies(rng: random.Random) -> list[tuple[str, Any]]:
    reading = {"observed_at": _iso(rng), "interval_s": 60, "vehicle_count": 17,
               "mean_speed_kmh": 43.5, "occupancy_pct": 9.5, "queue_length_m": 12.0, "lane": 1}
    event = {"kind": "stopped_vehicle", "observed_at": _iso(rng), "event_id": "cam17-0001",
             "confidence": 0.9, "lane": 2}
    state = {"observed_at": _iso(rng), "values": {"free_spaces": 12, "status": "open",
                                                 "temperature_c": -3.5, "gone": None}}
    return [
        ("/api/v1/detectors/det-1/readings", reading),
        ("/api/v1/detectors/det-1/readings", [reading, dict(reading, lane=2)]),
        ("/api/v1/detectors/cam-17/events", event),
        ("/api/v1/detectors/cam-17/events", [event, dict(event, kind="accident")]),
        ("/api/v1/features/parking/P-12/state", state),
        ("/api/v1/features/tunnel/T-1/state", state),
        # One bounded value each (shared/feature_rules.py): a mutation lands on the rule.
        ("/api/v1/features/parking/P-12/state", {"values": {"free_spaces": 12}}),
        ("/api/v1/features/weather_station/W-1/state",
         {"observed_at": _iso(rng), "values": {"temperature_c": 21.5, "visibility_m": 800}}),
    ]


_WEIRD = (None, True, False, 0, -1, 1e308, float("inf"), -1e-12, 2**63, "", "x" * 300, "NaN",
          "2024-13-45T99:00:00Z", [], {}, [[[]]], {"a": {"b": {"c": {}}}}, "鄂A12345", "\x00")


def _mutate_value(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and value and depth < 4:
        value = dict(value)
        key = rng.choice(list(value))
        op = rng.randrange(4)
        if op == 0:
            del value[key]
        elif op == 1:
            value[key] = rng.choice(_WEIRD)
        elif op == 2:
            value[rng.choice(("extra", "", "values", "kind", "x" * 100))] = rng.choice(_WEIRD)
        else:
            value[key] = _mutate_value(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and depth < 4:
        value = list(value)
        op = rng.randrange(3)
        if op == 0:  # empty, or over the item limit (never more than 600 items)
            value = (value * 600)[: rng.choice((0, 2, 50, 600))]
        elif op == 1:
            value.append(rng.choice(_WEIRD))
        else:
            i = rng.randrange(len(value))
            value[i] = _mutate_value(rng, value[i], depth + 1)
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and rng.random() < 0.5:
        # Near the value: over a bound, below zero, a fraction where a whole number belongs.
        return rng.choice((-value, value + 0.5, value * 1000, -1, value + 1, 2**31))
    return rng.choice(_WEIRD)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=True).encode()


def _http_input(rng: random.Random, seeds: list[tuple[str, Any]]) -> tuple[str, bytes, str]:
    """One request: path, body, content type."""
    path, value = rng.choice(seeds)
    for _ in range(rng.randint(0, 3)):
        value = _mutate_value(rng, value)
    body = bytearray(_dumps(value))
    op = rng.randrange(10)
    if op == 0 and body:  # byte damage
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif op == 1:
        del body[rng.randrange(len(body) + 1):]
    elif op == 2:
        body[0:0] = b"[" * rng.choice((10, 1000, 100_000))  # deep nesting
    elif op == 3:
        body = bytearray(rng.randbytes(rng.randint(0, 256)))
    elif op == 4:
        body += b" " * rng.choice((10, 1_100_000))  # over the body limit
    parts = path.split("/")
    if rng.random() < 0.3:
        # A sensor never seen before: per-sensor state in the server would grow with these.
        parts[len(parts) - 2] = f"fz-{rng.randrange(10**12)}"
        path = "/".join(parts)
    if rng.random() < 0.2:
        at = rng.randrange(3, len(parts))
        parts[at] = rng.choice(("", "..", "%00", "x" * 200, "%E9%84%82", "a b", "parking",
                                "nonexistent_kind", "readings"))
        path = "/".join(parts)
    ctype = rng.choice(("application/json",) * 6 + ("", "text/plain", "application/json; "
                        "charset=gbk", "multipart/form-data"))
    return path, bytes(body), ctype


def _catalogue(published_at: datetime) -> list[Any]:
    """What bigdata would publish: the seed bodies' parking lot (300 spaces), tunnel and weather
    station, a lot of unknown capacity, every other kind empty."""
    from shared.events import FEATURE_KINDS, CatalogueEntry, FeatureCatalogue

    features = {"parking": (CatalogueEntry(feature_id="P-12", capacity=300),
                            CatalogueEntry(feature_id="P-nocap")),
                "tunnel": (CatalogueEntry(feature_id="T-1"),),
                "weather_station": (CatalogueEntry(feature_id="W-1"),)}
    return [FeatureCatalogue(kind=k, version=f"fuzz-{k}", published_at=published_at, chunk=0,
                             chunks=1, features=features.get(k, ())) for k in FEATURE_KINDS]


async def _post(client: Any, path: str, body: bytes, ctype: str) -> tuple[int, bytes]:
    """POST through the test client's session, the response released when read.

    ``TestClient.post`` keeps every response until the client closes (so a test can forget to
    release one): 4 KiB a request, which once made this run's peak grow with its length.
    """
    headers = {"Content-Type": ctype} if ctype else {}
    async with client.session.post(client.make_url(path), data=body, headers=headers) as resp:
        return resp.status, await resp.read()


def _code(answer: object) -> object:
    error = answer.get("error") if isinstance(answer, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _http_rejections() -> float:
    return (_counter_sum("tti_http_errors_total", lambda lb: lb["service"] == "collector")
            + _counter_sum("tti_detector_rejected_total")
            + _counter_sum("tti_feature_state_rejected_total"))


async def fuzz_bodies(n: int, seed: int = 1, *, workdir: Path | None = None) -> Report:
    """``n`` mutated HTTP bodies against the collector's sensor inputs.

    The first tenth goes in before bigdata's feature catalogue has arrived (feature states get
    the documented 503), the rest after it (404 unknown feature, 422 over capacity, 202).
    """
    from aiohttp.test_utils import TestClient, TestServer

    from services.collector.app import CATALOGUE, create_app
    from shared.bus.memory import MemoryBus
    from shared.config import Config
    from shared.events import FEATURE_CATALOGUE

    report = Report("bodies")
    rng = random.Random(seed)
    warm_up = n // 4
    catalogue_at = n // 10
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bus = MemoryBus()
        await bus.start()
        config = Config(jt808_port=0, jt808_host="127.0.0.1",
                        db_url=f"sqlite:///{workdir / 'collector.db'}")
        app = create_app(config, bus=bus)
        counted0 = _http_rejections()
        refused = 0
        with _traced(report, BODIES_PEAK_BYTES):
            async with TestClient(TestServer(app)) as client:
                seeds = _seed_bodies(rng)
                mark = tracemalloc.get_traced_memory()[0]
                for i in range(n):
                    if i == catalogue_at:
                        for chunk in _catalogue(datetime.now(UTC)):
                            await bus.publish(FEATURE_CATALOGUE, chunk)
                        async with asyncio.timeout(10):
                            while not app[CATALOGUE].complete:  # noqa: ASYNC110 - its own state
                                await asyncio.sleep(0.01)
                    if i == warm_up:
                        gc.collect()
                        mark = tracemalloc.get_traced_memory()[0]
                    path, body, ctype = _http_input(rng, seeds)
                    status, raw = await _post(client, path, body, ctype)
                    try:
                        answer = json.loads(raw)
                    except ValueError as exc:
                        raise FuzzFailure(f"bodies seed {seed} input {i}: {status} from {path} "
                                          f"is not JSON: {raw[:200]!r}") from exc
                    if status == 503 and _code(answer) == "catalogue_loading":
                        if i >= catalogue_at:
                            raise FuzzFailure(f"bodies seed {seed} input {i}: 503 "
                                              f"catalogue_loading after the catalogue arrived "
                                              f"for {path}")
                        # Documented: feature states wait for bigdata's catalogue.
                        report.kinds["catalogue_loading"] = report.kinds.get(
                            "catalogue_loading", 0) + 1
                        report.inputs += 1
                        continue
                    if not (200 <= status < 300 or 400 <= status < 500):
                        raise FuzzFailure(f"bodies seed {seed} input {i}: status {status} for "
                                          f"POST {path} {body[:300]!r} ({ctype}): {answer}")
                    report.inputs += 1
                    report.kinds[str(status)] = report.kinds.get(str(status), 0) + 1
                    if status >= 400:
                        refused += 1
                    elif isinstance(answer, dict) and isinstance(answer.get("rejected"), list):
                        refused += len(answer["rejected"])  # partial acceptance
                        report.accepted += 1
                    else:
                        report.accepted += 1
                gc.collect()
                report.retained_bytes = tracemalloc.get_traced_memory()[0] - mark
                # Still serving: a sound reading and a sound state are taken.
                sound = [("/api/v1/detectors/det-1/readings", _seed_bodies(random.Random(0))[0][1]
                          | {"observed_at": _iso(random.Random(1))}),
                         ("/api/v1/features/parking/P-12/state", {"values": {"free_spaces": 7}})]
                for path, value in sound:
                    status, raw = await _post(client, path, _dumps(value), "application/json")
                    if status != 202:
                        raise FuzzFailure(f"bodies seed {seed}: a sound POST {path} got {status} "
                                          f"after the run: {raw[:200]!r}")
        await bus.close()
        report.rejected = refused
        report.counted = _http_rejections() - counted0
    if report.counted < refused:
        raise FuzzFailure(f"bodies seed {seed}: {refused} refusals but the rejection counters "
                          f"grew by {report.counted:.0f}")
    allowed = RETAINED_PER_INPUT_BYTES * (n - warm_up) + RETAINED_SLACK_BYTES
    if report.retained_bytes > allowed:
        raise FuzzFailure(f"bodies seed {seed}: {report.retained_bytes} bytes still held after "
                          f"{n - warm_up} bodies past the warm-up (> {allowed}): something keeps "
                          "each request")
    return report


# ---- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzers; exit status 1 on the first broken invariant."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000,
                        help="mutated JT/T 808 inputs, each through the decoders and the gateway")
    parser.add_argument("--bodies", type=int, default=1_000, help="mutated HTTP bodies")
    parser.add_argument("--seed", type=int, default=1, help="same seed, same inputs")
    parser.add_argument("--connections", type=int, default=4,
                        help="gateway sessions fed at once")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        print(fuzz_decoders(args.frames, args.seed).line(), flush=True)
        print(asyncio.run(fuzz_gateway(args.frames, args.seed,
                                       connections=args.connections)).line(), flush=True)
        if args.bodies:
            print(asyncio.run(fuzz_bodies(args.bodies, args.seed)).line(), flush=True)
    except FuzzFailure as exc:
        print(f"FUZZ FAILURE: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
