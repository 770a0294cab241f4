// TTI live traffic page: draws the publisher's roads on a canvas and lists active warnings.
// Talks only to this server (/api/v1/...); no map tiles, fonts or scripts from elsewhere.
"use strict";

(() => {
  const POLL_MS = 10000;
  const LEVEL_COLORS = ["#a3a8ae", "#2e9e44", "#9ccc3c", "#f2b600", "#ee6a1f", "#a50f15"];
  // Level names are the server's (GET /api/v1/levels, the one vocabulary); 0 is "no data".
  const LEVEL_NAMES = ["无数据"];
  const LEVEL_NAMES_EN = ["no data"];
  const SOURCE_NAMES = {
    probe: "浮动车 probe vehicles", detector: "检测器 road detectors",
    "probe+detector": "浮动车+检测器 probe vehicles and detectors",
    profile: "历史规律 historical profile", none: "无数据 no data",
  };
  // Wider lines for bigger roads, in CSS pixels at the default zoom.
  const CLASS_WIDTH = {
    motorway: 3.5, trunk: 3.2, primary: 2.8, secondary: 2.4, tertiary: 2.0,
    motorway_link: 2.0, trunk_link: 2.0, primary_link: 1.8,
  };
  const CLICK_TOLERANCE_PX = 8;

  const canvas = document.getElementById("map");
  const ctx = canvas.getContext("2d");
  const statusEl = document.getElementById("status");

  const state = {
    region: null,
    cosLat: 1,          // equirectangular projection: x = lon * cos(lat0), y = lat
    roads: [],          // {id, props, pts: Float64Array of projected x,y, minX,minY,maxX,maxY}
    warnings: [],
    selectedId: null,
    selectedDetail: null,
    view: { cx: 0, cy: 0, scale: 1 },  // scale: CSS pixels per projected degree
    fitScale: 1,
    width: 0, height: 0,
    roadsRequest: 0,
    roadsAbort: null,
    refetchTimer: 0,
    drawQueued: false,
  };

  // ---- formatting --------------------------------------------------------------------------

  const beijing = new Intl.DateTimeFormat("zh-CN", {
    timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : beijing.format(d);
  }

  function fmtAge(iso) {
    if (!iso) return "";
    const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (!Number.isFinite(s)) return "";
    if (s < 60) return `（${Math.max(s, 0)} 秒前 s ago）`;
    if (s < 3600) return `（${Math.round(s / 60)} 分钟前 min ago）`;
    return `（${Math.round(s / 3600)} 小时前 h ago）`;
  }

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  // ---- projection and view -----------------------------------------------------------------

  function project(lon, lat) { return [lon * state.cosLat, lat]; }

  function toScreen(x, y) {
    const v = state.view;
    return [(x - v.cx) * v.scale + state.width / 2, state.height / 2 - (y - v.cy) * v.scale];
  }

  function toWorld(sx, sy) {
    const v = state.view;
    return [(sx - state.width / 2) / v.scale + v.cx, v.cy - (sy - state.height / 2) / v.scale];
  }

  function fitRegion() {
    if (!state.region) return;
    const [minLon, minLat, maxLon, maxLat] = state.region.bbox;
    const [x0, y0] = project(minLon, minLat);
    const [x1, y1] = project(maxLon, maxLat);
    const w = Math.max(x1 - x0, 1e-6);
    const h = Math.max(y1 - y0, 1e-6);
    state.view.cx = (x0 + x1) / 2;
    state.view.cy = (y0 + y1) / 2;
    state.view.scale = 0.92 * Math.min(state.width / w, state.height / h);
    state.fitScale = state.view.scale;
  }

  // The padded view as a bbox query, clamped to valid WGS-84 ranges.
  function viewBbox() {
    const pad = 0.25;
    const [x0, y1] = toWorld(-state.width * pad, -state.height * pad);
    const [x1, y0] = toWorld(state.width * (1 + pad), state.height * (1 + pad));
    const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
    const minLon = clamp(x0 / state.cosLat, -180, 180);
    const maxLon = clamp(x1 / state.cosLat, -180, 180);
    const minLat = clamp(y0, -90, 90);
    const maxLat = clamp(y1, -90, 90);
    if (!(minLon < maxLon && minLat < maxLat)) return null;
    return [minLon, minLat, maxLon, maxLat].map((v) => v.toFixed(6)).join(",");
  }

  function zoomAt(factor, sx, sy) {
    const [wx, wy] = toWorld(sx, sy);
    const v = state.view;
    v.scale = Math.min(Math.max(v.scale * factor, state.fitScale / 8), state.fitScale * 4096);
    // Keep the world point under the cursor where it was.
    v.cx = wx - (sx - state.width / 2) / v.scale;
    v.cy = wy + (sy - state.height / 2) / v.scale;
    viewChanged();
  }

  function viewChanged() {
    requestDraw();
    clearTimeout(state.refetchTimer);
    state.refetchTimer = setTimeout(loadRoads, 350);
  }

  // ---- drawing -----------------------------------------------------------------------------

  function resize() {
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const firstFit = state.width === 0;
    state.width = rect.width;
    state.height = rect.height;
    canvas.width = Math.round(rect.width * dpr);
    canvas.height = Math.round(rect.height * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (firstFit) fitRegion();
    requestDraw();
  }

  function requestDraw() {
    if (state.drawQueued) return;
    state.drawQueued = true;
    requestAnimationFrame(() => { state.drawQueued = false; draw(); });
  }

  function roadLevel(road) { return road.props.level || 0; }

  function roadWidth(road, zoom) {
    const base = CLASS_WIDTH[road.props.road_class] || 1.4;
    return Math.min(base * Math.max(1, Math.log2(zoom) * 0.6 + 1), 10);
  }

  // Trace a road shifted to the right of its direction of travel (traffic keeps right), so the
  // two directions of a street show apart once zoomed in.
  function traceRoad(road, offset) {
    const p = road.pts;
    const n = p.length / 2;
    for (let i = 0; i < n; i++) {
      let [sx, sy] = toScreen(p[2 * i], p[2 * i + 1]);
      if (offset > 0) {
        const a = Math.max(i - 1, 0);
        const b = Math.min(i + 1, n - 1);
        const [ax, ay] = toScreen(p[2 * a], p[2 * a + 1]);
        const [bx, by] = toScreen(p[2 * b], p[2 * b + 1]);
        const dx = bx - ax;
        const dy = by - ay;
        const len = Math.hypot(dx, dy) || 1;
        sx += (-dy / len) * offset;
        sy += (dx / len) * offset;
      }
      if (i === 0) ctx.moveTo(sx, sy); else ctx.lineTo(sx, sy);
    }
  }

  function visible(road, bounds) {
    return road.maxX >= bounds[0] && road.minX <= bounds[2]
      && road.maxY >= bounds[1] && road.minY <= bounds[3];
  }

  function draw() {
    ctx.clearRect(0, 0, state.width, state.height);
    const zoom = state.view.scale / state.fitScale;
    const [bx0, by1] = toWorld(0, 0);
    const [bx1, by0] = toWorld(state.width, state.height);
    const bounds = [bx0, by0, bx1, by1];
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    // Batch by level and width: a handful of strokes instead of one per road. No-data roads
    // first so congestion is drawn on top.
    for (let level = 0; level <= 5; level++) {
      const byWidth = new Map();
      for (const road of state.roads) {
        if (roadLevel(road) !== level || !visible(road, bounds)) continue;
        const w = roadWidth(road, zoom);
        if (!byWidth.has(w)) byWidth.set(w, []);
        byWidth.get(w).push(road);
      }
      ctx.strokeStyle = LEVEL_COLORS[level];
      for (const [w, roads] of byWidth) {
        ctx.lineWidth = w;
        const offset = offsetPx(roads[0], zoom);
        ctx.beginPath();
        for (const road of roads) traceRoad(road, offset);
        ctx.stroke();
      }
    }
    const selected = state.roads.find((r) => r.id === state.selectedId);
    if (selected) {
      const w = roadWidth(selected, zoom);
      const offset = offsetPx(selected, zoom);
      ctx.beginPath();
      traceRoad(selected, offset);
      ctx.lineWidth = w + 6;
      ctx.strokeStyle = "rgba(31, 111, 235, 0.45)";
      ctx.stroke();
      ctx.beginPath();
      traceRoad(selected, offset);
      ctx.lineWidth = w;
      ctx.strokeStyle = LEVEL_COLORS[roadLevel(selected)];
      ctx.stroke();
    }
    drawWarningMarkers();
  }

  function drawWarningMarkers() {
    ctx.fillStyle = "#d93025";
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 1.5;
    for (const w of state.warnings) {
      if (w.lon == null || w.lat == null) continue;
      const [x, y] = project(w.lon, w.lat);
      const [sx, sy] = toScreen(x, y);
      if (sx < -10 || sy < -10 || sx > state.width + 10 || sy > state.height + 10) continue;
      ctx.beginPath();
      ctx.moveTo(sx, sy - 9);
      ctx.lineTo(sx + 6, sy + 3);
      ctx.lineTo(sx - 6, sy + 3);
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
    }
  }

  // ---- data --------------------------------------------------------------------------------

  async function getJson(url, signal) {
    const resp = await fetch(url, { signal, headers: { Accept: "application/json" } });
    let body = null;
    try { body = await resp.json(); } catch (_) { body = null; }
    if (!resp.ok) {
      const msg = body && body.error ? `${body.error.code}: ${body.error.message}` : resp.status;
      const err = new Error(String(msg));
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function toRoad(feature) {
    const coords = feature.geometry.coordinates;
    const pts = new Float64Array(coords.length * 2);
    let minX = Infinity; let minY = Infinity; let maxX = -Infinity; let maxY = -Infinity;
    coords.forEach(([lon, lat], i) => {
      const [x, y] = project(lon, lat);
      pts[2 * i] = x; pts[2 * i + 1] = y;
      if (x < minX) minX = x; if (x > maxX) maxX = x;
      if (y < minY) minY = y; if (y > maxY) maxY = y;
    });
    return { id: feature.properties.segment_id, props: feature.properties, pts,
      minX, minY, maxX, maxY };
  }

  async function loadLevels() {
    const answer = await getJson("/api/v1/levels");
    const items = [];
    for (const { level, name, name_en: nameEn } of answer.levels) {
      LEVEL_NAMES[level] = name;
      LEVEL_NAMES_EN[level] = nameEn;
      const li = el("li", "", null);
      li.append(el("i", `swatch l${level}`), `${name} `, el("small", "", nameEn));
      items.push(li);
    }
    const list = document.getElementById("legend-levels");
    list.prepend(...items);
  }

  async function loadRegion() {
    for (;;) {
      try {
        state.region = await getJson("/api/v1/region");
        const [, minLat, , maxLat] = state.region.bbox;
        state.cosLat = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
        document.getElementById("region-name").textContent = state.region.name;
        return;
      } catch (err) {
        setStatus(`正在加载路网… Loading road network (${err.message})`, err.status !== 503);
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  }

  async function loadRoads() {
    if (!state.region) return;
    const bbox = viewBbox();
    if (!bbox) return;
    if (state.roadsAbort) state.roadsAbort.abort();
    const abort = new AbortController();
    state.roadsAbort = abort;
    const seq = ++state.roadsRequest;
    try {
      const data = await getJson(`/api/v1/roads?bbox=${bbox}`, abort.signal);
      if (seq !== state.roadsRequest) return;  // a newer view's answer wins
      state.roads = data.features.map(toRoad);
      setStatus(`更新于 Updated ${fmtTime(data.generated_at)} · ${data.count} 条路段 segments`);
      refreshInfo();
      requestDraw();
    } catch (err) {
      if (err.name === "AbortError") return;
      setStatus(`路况更新失败 Update failed: ${err.message}`, true);
    }
  }

  async function loadWarnings() {
    try {
      const data = await getJson("/api/v1/warnings?status=active");
      state.warnings = data.warnings;
      renderWarnings();
      requestDraw();
    } catch (err) {
      setStatus(`预警更新失败 Warnings update failed: ${err.message}`, true);
    }
  }

  // ---- warnings list -----------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function renderWarnings() {
    const list = document.getElementById("warnings");
    const items = state.warnings.map((w) => {
      const li = el("li", `sev-${String(w.severity).toLowerCase()}`);
      li.tabIndex = 0;
      li.appendChild(el("div", "headline", w.headline));
      if (w.description) li.appendChild(el("div", "", w.description));
      const parts = [`${w.kind} · ${w.severity}`];
      if (w.level && LEVEL_NAMES[w.level]) {
        parts.push(`${LEVEL_NAMES[w.level]} ${LEVEL_NAMES_EN[w.level]}`);
      }
      if (w.segment_ids && w.segment_ids.length > 1) parts.push(`${w.segment_ids.length} 段 segments`);
      if (w.speed_kmh != null) parts.push(`${Math.round(w.speed_kmh)} km/h`);
      parts.push(`开始 since ${fmtTime(w.started_at)}`);
      li.appendChild(el("div", "meta", parts.join(" · ")));
      const go = () => focusWarning(w);
      li.addEventListener("click", go);
      li.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
      return li;
    });
    list.replaceChildren(...items);
    document.getElementById("warning-count").textContent = String(state.warnings.length);
    document.getElementById("no-warnings").hidden = state.warnings.length > 0;
  }

  function centerOn(x, y, minZoom) {
    state.view.cx = x;
    state.view.cy = y;
    state.view.scale = Math.max(state.view.scale, state.fitScale * minZoom);
    viewChanged();
  }

  function focusWarning(w) {
    const road = w.segment_id && state.roads.find((r) => r.id === w.segment_id);
    if (road) {
      selectRoad(road.id);
      centerOn((road.minX + road.maxX) / 2, (road.minY + road.maxY) / 2, 8);
    } else if (w.lon != null && w.lat != null) {
      const [x, y] = project(w.lon, w.lat);
      centerOn(x, y, 8);
      if (w.segment_id) selectRoad(w.segment_id);
    }
  }

  // ---- road details ------------------------------------------------------------------------

  function distToSegment(px, py, ax, ay, bx, by) {
    const dx = bx - ax;
    const dy = by - ay;
    const len2 = dx * dx + dy * dy;
    let t = len2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / len2 : 0;
    t = Math.max(0, Math.min(1, t));
    return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
  }

  function offsetPx(road, zoom) {
    return zoom >= 4 ? roadWidth(road, zoom) / 2 + 0.5 : 0;
  }

  function roadAt(sx, sy) {
    const [wx, wy] = toWorld(sx, sy);
    const tol = CLICK_TOLERANCE_PX / state.view.scale;
    const zoom = state.view.scale / state.fitScale;
    let best = null;
    let bestDist = tol;
    for (const road of state.roads) {
      if (wx < road.minX - tol || wx > road.maxX + tol
          || wy < road.minY - tol || wy > road.maxY + tol) continue;
      const p = road.pts;
      const off = offsetPx(road, zoom) / state.view.scale;
      for (let i = 0; i + 3 < p.length; i += 2) {
        // Measure against the line as drawn: shifted to the right of travel, so a click picks
        // the direction it landed on.
        const dx = p[i + 2] - p[i];
        const dy = p[i + 3] - p[i + 1];
        const len = Math.hypot(dx, dy) || 1;
        const px = wx - (dy / len) * off;
        const py = wy + (dx / len) * off;
        const d = distToSegment(px, py, p[i], p[i + 1], p[i + 2], p[i + 3]);
        // Prefer the worse level on a tie: that is the line drawn on top.
        if (d < bestDist || (best && d === bestDist && roadLevel(road) > roadLevel(best))) {
          bestDist = d;
          best = road;
        }
      }
    }
    return best;
  }

  async function selectRoad(id) {
    state.selectedId = id;
    state.selectedDetail = null;
    refreshInfo();
    requestDraw();
    if (!id) return;
    try {
      const detail = await getJson(`/api/v1/roads/${encodeURIComponent(id)}`);
      if (state.selectedId === id) {
        state.selectedDetail = detail.properties;
        refreshInfo();
      }
    } catch (err) {
      if (state.selectedId === id) setStatus(`路段详情失败 Road details failed: ${err.message}`, true);
    }
  }

  function refreshInfo() {
    const box = document.getElementById("info");
    const road = state.roads.find((r) => r.id === state.selectedId);
    // The list's live values are fresher than the detail fetched on click.
    const props = road ? { ...(state.selectedDetail || {}), ...road.props } : state.selectedDetail;
    if (!state.selectedId || !props) { box.hidden = true; return; }
    box.hidden = false;
    document.getElementById("info-name").textContent = props.name || "未命名道路 Unnamed road";
    document.getElementById("info-name-en").textContent = props.name_en || props.segment_id;
    const level = props.level || 0;
    const badge = el("span", `level-badge l${level}`,
      `${props.level_name || LEVEL_NAMES[0]} ${props.level_name_en || LEVEL_NAMES_EN[0]}`);
    const rows = [
      ["路况 Level", badge],
      ["车速 Speed", props.speed_kmh != null ? `${props.speed_kmh} km/h` : "—"],
      ["自由流 Free flow", props.free_flow_kmh != null ? `${Math.round(props.free_flow_kmh)} km/h` : "—"],
      ["观测时间 Observed", `${fmtTime(props.observed_at)}${fmtAge(props.observed_at)}`],
      ["样本数 Samples", String(props.sample_count ?? 0)],
      ["来源 Source", SOURCE_NAMES[props.source] || props.source],
      ["道路等级 Class", props.road_class],
    ];
    if (props.tpi != null) rows.splice(2, 0, ["指数 TPI", String(props.tpi)]);
    if (props.lanes != null) rows.push(["车道 Lanes", String(props.lanes)]);
    if (props.speed_limit_kmh != null) rows.push(["限速 Limit", `${props.speed_limit_kmh} km/h`]);
    if (props.bridge) rows.push(["桥梁 Bridge", "是 yes"]);
    if (props.tunnel) rows.push(["隧道 Tunnel", "是 yes"]);
    rows.push(["路段 Segment", props.segment_id]);
    const dl = document.getElementById("info-fields");
    dl.replaceChildren(...rows.flatMap(([k, v]) => {
      const dd = el("dd");
      if (typeof v === "string") dd.textContent = v; else dd.appendChild(v);
      return [el("dt", "", k), dd];
    }));
  }

  // ---- interaction -------------------------------------------------------------------------

  function bindInput() {
    let drag = null;
    canvas.addEventListener("pointerdown", (e) => {
      canvas.setPointerCapture(e.pointerId);
      drag = { x: e.offsetX, y: e.offsetY, cx: state.view.cx, cy: state.view.cy, moved: false };
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.offsetX - drag.x;
      const dy = e.offsetY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      drag.moved = true;
      canvas.classList.add("dragging");
      state.view.cx = drag.cx - dx / state.view.scale;
      state.view.cy = drag.cy + dy / state.view.scale;
      viewChanged();
    });
    const end = (e) => {
      if (!drag) return;
      const wasClick = !drag.moved;
      drag = null;
      canvas.classList.remove("dragging");
      if (wasClick && e.type === "pointerup") {
        const road = roadAt(e.offsetX, e.offsetY);
        selectRoad(road ? road.id : null);
      }
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      zoomAt(Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)), e.offsetX, e.offsetY);
    }, { passive: false });
    canvas.addEventListener("keydown", (e) => {
      const step = 60 / state.view.scale;
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step],
        ArrowDown: [0, -step] };
      if (moves[e.key]) {
        state.view.cx += moves[e.key][0];
        state.view.cy += moves[e.key][1];
        viewChanged();
      } else if (e.key === "+" || e.key === "=") {
        zoomAt(1.5, state.width / 2, state.height / 2);
      } else if (e.key === "-") {
        zoomAt(1 / 1.5, state.width / 2, state.height / 2);
      } else {
        return;
      }
      e.preventDefault();
    });
    document.getElementById("zoom-in").addEventListener("click",
      () => zoomAt(1.5, state.width / 2, state.height / 2));
    document.getElementById("zoom-out").addEventListener("click",
      () => zoomAt(1 / 1.5, state.width / 2, state.height / 2));
    document.getElementById("zoom-fit").addEventListener("click", () => {
      fitRegion();
      viewChanged();
    });
    document.getElementById("info-close").addEventListener("click", () => selectRoad(null));
    window.addEventListener("resize", () => { resize(); viewChanged(); });
  }

  async function main() {
    bindInput();
    await loadRegion();
    await loadLevels();
    resize();
    fitRegion();
    await Promise.all([loadRoads(), loadWarnings()]);
    setInterval(() => {
      // A hidden tab need not poll; it catches up when shown again.
      if (document.hidden) return;
      loadRoads();
      loadWarnings();
    }, POLL_MS);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) { loadRoads(); loadWarnings(); }
    });
  }

  main();
})();
