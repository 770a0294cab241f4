// The page's words in Chinese (first) and English, and the formatting of times and distances.
// Loaded before app.js; exposes window.TTI_I18N. Names of roads, stops and places come from the
// server (name / name_en); level names from /api/v1/levels.
"use strict";

(() => {
  const WORDS = {
    title: ["实时交通", "Live traffic"],
    search: ["搜索", "Search"],
    search_placeholder: ["搜索道路、站点、地点", "Search roads, stops, places"],
    search_hint: ["输入道路、公交站或地点名称", "Type a road, bus stop or place"],
    no_results: ["没有找到", "Nothing found"],
    results: ["搜索结果", "Results"],
    map_label: ["交通地图", "Traffic map"],
    legend: ["图例", "Legend"],
    panel: ["信息", "Information"],
    collapse: ["收起/展开", "Collapse/expand"],
    no_data: ["无数据", "no data"],
    bridge: ["桥梁", "bridge"],
    tunnel: ["隧道", "tunnel"],
    warning: ["预警", "warning"],
    warnings: ["预警", "Warnings"],
    incident: ["事件", "Incident"],
    bus_stop: ["公交站", "bus stop"],
    bus: ["公交车", "bus"],
    parking: ["停车场", "car park"],
    parking_near: ["附近停车", "Parking"],
    no_warnings: ["暂无预警", "No active warnings"],
    directions: ["路线", "Route"],
    from: ["起点", "From"],
    to: ["终点", "To"],
    go: ["查询路线", "Find route"],
    place_or_point: ["地名或 经度,纬度", "Place or lon,lat"],
    from_here: ["从这里出发", "From here"],
    to_here: ["到这里去", "To here"],
    my_location: ["我的位置", "My location"],
    locating: ["正在定位…", "Locating…"],
    location_failed: ["无法获取位置", "Location unavailable"],
    loading: ["正在加载…", "Loading…"],
    road: ["道路", "Road"],
    stop: ["站点", "Stop"],
    place: ["地点", "Place"],
    level: ["路况", "Traffic"],
    speed: ["车速", "Speed"],
    observed: ["更新于", "Updated"],
    source: ["来源", "Source"],
    arrivals: ["到站", "Arrivals"],
    no_arrivals: ["暂无到站信息", "No arrivals soon"],
    live: ["实时", "live"],
    schedule: ["时刻表", "timetable"],
    timetable_unavailable: ["时刻表暂不可用", "Timetable unavailable"],
    minutes: ["分钟", "min"],
    arriving: ["即将到站", "arriving"],
    free_spaces: ["空位", "free"],
    capacity: ["车位", "spaces"],
    no_figure: ["暂无空位数据", "no live figure"],
    no_parking: ["附近没有停车场", "No car park nearby"],
    travel_time: ["预计用时", "Travel time"],
    length: ["距离", "Distance"],
    fastest: ["最快", "fastest"],
    alternative: ["备选", "alternative"],
    route_warnings: ["途经预警", "warnings on the way"],
    no_route: ["没有找到路线", "No route found"],
    unknown_place: ["找不到地点", "Unknown place"],
    index: ["交通指数", "Traffic index"],
    stale: ["实时数据已过时，最新数据来自", "Real-time data is stale; newest from"],
    connection_lost: ["实时连接中断，正在重连…", "Live connection lost, reconnecting…"],
    server_down: ["无法连接服务器，显示的是", "Cannot reach the server; showing data from"],
    ago: ["前", "ago"],
    times_note: ["时间为北京时间 (UTC+8)", "Times in Beijing time (UTC+8)"],
    osm_credit: ["地图数据 © OpenStreetMap 贡献者", "Map data © OpenStreetMap contributors"],
    occupancy: ["拥挤度", "Occupancy"],
    lanes: ["车道", "lanes"],
    probe: ["浮动车", "probe vehicles"],
    detector: ["检测器", "detectors"],
    profile: ["历史规律", "historical profile"],
    none: ["无数据", "no data"],
  };
  const OCCUPANCY = {
    EMPTY: ["空", "empty"], MANY_SEATS_AVAILABLE: ["座位充足", "many seats"],
    FEW_SEATS_AVAILABLE: ["座位不多", "few seats"], STANDING_ROOM_ONLY: ["仅剩站位", "standing"],
    CRUSHED_STANDING_ROOM_ONLY: ["拥挤", "crowded"], FULL: ["已满", "full"],
    NOT_ACCEPTING_PASSENGERS: ["不载客", "not boarding"],
  };

  let lang = "zh";
  try {
    if (window.localStorage.getItem("tti-lang") === "en") lang = "en";
  } catch (_) { /* storage may be off: Chinese */ }

  function t(key) {
    const pair = WORDS[key];
    if (!pair) return key;
    return lang === "en" ? pair[1] : pair[0];
  }

  function name(obj) {
    if (!obj) return "";
    if (lang === "en") return obj.name_en || obj.name || "";
    return obj.name || obj.name_en || "";
  }

  function levelName(props) {
    if (!props || props.level == null) return t("no_data");
    return (lang === "en" ? props.level_name_en : props.level_name) || String(props.level);
  }

  function occupancy(occ) {
    if (!occ || !occ.status) return "";
    const pair = OCCUPANCY[occ.status];
    const label = pair ? pair[lang === "en" ? 1 : 0] : occ.status;
    return occ.percentage == null ? label : `${label} ${Math.round(occ.percentage)}%`;
  }

  const beijing = new Intl.DateTimeFormat("zh-CN", {
    timeZone: "Asia/Shanghai", month: "2-digit", day: "2-digit", hour: "2-digit",
    minute: "2-digit", hour12: false,
  });

  function time(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : beijing.format(d);
  }

  function age(seconds) {
    if (seconds == null || !Number.isFinite(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    const en = lang === "en";
    if (s < 60) return en ? `${s} s ago` : `${s} 秒前`;
    if (s < 3600) return en ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 60)} 分钟前`;
    return en ? `${Math.round(s / 3600)} h ago` : `${Math.round(s / 3600)} 小时前`;
  }

  function km(m) {
    if (m == null) return "—";
    return m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(1)} km`;
  }

  function apply(root) {
    document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
    for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    }
    for (const el of root.querySelectorAll("[data-i18n-label]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nLabel));
    }
  }

  function setLang(value) {
    lang = value === "en" ? "en" : "zh";
    try { window.localStorage.setItem("tti-lang", lang); } catch (_) { /* ignore */ }
  }

  window.TTI_I18N = {
    t, name, levelName, occupancy, time, age, km, apply, setLang,
    get lang() { return lang; },
  };
})();
