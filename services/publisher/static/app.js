// TTI citizen map: Leaflet (vendored) over a base map drawn from the geodatabase itself, with
// roads coloured by level, bridges and tunnels, warnings and incidents, bus stops with live
// arrivals, live buses, car parks, search, "my location", directions and the traffic index.
// Talks only to this server (/api/v1/...): no tiles, fonts or scripts from anywhere else.
"use strict";

(() => {
  const I = window.TTI_I18N;
  const t = I.t;
  const POLL_MS = 15000;
  const STALE_S = 300;          // newest live road value older than this: the data is stale
  const ROADS_MIN_ZOOM = 12;    // below it only congested roads (min_level=3) are asked for
  const STOPS_MIN_ZOOM = 14;
  const LEVEL_COLORS = ["#a3a8ae", "#2e9e44", "#9ccc3c", "#f2b600", "#ee6a1f", "#a50f15"];
  const CLASS_WEIGHT = {
    motorway: 6, trunk: 5.5, primary: 5, secondary: 4.5, tertiary: 4, motorway_link: 3.5,
    trunk_link: 3.5, primary_link: 3, secondary_link: 3, residential: 3, unclassified: 3,
  };
  const BASE_FILL = {
    water: "#a9d3e9", green: "#cfe8b8", forest: "#b5d69c", residential: "#ece8e2",
    commercial: "#f3e1dc", retail: "#f3e1dc", industrial: "#e5dfe9",
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  };

  const state = {
    region: null,
    levels: [],
    roads: new Map(),          // segment_id -> {props, line, casing}
    warnings: [],
    incidents: [],
    index: null,
    lastContact: null,         // service time of the last successful answer
    newestObserved: null,      // newest live observed_at of a road in view
    serverNow: null,
    streamUp: false,
    serverUp: true,
    basemapKey: "",
    roadsKey: "",
    routeEnds: { from: null, to: null },
    me: null,
  };

  // ---- fetching ------------------------------------------------------------------------------

  async function api(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v != null && v !== "") url.searchParams.set(k, v);
    }
    let resp;
    try {
      resp = await fetch(url.pathname + url.search, { headers: { Accept: "application/json" } });
    } catch (err) {
      serverState(false);
      throw err;
    }
    const body = await resp.json().catch(() => ({}));
    serverState(true, body.generated_at);
    if (!resp.ok) {
      const e = new Error((body.error && body.error.message) || resp.statusText);
      e.code = body.error && body.error.code;
      e.status = resp.status;
      throw e;
    }
    return body;
  }

  function serverState(up, generatedAt) {
    state.serverUp = up;
    if (up && generatedAt) {
      state.serverNow = new Date(generatedAt);
      state.lastContact = generatedAt;
    }
    updateBanner();
  }

  const bboxOf = (bounds) => [bounds.getWest(), bounds.getSouth(), bounds.getEast(),
    bounds.getNorth()].map((v) => v.toFixed(5)).join(",");

  // ---- the map -------------------------------------------------------------------------------

  const map = L.map("map", { minZoom: 3, maxZoom: 19, zoomSnap: 1, worldCopyJump: false });
  map.attributionControl.setPrefix(false);
  map.attributionControl.addAttribution(t("osm_credit"));
  map.createPane("basemap").style.zIndex = 250;
  map.createPane("labels").style.zIndex = 390;
  map.getPane("labels").style.pointerEvents = "none";
  const baseRenderer = L.canvas({ pane: "basemap", padding: 0.2 });
  const roadRenderer = L.canvas({ padding: 0.3, tolerance: 6 });
  const layers = {
    base: L.layerGroup().addTo(map), labels: L.layerGroup().addTo(map),
    roads: L.layerGroup().addTo(map), route: L.layerGroup().addTo(map),
    warnings: L.layerGroup().addTo(map), stops: L.layerGroup().addTo(map),
    parking: L.layerGroup().addTo(map), buses: L.layerGroup().addTo(map),
    me: L.layerGroup().addTo(map),
  };

  // Web Mercator tiles: the base map is asked for the box of whole tiles in view, so panning
  // inside them asks the same box (cached by the publisher) again.
  function tileBox(bounds, z) {
    const n = 2 ** z;
    const tx = (lon) => ((lon + 180) / 360) * n;
    const ty = (lat) => {
      const r = (Math.max(-85, Math.min(85, lat)) * Math.PI) / 180;
      return ((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n;
    };
    const lon = (x) => (x / n) * 360 - 180;
    const lat = (y) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI;
    const x0 = Math.floor(tx(bounds.getWest())), x1 = Math.ceil(tx(bounds.getEast()));
    const y0 = Math.floor(ty(bounds.getNorth())), y1 = Math.ceil(ty(bounds.getSouth()));
    return [lon(x0), lat(y1), lon(x1), lat(y0)];
  }

  function clipToRegion(box) {
    const rb = state.region && state.region.bbox;
    if (!rb) return box;
    const pad = 0.05;
    const out = [Math.max(box[0], rb[0] - pad), Math.max(box[1], rb[1] - pad),
      Math.min(box[2], rb[2] + pad), Math.min(box[3], rb[3] + pad)];
    return out[0] < out[2] && out[1] < out[3] ? out : null;
  }

  function baseStyle(feature) {
    const p = feature.properties;
    const fill = BASE_FILL[p.class] || BASE_FILL[p.layer] || "#e8e8e0";
    if (feature.geometry.type.endsWith("LineString")) {
      return { renderer: baseRenderer, color: BASE_FILL.water, weight: 3, interactive: false };
    }
    return { renderer: baseRenderer, stroke: p.layer === "water", color: "#8fc3de", weight: 1,
      fillColor: fill, fillOpacity: 1, interactive: false };
  }

  async function loadBasemap() {
    const z = Math.max(0, Math.min(18, Math.round(map.getZoom())));
    const box = clipToRegion(tileBox(map.getBounds(), z));
    if (!box) return;
    const bbox = box.map((v) => v.toFixed(5)).join(",");
    const key = `${bbox}/${z}`;
    if (key === state.basemapKey) return;
    state.basemapKey = key;
    let data;
    try {
      data = await api("/api/v1/basemap", { bbox, zoom: z });
    } catch (_) {
      state.basemapKey = "";
      return;
    }
    if (key !== state.basemapKey) return;  // the view moved on meanwhile
    layers.base.clearLayers();
    layers.labels.clearLayers();
    const shapes = { type: "FeatureCollection", features: [] };
    // Land use under green under water, as on any map.
    const order = { landuse: 0, green: 1, water: 2 };
    for (const f of data.features) {
      if (f.properties.layer === "place") {
        const [lon, lat] = f.geometry.coordinates;
        L.marker([lat, lon], {
          pane: "labels", interactive: false, keyboard: false,
          icon: L.divIcon({ className: `place-label rank-${f.properties.rank}`,
            html: escapeHtml(I.name(f.properties)), iconSize: null }),
        }).addTo(layers.labels);
      } else {
        shapes.features.push(f);
      }
    }
    shapes.features.sort((a, b) => order[a.properties.layer] - order[b.properties.layer]);
    L.geoJSON(shapes, { style: baseStyle }).addTo(layers.base);
    $("map").dataset.basemapFeatures = String(data.count);
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
      '"': "&quot;", "'": "&#39;" })[c]);
  }

  // ---- roads ---------------------------------------------------------------------------------

  function roadStyle(p) {
    const color = LEVEL_COLORS[p.level || 0];
    const weight = CLASS_WEIGHT[p.road_class] || 2.5;
    return { renderer: roadRenderer, color, weight, opacity: p.tunnel ? 0.55 : 0.95,
      dashArray: p.tunnel ? "6 5" : null, lineCap: "butt" };
  }

  function roadPopup(p) {
    const box = el("div", "popup road-popup");
    const title = el("h3", null, I.name(p) || t("road"));
    if (p.bridge) title.append(" ", el("span", "tag bridge", t("bridge")));
    if (p.tunnel) title.append(" ", el("span", "tag tunnel", t("tunnel")));
    box.append(title);
    const dl = el("dl");
    const badge = el("span", `level-badge l${p.level || 0}`, I.levelName(p));
    addRow(dl, t("level"), badge);
    if (p.speed_kmh != null) addRow(dl, t("speed"), `${Math.round(p.speed_kmh)} km/h`);
    addRow(dl, t("source"), t(p.source || "none"));
    if (p.observed_at) addRow(dl, t("observed"), I.time(p.observed_at));
    box.append(dl);
    return box;
  }

  function addRow(dl, label, value) {
    dl.append(el("dt", null, label));
    const dd = el("dd");
    dd.append(value instanceof Node ? value : document.createTextNode(String(value)));
    dl.append(dd);
  }

  function drawRoad(f) {
    const p = f.properties;
    const latlngs = f.geometry.coordinates.map(([lon, lat]) => [lat, lon]);
    const old = state.roads.get(p.segment_id);
    if (old) {
      old.props = p;
      old.line.setStyle(roadStyle(p));
      return old;
    }
    const entry = { props: p, casing: null, line: null };
    if (p.bridge) {
      entry.casing = L.polyline(latlngs, { renderer: roadRenderer, color: "#3b3b3b",
        weight: (CLASS_WEIGHT[p.road_class] || 2.5) + 4, opacity: 0.9, interactive: false,
        lineCap: "butt" }).addTo(layers.roads);
    }
    entry.line = L.polyline(latlngs, roadStyle(p)).addTo(layers.roads);
    entry.line.on("click", (ev) => {
      L.popup().setLatLng(ev.latlng).setContent(roadPopup(entry.props)).openOn(map);
    });
    state.roads.set(p.segment_id, entry);
    return entry;
  }

  function trackObserved(p) {
    if (p.observed_at && (p.source === "probe" || p.source === "detector"
        || p.source === "probe+detector")) {
      const at = new Date(p.observed_at);
      if (!state.newestObserved || at > state.newestObserved) state.newestObserved = at;
    }
  }

  async function loadRoads(force) {
    const z = map.getZoom();
    const bbox = bboxOf(map.getBounds().pad(0.2));
    const params = { bbox };
    if (z < ROADS_MIN_ZOOM) params.min_level = 3;
    const key = `${bbox}/${params.min_level || 0}`;
    if (!force && key === state.roadsKey) return;
    state.roadsKey = key;
    const data = await api("/api/v1/roads", params);
    const seen = new Set();
    state.newestObserved = null;
    for (const f of data.features) {
      seen.add(f.properties.segment_id);
      drawRoad(f);
      trackObserved(f.properties);
    }
    for (const [id, entry] of state.roads) {
      if (!seen.has(id)) {
        layers.roads.removeLayer(entry.line);
        if (entry.casing) layers.roads.removeLayer(entry.casing);
        state.roads.delete(id);
      }
    }
    updateBanner();
  }

  // ---- legend, index, banner -----------------------------------------------------------------

  function renderLegend() {
    const ul = $("legend-levels");
    ul.replaceChildren();
    for (const lv of state.levels) {
      const li = el("li");
      li.append(el("i", `swatch l${lv.level}`),
        el("span", null, I.lang === "en" ? lv.name_en : lv.name));
      ul.append(li);
    }
  }

  function setLegend(open) {
    $("legend-body").hidden = !open;
    $("legend-toggle").setAttribute("aria-expanded", String(open));
  }

  function renderIndex() {
    const chip = $("index-chip");
    const net = state.index && state.index.network;
    if (!net || net.tpi == null) {
      chip.hidden = true;
      return;
    }
    chip.hidden = false;
    chip.className = `index-chip l${net.level || 0}`;
    chip.textContent = `${t("index")} ${net.tpi.toFixed(1)} · ${I.levelName(net)}`;
  }

  function updateBanner() {
    const banner = $("banner");
    let text = "";
    if (!state.serverUp) {
      text = `${t("server_down")} ${I.time(state.lastContact)}`;
    } else if (!state.streamUp && state.streamTried) {
      text = t("connection_lost");
    } else if (state.newestObserved && state.serverNow) {
      const ageS = (state.serverNow - state.newestObserved) / 1000;
      if (ageS > STALE_S) text = `${t("stale")} ${I.time(state.newestObserved.toISOString())}`
        + `（${I.age(ageS)}）`;
    }
    banner.hidden = !text;
    banner.textContent = text;
  }

  // ---- warnings and incidents ----------------------------------------------------------------

  function warningIcon(cls, text) {
    return L.divIcon({ className: `map-mark ${cls}`, html: text, iconSize: [22, 22] });
  }

  // A warning carries its level's number; the names are those of /api/v1/levels.
  function levelLabel(level) {
    const lv = state.levels.find((l) => l.level === level);
    return lv ? I.levelName({ level, level_name: lv.name, level_name_en: lv.name_en })
      : String(level);
  }

  function renderWarnings() {
    layers.warnings.clearLayers();
    const list = $("warnings");
    list.replaceChildren();
    $("warning-count").textContent = String(state.warnings.length);
    $("no-warnings").hidden = state.warnings.length > 0 || state.incidents.length > 0;
    for (const w of state.warnings) {
      const li = el("li", `sev-${(w.severity || "").toLowerCase()}`);
      li.tabIndex = 0;
      li.append(el("div", "headline", w.headline || w.kind));
      const meta = [I.time(w.started_at)];
      if (w.level) meta.push(levelLabel(w.level));
      li.append(el("div", "meta", meta.join(" · ")));
      if (w.lon != null && w.lat != null) {
        const m = L.marker([w.lat, w.lon], { icon: warningIcon("warn", "!") })
          .bindPopup(() => warningPopup(w)).addTo(layers.warnings);
        li.addEventListener("click", () => { map.setView([w.lat, w.lon], 16); m.openPopup(); });
      }
      list.append(li);
    }
    const incidents = $("incidents");
    incidents.replaceChildren();
    for (const inc of state.incidents) {
      if (inc.warning_id) continue;  // shown with its warning
      const li = el("li", "incident");
      li.append(el("div", "headline", `${t("incident")}: ${inc.description || inc.kind}`),
        el("div", "meta", I.time(inc.detected_at)));
      if (inc.lon != null && inc.lat != null) {
        L.marker([inc.lat, inc.lon], { icon: warningIcon("incident", "⚠") })
          .bindPopup(inc.description || inc.kind).addTo(layers.warnings);
      }
      incidents.append(li);
    }
  }

  function warningPopup(w) {
    const box = el("div", "popup");
    box.append(el("h3", null, w.headline || w.kind));
    if (w.description) box.append(el("p", null, w.description));
    box.append(el("p", "muted", I.time(w.started_at)));
    return box;
  }

  async function loadWarnings() {
    const [w, inc] = await Promise.all([api("/api/v1/warnings"), api("/api/v1/incidents")]);
    state.warnings = w.warnings || [];
    state.incidents = inc.incidents || [];
    renderWarnings();
  }

  // ---- stops and arrivals --------------------------------------------------------------------

  function radiusOfView() {
    const b = map.getBounds();
    return Math.min(5000, Math.round(b.getNorthEast().distanceTo(b.getSouthWest()) / 2));
  }

  async function loadStops() {
    layers.stops.clearLayers();
    if (map.getZoom() < STOPS_MIN_ZOOM) return;
    const c = map.getCenter();
    const data = await api("/api/v1/stops", { near: `${c.lng.toFixed(6)},${c.lat.toFixed(6)}`,
      radius_m: Math.max(1, radiusOfView()), limit: 100 });
    for (const s of data.stops) stopMarker(s).addTo(layers.stops);
  }

  function stopMarker(s) {
    const m = L.circleMarker([s.lat, s.lon], { radius: 6, color: "#1f4fb8", weight: 2,
      fillColor: "#ffffff", fillOpacity: 1, className: "stop-marker" });
    m.bindPopup(() => {
      const box = el("div", "popup stop-popup");
      box.append(el("h3", null, I.name(s)), el("p", "muted", t("loading")));
      showArrivals(s, box);
      return box;
    }, { minWidth: 220 });
    return m;
  }

  async function showArrivals(stop, box) {
    let data;
    try {
      data = await api(`/api/v1/stops/${encodeURIComponent(stop.stop_id)}/arrivals`);
    } catch (err) {
      box.lastChild.textContent = err.message;
      return;
    }
    const list = el("ul", "arrivals");
    for (const a of data.arrivals.slice(0, 8)) {
      const li = el("li", a.source === "live" ? "live" : "schedule");
      li.append(el("b", "route", a.route_short_name || a.route_id));
      if (a.headsign) li.append(el("span", "headsign", `→ ${a.headsign}`));
      const when = a.minutes <= 0 ? t("arriving") : `${a.minutes} ${t("minutes")}`;
      li.append(el("span", "minutes", when),
        el("small", "src", a.source === "live" ? t("live") : t("schedule")));
      const occ = I.occupancy(a.occupancy);
      if (occ) li.append(el("small", "occ", occ));
      list.append(li);
    }
    box.lastChild.remove();
    box.append(list);
    if (!data.arrivals.length) box.append(el("p", "muted", t("no_arrivals")));
    if (data.timetable === "unavailable") box.append(el("p", "muted", t("timetable_unavailable")));
  }

  // ---- buses ---------------------------------------------------------------------------------

  const buses = new Map();  // public label -> marker

  function busIcon(v) {
    return L.divIcon({ className: "map-mark bus", html: escapeHtml(v.route_short_name || "B"),
      iconSize: [26, 18] });
  }

  function busPopup(v) {
    const box = el("div", "popup");
    box.append(el("h3", null, `${t("bus")} ${v.label}`));
    const dl = el("dl");
    if (v.speed_kmh != null) addRow(dl, t("speed"), `${Math.round(v.speed_kmh)} km/h`);
    const occ = I.occupancy(v.occupancy);
    if (occ) addRow(dl, t("occupancy"), occ);
    if (v.stop_name) addRow(dl, t("stop"), v.stop_name);
    addRow(dl, t("observed"), I.time(v.observed_at));
    box.append(dl);
    return box;
  }

  function placeBus(v) {
    let m = buses.get(v.vehicle);
    if (!m) {
      m = L.marker([v.lat, v.lon], { icon: busIcon(v), keyboard: false }).addTo(layers.buses);
      buses.set(v.vehicle, m);
    } else {
      m.setLatLng([v.lat, v.lon]);
    }
    m.bindPopup(() => busPopup(v));
  }

  async function loadBuses() {
    const data = await api("/api/v1/vehicles", { bbox: bboxOf(map.getBounds().pad(0.3)) });
    const seen = new Set();
    for (const v of data.vehicles) {
      seen.add(v.vehicle);
      placeBus(v);
    }
    for (const [id, m] of buses) {
      if (!seen.has(id)) {
        layers.buses.removeLayer(m);
        buses.delete(id);
      }
    }
  }

  // ---- parking -------------------------------------------------------------------------------

  function parkingText(p) {
    if (p.free_spaces == null) return t("no_figure");
    const cap = p.capacity == null ? "" : ` / ${p.capacity}`;
    return `${t("free_spaces")} ${p.free_spaces}${cap}`;
  }

  async function loadParking() {
    const c = state.me || map.getCenter();
    const data = await api("/api/v1/parking", {
      near: `${c.lng.toFixed(6)},${c.lat.toFixed(6)}`, radius_m: 5000, limit: 50 });
    layers.parking.clearLayers();
    const list = $("parking");
    list.replaceChildren();
    $("parking-status").textContent = data.parking.length ? "" : t("no_parking");
    for (const p of data.parking) {
      const cls = p.free_spaces == null ? "unknown" : p.free_spaces === 0 ? "full" : "free";
      const m = L.marker([p.lat, p.lon], { icon: L.divIcon({ className: `map-mark park ${cls}`,
        html: "P", iconSize: [22, 22] }) }).addTo(layers.parking);
      const text = () => {
        const box = el("div", "popup");
        box.append(el("h3", null, I.name(p)), el("p", null, parkingText(p)));
        if (p.age_s != null) box.append(el("p", "muted", I.age(p.age_s)));
        return box;
      };
      m.bindPopup(text);
      const li = el("li", `parking-item ${cls}`);
      li.tabIndex = 0;
      li.append(el("div", "headline", I.name(p)),
        el("div", "meta", `${parkingText(p)} · ${I.km(p.distance_m)}`
          + (p.age_s != null ? ` · ${I.age(p.age_s)}` : "")));
      li.addEventListener("click", () => { map.setView([p.lat, p.lon], 17); m.openPopup(); });
      list.append(li);
    }
  }

  // ---- search --------------------------------------------------------------------------------

  function groupRoads(features) {
    const groups = new Map();
    for (const f of features) {
      const p = f.properties;
      const key = p.name || p.name_en || p.segment_id;
      const g = groups.get(key) || { props: p, features: [], level: 0 };
      g.features.push(f);
      if ((p.level || 0) > g.level) { g.level = p.level; g.props = p; }
      groups.set(key, g);
    }
    return [...groups.values()].sort((a, b) => b.level - a.level);
  }

  async function search(q) {
    showTab("results");
    const list = $("results");
    list.replaceChildren();
    $("results-empty").textContent = t("loading");
    $("results-empty").hidden = false;
    const [roads, stops, places] = await Promise.all([
      api("/api/v1/roads", { q }).catch(() => ({ features: [] })),
      api("/api/v1/stops", { q, limit: 10 }).catch(() => ({ stops: [] })),
      api("/api/v1/places", { q, limit: 10 }).catch(() => ({ places: [] })),
    ]);
    for (const g of groupRoads(roads.features).slice(0, 10)) {
      const li = resultItem(t("road"), I.name(g.props), g.props.bridge ? t("bridge")
        : g.props.tunnel ? t("tunnel") : "", g.props);
      li.addEventListener("click", () => showRoadGroup(g));
      list.append(li);
    }
    for (const s of stops.stops) {
      const li = resultItem(t("stop"), I.name(s), s.code || "");
      li.addEventListener("click", () => {
        map.setView([s.lat, s.lon], 17);
        stopMarker(s).addTo(layers.stops).openPopup();
      });
      list.append(li);
    }
    for (const p of places.places) {
      const li = resultItem(t("place"), I.name(p), p.kind);
      li.addEventListener("click", () => {
        map.setView([p.lat, p.lon], 17);
        L.popup().setLatLng([p.lat, p.lon]).setContent(el("b", null, I.name(p))).openOn(map);
      });
      list.append(li);
    }
    const empty = !list.children.length;
    $("results-empty").textContent = empty ? t("no_results") : "";
    $("results-empty").hidden = !empty;
  }

  function resultItem(kind, title, extra, roadProps) {
    const li = el("li", "result");
    li.tabIndex = 0;
    const head = el("div", "headline");
    head.append(el("span", "kind", kind), document.createTextNode(` ${title}`));
    li.append(head);
    const meta = el("div", "meta");
    if (roadProps) meta.append(el("span", `level-badge l${roadProps.level || 0}`,
      I.levelName(roadProps)), document.createTextNode(" "));
    if (extra) meta.append(document.createTextNode(extra));
    li.append(meta);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") li.click(); });
    return li;
  }

  function showRoadGroup(g) {
    const bounds = L.latLngBounds([]);
    for (const f of g.features) {
      for (const [lon, lat] of f.geometry.coordinates) bounds.extend([lat, lon]);
    }
    map.fitBounds(bounds, { maxZoom: 17, padding: [30, 30] });
    for (const f of g.features) drawRoad(f);
    L.popup().setLatLng(bounds.getCenter()).setContent(roadPopup(g.props)).openOn(map);
  }

  // ---- directions ----------------------------------------------------------------------------

  async function resolvePlace(text) {
    const raw = text.trim();
    const m = raw.match(/^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*$/);
    if (m) return { lon: Number(m[1]), lat: Number(m[2]), label: raw };
    if (raw === t("my_location") && state.me) {
      return { lon: state.me.lng, lat: state.me.lat, label: raw };
    }
    const stops = await api("/api/v1/stops", { q: raw, limit: 1 }).catch(() => ({ stops: [] }));
    if (stops.stops.length) return { ...stops.stops[0], label: I.name(stops.stops[0]) };
    const places = await api("/api/v1/places", { q: raw, limit: 1 })
      .catch(() => ({ places: [] }));
    if (places.places.length) return { ...places.places[0], label: I.name(places.places[0]) };
    const roads = await api("/api/v1/roads", { q: raw }).catch(() => ({ features: [] }));
    if (roads.features.length) {
      const c = roads.features[0].geometry.coordinates;
      const [lon, lat] = c[Math.floor(c.length / 2)];
      return { lon, lat, label: raw };
    }
    return null;
  }

  async function findRoute() {
    const status = $("route-status");
    const list = $("routes");
    list.replaceChildren();
    layers.route.clearLayers();
    status.textContent = t("loading");
    const [a, b] = await Promise.all([resolvePlace($("route-from").value),
      resolvePlace($("route-to").value)]);
    if (!a || !b) {
      status.textContent = `${t("unknown_place")}: ${!a ? $("route-from").value
        : $("route-to").value}`;
      return;
    }
    let data;
    try {
      data = await api("/api/v1/directions", { from: `${a.lon},${a.lat}`,
        to: `${b.lon},${b.lat}`, alternatives: 2 });
    } catch (err) {
      status.textContent = err.code === "no_route" ? t("no_route") : err.message;
      return;
    }
    status.textContent = `${a.label} → ${b.label}`;
    const bounds = L.latLngBounds([]);
    data.routes.forEach((r, i) => {
      const latlngs = r.geometry.coordinates.map(([lon, lat]) => [lat, lon]);
      latlngs.forEach((p) => bounds.extend(p));
      L.polyline(latlngs, { color: i === 0 ? "#1f6feb" : "#7d8fb3", weight: i === 0 ? 7 : 5,
        opacity: i === 0 ? 0.75 : 0.55, interactive: false }).addTo(layers.route);
      const li = el("li", i === 0 ? "route fastest" : "route");
      const minutes = r.travel_time_min != null ? r.travel_time_min
        : Math.round(r.travel_time_s / 60);
      li.append(el("div", "headline", `${t("travel_time")} ${minutes} ${t("minutes")}`),
        el("div", "meta", `${t("length")} ${I.km(r.length_m)} · `
          + (i === 0 ? t("fastest") : t("alternative"))));
      if (r.warning_ids && r.warning_ids.length) {
        li.append(el("div", "meta warn-text", `${t("route_warnings")}: ${r.warning_ids.length}`));
      }
      list.append(li);
    });
    if (bounds.isValid()) map.fitBounds(bounds, { padding: [30, 30] });
  }

  function setRouteEnd(which, latlng) {
    $(which === "from" ? "route-from" : "route-to").value =
      `${latlng.lng.toFixed(6)},${latlng.lat.toFixed(6)}`;
    map.closePopup();
    showTab("route");
    if ($("route-from").value && $("route-to").value) findRoute();
  }

  map.on("contextmenu", (ev) => {
    const box = el("div", "popup route-here");
    const from = el("button", null, t("from_here"));
    const to = el("button", null, t("to_here"));
    from.type = "button";
    to.type = "button";
    from.addEventListener("click", () => setRouteEnd("from", ev.latlng));
    to.addEventListener("click", () => setRouteEnd("to", ev.latlng));
    box.append(from, to);
    L.popup().setLatLng(ev.latlng).setContent(box).openOn(map);
  });

  // ---- my location ---------------------------------------------------------------------------

  const LocateControl = L.Control.extend({
    options: { position: "topleft" },
    onAdd() {
      const b = L.DomUtil.create("button", "locate leaflet-bar");
      b.type = "button";
      b.id = "locate";
      b.textContent = "◎";
      b.title = t("my_location");
      L.DomEvent.disableClickPropagation(b);
      b.addEventListener("click", locate);
      return b;
    },
  });
  new LocateControl().addTo(map);

  function locate() {
    if (!navigator.geolocation) return;
    $("locate").classList.add("busy");
    navigator.geolocation.getCurrentPosition((pos) => {
      $("locate").classList.remove("busy");
      const ll = L.latLng(pos.coords.latitude, pos.coords.longitude);
      state.me = ll;
      layers.me.clearLayers();
      L.circle(ll, { radius: Math.min(pos.coords.accuracy || 30, 500), color: "#1f6feb",
        weight: 1, fillOpacity: 0.15, interactive: false }).addTo(layers.me);
      L.circleMarker(ll, { radius: 7, color: "#ffffff", weight: 2, fillColor: "#1f6feb",
        fillOpacity: 1, className: "me-marker" }).bindTooltip(t("my_location"))
        .addTo(layers.me);
      map.setView(ll, Math.max(map.getZoom(), 16));
      if (!$("route-from").value) $("route-from").value = t("my_location");
      loadParking().catch(() => {});
    }, () => {
      $("locate").classList.remove("busy");
      $("route-status").textContent = t("location_failed");
    }, { enableHighAccuracy: true, timeout: 10000, maximumAge: 60000 });
  }

  // ---- live stream ---------------------------------------------------------------------------

  function follow() {
    if (!window.EventSource || !state.region || !state.region.bbox) return;
    const source = new EventSource(`/api/v1/stream?bbox=${state.region.bbox.join(",")}`);
    state.streamTried = true;
    source.addEventListener("hello", (e) => {
      state.streamUp = true;
      const hello = JSON.parse(e.data);
      if (hello.at) state.serverNow = new Date(hello.at);
      updateBanner();
    });
    source.addEventListener("road", (e) => {
      const p = JSON.parse(e.data);
      const entry = state.roads.get(p.segment_id);
      if (entry) {
        Object.assign(entry.props, p);
        entry.line.setStyle(roadStyle(entry.props));
      }
      trackObserved(p);
      updateBanner();
    });
    source.addEventListener("vehicle", (e) => placeBus(JSON.parse(e.data)));
    const reload = () => loadWarnings().catch(() => {});
    source.addEventListener("warning", reload);
    source.addEventListener("incident", reload);
    source.addEventListener("index", () => loadIndex().catch(() => {}));
    source.addEventListener("overflow", () => { source.close(); setTimeout(follow, 1000); });
    source.onerror = () => {
      state.streamUp = false;
      updateBanner();
    };
  }

  // ---- panel, tabs, language -----------------------------------------------------------------

  function showTab(name) {
    for (const tab of document.querySelectorAll("[role=tab]")) {
      const on = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", String(on));
      $(`pane-${tab.dataset.tab}`).hidden = !on;
    }
    setPanel(true);
    if (name === "parking") loadParking().catch(() => {});
  }

  function setPanel(open) {
    $("panel").classList.toggle("collapsed", !open);
    $("panel-toggle").setAttribute("aria-expanded", String(open));
    $("panel-toggle").textContent = open ? "▾" : "▴";
    setTimeout(() => map.invalidateSize(), 50);
  }

  function applyLanguage() {
    I.apply(document);
    $("lang").textContent = I.lang === "en" ? "中文" : "EN";
    $("lang").lang = I.lang === "en" ? "zh-CN" : "en";
    const region = state.region;
    const regionName = region ? (I.lang === "en" && region.name_en) || region.name : "";
    $("region-name").textContent = regionName ? `${regionName} ${t("title")}` : t("title");
    document.title = regionName ? `${regionName} · ${t("title")}` : t("title");
    renderLegend();
    renderIndex();
    renderWarnings();
    updateBanner();
  }

  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  }
  $("panel-toggle").addEventListener("click", () => {
    setPanel($("panel").classList.contains("collapsed"));
  });
  $("legend-toggle").addEventListener("click", () => setLegend($("legend-body").hidden));
  $("index-chip").addEventListener("click", () => showTab("warnings"));
  $("lang").addEventListener("click", () => {
    I.setLang(I.lang === "en" ? "zh" : "en");
    applyLanguage();
    state.basemapKey = "";
    loadBasemap();
  });
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("search-q").value.trim();
    if (q) search(q).catch(() => {});
  });
  $("route-form").addEventListener("submit", (e) => {
    e.preventDefault();
    findRoute().catch((err) => { $("route-status").textContent = err.message; });
  });

  // ---- start and refresh ---------------------------------------------------------------------

  async function loadIndex() {
    state.index = await api("/api/v1/index");
    renderIndex();
  }

  const refreshView = () => {
    loadBasemap();
    loadRoads(false).catch(() => {});
    loadStops().catch(() => {});
    loadBuses().catch(() => {});
  };

  async function poll() {
    await Promise.allSettled([loadRoads(true), loadWarnings(), loadIndex(), loadBuses()]);
  }

  async function start() {
    const wide = window.matchMedia("(min-width: 721px)").matches;
    setLegend(wide);
    setPanel(wide);
    applyLanguage();
    const [levels, region] = await Promise.all([
      api("/api/v1/levels").catch(() => ({ levels: [] })),
      api("/api/v1/region").catch(() => null)]);
    state.levels = levels.levels || [];
    state.region = region;
    applyLanguage();
    const bb = region && region.bbox;
    if (bb) {
      map.fitBounds([[bb[1], bb[0]], [bb[3], bb[2]]]);
    } else {
      map.setView([30.59, 114.30], 12);  // Wuhan, until the region is known
    }
    map.on("moveend", refreshView);
    refreshView();
    poll();
    follow();
    setInterval(poll, POLL_MS);
    setInterval(updateBanner, 30000);
  }

  start();
})();
