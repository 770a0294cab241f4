// TTI bus-stop sign: polls /api/v1/stops/{stop_id}/sign and shows it on a roadside screen.
// When the server or the live feed is down it keeps showing what it last had, counting the
// minutes down on the service clock, and says since when. It never stops polling, so it comes
// back by itself after a server restart. Talks only to this server.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const pollS = Math.min(300, Math.max(1, Number(params.get("poll")) || 10));
  const TIMEOUT_MS = Math.min(8000, pollS * 800 + 1000);
  const stopId = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
  const url = `/api/v1/stops/${encodeURIComponent(stopId)}/sign`;

  const OCCUPANCY = {
    EMPTY: ["空车", "empty", 1], MANY_SEATS_AVAILABLE: ["座位充足", "seats", 1],
    FEW_SEATS_AVAILABLE: ["座位较少", "few seats", 2],
    STANDING_ROOM_ONLY: ["有站位", "standing", 3],
    CRUSHED_STANDING_ROOM_ONLY: ["拥挤", "crowded", 4], FULL: ["满载", "full", 4],
    NOT_ACCEPTING_PASSENGERS: ["不载客", "not boarding", 4],
    NOT_BOARDABLE: ["不载客", "not boarding", 4],
  };
  const hhmm = new Intl.DateTimeFormat("zh-CN", {
    timeZone: "Asia/Shanghai", hour: "2-digit", minute: "2-digit", hour12: false,
  });

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const bi = (parent, zh, en) => {
    parent.append(document.createTextNode(zh + " "));
    parent.append(el("small", "", en));
    return parent;
  };

  // shown: the answer on screen; good: the last answer with the live feed up.
  const state = { shown: null, good: null, mode: "loading", missing: false };

  function serverNow(snap) {
    if (!snap) return Date.now();
    return snap.at + (performance.now() - snap.fetchedAt) * snap.rate;
  }

  function fmt(ms) { return hhmm.format(new Date(ms)); }

  function occupancy(occ) {
    const box = el("span", "occ");
    if (!occ || (!occ.status && occ.percentage == null)) return box;
    const known = OCCUPANCY[occ.status];
    if (known) {
      box.classList.add("o" + known[2]);
      return bi(box, known[0], known[1]);
    }
    const pct = Math.round(occ.percentage);
    box.classList.add("o" + (pct < 50 ? 1 : pct < 80 ? 2 : pct < 100 ? 3 : 4));
    return bi(box, `${pct}%`, "full");
  }

  function eta(arrival, now) {
    const at = Date.parse(arrival.arrival_at);
    const span = el("span", "eta");
    if (arrival.source === "schedule") {
      span.classList.add("schedule");
      span.textContent = fmt(at);
      return span;
    }
    const minutes = Math.max(0, Math.round((at - now) / 60000));
    if (minutes === 0) {
      span.classList.add("now");
      return bi(span, "进站", "now");
    }
    span.append(document.createTextNode(String(minutes)));
    span.append(el("small", "", "分 min"));
    return span;
  }

  function renderRoutes(data, now) {
    const list = $("routes");
    list.replaceChildren();
    let shown = 0;
    for (const route of data.routes) {
      const arrivals = route.arrivals.filter((a) => Date.parse(a.arrival_at) > now - 60000);
      if (!arrivals.length) continue;
      const li = el("li", "route");
      li.dataset.routeId = route.route_id;
      li.append(el("span", "num", route.route_short_name || route.route_id));
      const to = el("span", "to");
      to.append(el("b", "", route.headsign || "—"));
      to.append(el("small", "", route.headsign ? "" : "to —"));
      li.append(to);
      const times = el("span", "times");
      for (const a of arrivals.slice(0, 2)) times.append(eta(a, now));
      li.append(times);
      li.append(occupancy(arrivals[0].occupancy));
      list.append(li);
      shown += 1;
    }
    $("no-arrivals").hidden = shown > 0;
    // No scrolling: drop the rows that do not fit, and say how many.
    let hidden = 0;
    while (list.children.length > 1 && list.scrollHeight > list.clientHeight + 1) {
      list.lastElementChild.remove();
      hidden += 1;
    }
    const more = $("more-routes");
    more.hidden = hidden === 0;
    if (hidden) {
      more.replaceChildren();
      bi(more, `另有 ${hidden} 条线路`, `${hidden} more routes`);
    }
  }

  function renderRoad(road) {
    const level = $("road-level");
    const name = $("road-name");
    level.replaceChildren();
    name.replaceChildren();
    if (!road || road.level == null) {
      level.className = "level l0";
      bi(level, "无数据", "no data");
    } else {
      level.className = `level l${road.level}`;
      bi(level, road.level_name || "", road.level_name_en || "");
    }
    level.dataset.level = road && road.level != null ? String(road.level) : "";
    if (road && road.name) {
      const speed = road.speed_kmh != null ? ` · ${Math.round(road.speed_kmh)} km/h` : "";
      bi(name, road.name + speed, road.name_en || "");
    }
  }

  function renderWarnings(data) {
    const list = $("warnings");
    list.replaceChildren();
    for (const w of data.warnings) {
      const li = el("li", w.severity);
      li.append(el("span", "", w.headline));
      if (w.headline_en) li.append(el("small", "", w.headline_en));
      list.append(li);
    }
    while (list.children.length > 1 && list.parentElement.scrollHeight
           > list.parentElement.clientHeight + 1) {
      list.lastElementChild.remove();
    }
    $("no-warnings").hidden = data.warnings.length > 0;
  }

  function renderBanner() {
    const banner = $("banner");
    const body = document.body;
    banner.replaceChildren();
    if (state.missing) {
      body.dataset.state = "missing";
      bi(banner, `无此站点 ${stopId}`, "No such stop");
      return;
    }
    const snap = state.good || state.shown;
    if (state.mode === "live") {
      body.dataset.state = "live";
      return;
    }
    if (!snap) {
      body.dataset.state = "loading";
      bi(banner, "正在连接…", "Connecting…");
      return;
    }
    body.dataset.state = "stale";
    const since = fmt(snap.at);
    if (state.mode === "offline") {
      bi(banner, `数据更新于 ${since}，暂时无法连接`, `Data as of ${since} · connection lost`);
    } else {
      bi(banner, `数据更新于 ${since}，实时数据中断`, `Data as of ${since} · live feed down`);
    }
  }

  function render() {
    const snap = state.mode === "live" ? state.shown : state.good || state.shown;
    const now = serverNow(snap || state.shown);
    $("clock").textContent = fmt(now);
    renderBanner();
    if (!snap) return;
    const data = snap.data;
    $("stop-name").textContent = data.stop.name;
    $("stop-name-en").textContent = data.stop.name_en || "";
    document.title = `${data.stop.name} · 公交电子站牌`;
    renderRoutes(data, now);
    renderRoad(data.road_ahead);
    renderWarnings(data);
    const updated = $("updated");
    updated.replaceChildren();
    bi(updated, `更新 ${fmt(snap.at)}`, "updated");
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      // no-store: a cached body would carry an old generated_at, the sign's sense of time.
      const resp = await fetch(url, { cache: "no-store", signal: abort.signal,
                                      headers: { Accept: "application/json" } });
      if (resp.status === 404) {
        state.missing = true;
      } else if (!resp.ok) {
        state.mode = "offline";  // 503 while the server loads after a restart
      } else {
        const data = await resp.json();
        const snap = { data, at: Date.parse(data.generated_at), fetchedAt: performance.now(),
                       rate: Number(data.clock_rate) || 1 };
        state.missing = false;
        state.shown = snap;
        if (data.feed.bus === "connected") {
          state.good = snap;
          state.mode = "live";
        } else {
          state.mode = "feed-down";
        }
      }
    } catch (err) {
      state.mode = "offline";
    } finally {
      clearTimeout(timer);
    }
    render();
  }

  async function loop() {
    for (;;) {
      await poll();
      await new Promise((resolve) => setTimeout(resolve, pollS * 1000));
    }
  }

  setInterval(render, 5000);  // count down between polls
  window.addEventListener("resize", render);
  loop();
})();
