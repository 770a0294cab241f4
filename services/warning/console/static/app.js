// TTI duty console: the live warnings of the departments' API, on a map, with their workflow.
// Talks only to the department API beside it (relative URLs: ../v1/dept/...), so it works at
// /console/ and at /warning/console/. Map data comes from the same server; no tiles, fonts or
// scripts from elsewhere (the page's CSP forbids them, and inline scripts and styles too).
"use strict";

(() => {
  const API = "../v1/dept/";
  const LANG_KEY = "tti.console.lang";
  const MUTE_KEY = "tti.console.muted";
  const LAST_KEY = "tti.console.last_event_id";
  const RECONNECT_MS = [1000, 2000, 5000, 10000];
  const ALARM = "vehicle_alarm";
  const REPORT_ROLES = new Set(["police", "transport", "hotline", "admin"]);  // the reports desk
  const ACKABLE = new Set(["raised", "updated"]);
  const ACTIVE = new Set(["raised", "updated", "acknowledged", "assigned"]);
  const FINAL = new Set(["closed", "cancelled"]);
  const SEVERITY_RANK = { Extreme: 0, Severe: 1, Moderate: 2, Minor: 3, Unknown: 4 };
  const SEVERITY_COLORS = {
    Extreme: "#b71c1c", Severe: "#e53935", Moderate: "#ef6c00", Minor: "#f9c400",
    Unknown: "#8a94a0",
  };
  const ROAD_WEIGHT = {
    motorway: 3.5, trunk: 3, primary: 2.6, secondary: 2, tertiary: 1.6,
    motorway_link: 1.6, trunk_link: 1.6, primary_link: 1.4,
  };

  const I18N = {
    zh: {
      title: "交通预警值班台", to_reports: "市民报料与工单", conn_offline: "未连接",
      conn_connected: "已连接",
      conn_reconnecting: "重新连接中…", last_event: "事件 #", sound_on: "声音：开",
      sound_off: "声音：关", sign_out: "退出", signin_title: "值班人员登录",
      signin_hint: "请输入部门分配给您的访问令牌。", token: "访问令牌", sign_in: "登录",
      token_required: "请输入访问令牌。", session_ended: "会话已结束，请重新登录。",
      tab_warnings: "预警", tab_alarms: "车辆报警", filter_status: "状态", filter_kind: "类型",
      f_active: "进行中", f_ended: "已结束", f_all: "全部", f_all_kinds: "全部类型",
      empty: "暂无预警", pick: "在列表中选择一条预警查看详情。",
      act_ack: "确认", act_assign: "指派", act_note: "备注", act_close: "关闭", act_cancel: "撤销",
      act_text: "发短信给司机", af_assignee: "指派给（单位或人员）", af_vehicle: "车辆（终端手机号）",
      af_note: "备注", af_text: "短信内容", af_submit: "提交", af_dismiss: "取消",
      af_close: "确认关闭", af_cancel: "确认撤销", audit_title: "审计记录",
      beijing_time: "时间均为北京时间", col_time: "时间", col_user: "用户", col_role: "角色",
      col_action: "操作", col_outcome: "结果", col_details: "说明", no_audit: "暂无记录",
      f_status: "状态", f_kind: "类型", f_severity: "严重程度", f_started: "开始（北京时间）",
      f_updated: "更新（北京时间）", f_ended_at: "结束（北京时间）", f_expected: "预计结束",
      f_roads: "道路", f_segments: "路段", f_speed: "速度", f_impact: "影响",
      f_detour: "绕行", f_assigned: "指派给", f_ack_by: "确认人", f_notes: "备注",
      f_vehicle: "车辆", f_id: "编号", impact_text: (i) =>
        `公交线路 ${i.bus_routes.length ? i.bus_routes.join("、") : "无"}；抽样出行 ${i.trips_sampled} 次中 ${i.trips_affected} 次明显延误，最大延误 ${mins(i.max_delay_s)} 分钟`,
      detour_text: (d) =>
        `约 ${mins(d.travel_time_s)} 分钟（平时 ${mins(d.usual_travel_time_s)} 分钟），${km(d.length_m)} 公里`,
      segments_text: (n) => `${n} 段`,
      ok_ack: "已确认", ok_assign: "已指派", ok_note: "备注已保存", ok_close: "已关闭",
      ok_cancel: "已撤销", ok_text: "短信已提交下发（{id}）", dup_text: "同一短信已在下发中（{id}）",
      af_flags: "方式", flag_display: "终端显示", flag_tts: "语音播报", flag_emergency: "紧急",
      cmd_title: "发给司机的短信", col_text: "内容", col_by: "发送人", col_status: "状态",
      no_commands: "尚未给该车辆发过短信",
      refused: "操作被拒绝", failed: "请求失败", network_error: "无法连接服务器，请检查网络。",
      need_assignee: "请填写指派对象。", need_note: "请填写内容。", need_vehicle: "请填写车辆。",
      new_warning: "新预警", map_unavailable: "地图无法加载：", legend_queue: "排队/受影响路段",
      legend_detour: "绕行路线", legend_area: "影响范围",
      kind: { congestion: "拥堵", incident: "事件", closure: "封闭", weather: "天气",
              vehicle_alarm: "车辆报警" },
      status: { raised: "新发布", updated: "已更新", acknowledged: "已确认", assigned: "已指派",
                resolved: "已解除", closed: "已关闭", cancelled: "已撤销" },
      severity: { Extreme: "特别严重", Severe: "严重", Moderate: "较重", Minor: "一般",
                  Unknown: "未知" },
      role: { police: "交警", transport: "交通运输", safety: "安全监管", hotline: "热线",
              admin: "管理员", rule: "规则", jt808: "车载终端" },
      action: { ack: "确认", assign: "指派", note: "备注", close: "关闭", cancel: "撤销",
                raise: "发布", driver_text: "发短信给司机", terminal_position_query: "查询位置",
                terminal_alarm_confirm: "报警确认" },
      outcome: { ok: "成功", forbidden: "无权限", conflict: "状态冲突", bad_request: "参数错误",
                 csrf: "缺少校验", action_pending: "处理中", duplicate: "重复提交",
                 requested: "已请求", offline_waiting: "等待上线", sent: "已下发",
                 acknowledged: "终端已确认", failed: "失败", unsupported: "不支持",
                 expired: "已过期", empty_text: "内容为空", text_too_long: "内容过长",
                 text_not_gbk: "含终端无法显示的字符", text_control_chars: "含控制字符",
                 bad_flags: "方式无效", other_vehicle: "非该报警车辆", not_found: "不存在" },
    },
    en: {
      title: "TTI duty console", to_reports: "Reports and tickets", conn_offline: "not connected",
      conn_connected: "connected",
      conn_reconnecting: "reconnecting…", last_event: "event #", sound_on: "Sound: on",
      sound_off: "Sound: off", sign_out: "Sign out", signin_title: "Duty sign-in",
      signin_hint: "Enter the access token your department gave you.", token: "Access token",
      sign_in: "Sign in", token_required: "Enter your access token.",
      session_ended: "Your session has ended; sign in again.",
      tab_warnings: "Warnings", tab_alarms: "Vehicle alarms", filter_status: "Status",
      filter_kind: "Kind", f_active: "Active", f_ended: "Ended", f_all: "All",
      f_all_kinds: "All kinds", empty: "No warnings", pick: "Select a warning in the list.",
      act_ack: "Acknowledge", act_assign: "Assign", act_note: "Note", act_close: "Close",
      act_cancel: "Cancel warning", act_text: "Text the driver",
      af_assignee: "Assign to (unit or person)", af_vehicle: "Vehicle (terminal phone number)",
      af_note: "Note", af_text: "Message", af_submit: "Submit", af_dismiss: "Dismiss",
      af_close: "Close it", af_cancel: "Cancel it", audit_title: "Audit trail",
      beijing_time: "All times are Beijing time", col_time: "Time", col_user: "User",
      col_role: "Role", col_action: "Action", col_outcome: "Outcome", col_details: "Details",
      no_audit: "No entries yet", f_status: "Status", f_kind: "Kind", f_severity: "Severity",
      f_started: "Started (Beijing)", f_updated: "Updated (Beijing)", f_ended_at: "Ended (Beijing)",
      f_expected: "Expected end", f_roads: "Roads", f_segments: "Segments", f_speed: "Speed",
      f_impact: "Impact", f_detour: "Detour", f_assigned: "Assigned to",
      f_ack_by: "Acknowledged by", f_notes: "Notes", f_vehicle: "Vehicle", f_id: "Id",
      impact_text: (i) =>
        `bus routes ${i.bus_routes.length ? i.bus_routes.join(", ") : "none"}; ${i.trips_affected} of ${i.trips_sampled} sampled trips clearly delayed, up to ${mins(i.max_delay_s)} min`,
      detour_text: (d) =>
        `about ${mins(d.travel_time_s)} min (usually ${mins(d.usual_travel_time_s)} min), ${km(d.length_m)} km`,
      segments_text: (n) => `${n} segments`,
      ok_ack: "Acknowledged", ok_assign: "Assigned", ok_note: "Note saved", ok_close: "Closed",
      ok_cancel: "Cancelled", ok_text: "Message on its way to the terminal ({id})",
      dup_text: "The same message is on its way already ({id})",
      af_flags: "How", flag_display: "show on the display", flag_tts: "read aloud",
      flag_emergency: "emergency", cmd_title: "Texts to the driver", col_text: "Text",
      col_by: "From", col_status: "Status", no_commands: "No texts sent to this vehicle yet",
      refused: "Refused", failed: "Request failed",
      network_error: "Cannot reach the server; check the network.",
      need_assignee: "Enter whom to assign it to.", need_note: "Enter the text.",
      need_vehicle: "Enter the vehicle.",
      new_warning: "New warning", map_unavailable: "The map could not load: ",
      legend_queue: "Queue / affected roads", legend_detour: "Detour", legend_area: "Area",
      kind: { congestion: "congestion", incident: "incident", closure: "closure",
              weather: "weather", vehicle_alarm: "vehicle alarm" },
      status: { raised: "raised", updated: "updated", acknowledged: "acknowledged",
                assigned: "assigned", resolved: "resolved", closed: "closed",
                cancelled: "cancelled" },
      severity: { Extreme: "Extreme", Severe: "Severe", Moderate: "Moderate", Minor: "Minor",
                  Unknown: "Unknown" },
      role: { police: "police", transport: "transport", safety: "safety", hotline: "hotline",
              admin: "admin", rule: "rule", jt808: "terminal" },
      action: { ack: "acknowledge", assign: "assign", note: "note", close: "close",
                cancel: "cancel", raise: "raise", driver_text: "text to the driver",
                terminal_position_query: "position query",
                terminal_alarm_confirm: "alarm confirmation" },
      outcome: { ok: "ok", forbidden: "forbidden", conflict: "conflict",
                 bad_request: "bad request", csrf: "no CSRF token", action_pending: "pending",
                 duplicate: "duplicate", requested: "requested",
                 offline_waiting: "waiting for the terminal", sent: "sent",
                 acknowledged: "acknowledged", failed: "failed", unsupported: "unsupported",
                 expired: "expired", empty_text: "empty text", text_too_long: "text too long",
                 text_not_gbk: "not GBK", text_control_chars: "control characters",
                 bad_flags: "bad flags", other_vehicle: "another vehicle",
                 not_found: "not found" },
    },
  };

  const $ = (id) => document.getElementById(id);
  const storage = (s) => { try { return window[s]; } catch (_) { return null; } };
  const local = storage("localStorage");
  const session = storage("sessionStorage");

  const state = {
    lang: local && local.getItem(LANG_KEY) === "en" ? "en" : "zh",
    muted: !!(local && local.getItem(MUTE_KEY) === "1"),
    me: null,
    warnings: new Map(),
    selected: null,
    tab: "warnings",
    listLoaded: false,
    opened: false,       // the stream has been open before (a later open follows a gap)
    lastId: readLastId(),
    es: null,
    connState: "offline",
    reconnectTimer: 0,
    reconnectTry: 0,
    form: null,          // the action the form is open for
    audio: null,
    map: null, roads: null, shapes: null, svg: null, roadsAbort: null, roadsTimer: 0,
    drawn: null,         // "id@version" of the shapes on the map
    auditSeq: 0,
    toastTimer: 0,
    commandsSeq: 0,
    commandsTimer: 0,    // polls the command log while a text is on its way
    textKey: null,       // the Idempotency-Key of the open text form (a double submit is one)
    textVehicle: {},     // warning id → the vehicle a text about it went to
  };

  function readLastId() {
    const raw = session && session.getItem(LAST_KEY);
    return raw && /^\d+$/.test(raw) ? Number(raw) : null;
  }

  // ---- words and numbers -------------------------------------------------------------------

  function t(key) {
    const v = I18N[state.lang][key];
    return v === undefined ? (I18N.zh[key] === undefined ? key : I18N.zh[key]) : v;
  }
  function name(group, value) {
    const g = I18N[state.lang][group] || {};
    return g[value] || value;
  }
  function mins(s) { return Number.isFinite(s) ? Math.max(1, Math.round(s / 60)) : "—"; }
  function km(m) { return Number.isFinite(m) ? (m / 1000).toFixed(1) : "—"; }

  const beijing = new Intl.DateTimeFormat("zh-CN", {
    timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : beijing.format(d).replace(/\//g, "-");
  }
  function headline(w) { return (state.lang === "en" && w.headline_en) || w.headline || w.warning_id; }
  function description(w) {
    return (state.lang === "en" && w.description_en) || w.description || "";
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function applyLang() {
    document.documentElement.lang = state.lang === "en" ? "en" : "zh-CN";
    document.title = state.lang === "en" ? "TTI duty console" : "交通预警值班台 · TTI duty console";
    for (const node of document.querySelectorAll("[data-i18n]")) {
      node.textContent = t(node.dataset.i18n);
    }
    $("lang").textContent = state.lang === "en" ? "中文" : "English";
    $("mute").textContent = state.muted ? t("sound_off") : t("sound_on");
    $("mute").setAttribute("aria-pressed", String(state.muted));
    setConn(state.connState);
    if (state.me) {
      $("who-role").textContent = name("role", state.me.role);
      fillKinds();
      renderList();
      renderDetail();
      if (state.selected) { loadAudit(state.selected); loadCommands(state.selected); }
    }
  }

  // ---- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, { signal, key } = {}) {
    const headers = { Accept: "application/json" };
    if (key) headers["Idempotency-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.me && state.me.csrf) headers["X-CSRF-Token"] = state.me.csrf;
    let resp;
    try {
      resp = await fetch(API + path, {
        method, headers, credentials: "same-origin", cache: "no-store", signal,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (exc) {
      if (exc && exc.name === "AbortError") throw exc;
      throw new ApiError(0, "network", t("network_error"));
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(resp.status, err.code || String(resp.status),
                         err.message || `${resp.status} ${resp.statusText}`);
    }
    return data;
  }

  function errorText(exc) {
    if (!(exc instanceof ApiError)) return `${t("failed")}: ${exc}`;
    if (exc.status === 0) return exc.message;
    return `${exc.status >= 500 ? t("failed") : t("refused")} (${exc.status}): ${exc.message}`;
  }

  // ---- sign-in -----------------------------------------------------------------------------

  function showSignIn(message) {
    stopStream();
    clearTimeout(state.commandsTimer);
    state.me = null;
    state.warnings.clear();
    state.selected = null;
    state.listLoaded = false;
    state.opened = false;
    $("console").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    const err = $("signin-error");
    err.textContent = message || "";
    err.hidden = !message;
    $("token").focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    unlockAudio();
    const token = $("token").value.trim();
    const err = $("signin-error");
    if (!token) {
      err.textContent = t("token_required");
      err.hidden = false;
      return;
    }
    $("signin-submit").disabled = true;
    try {
      await api("POST", "session", { token });
      $("token").value = "";
      // A new user starts from "now": the previous session's position means nothing to them.
      state.lastId = null;
      if (session) session.removeItem(LAST_KEY);
      await startConsole();
    } catch (exc) {
      err.textContent = errorText(exc);
      err.hidden = false;
    } finally {
      $("signin-submit").disabled = false;
    }
  }

  async function signOut() {
    try { await api("DELETE", "session"); } catch (_) { /* signed out either way */ }
    if (session) session.removeItem(LAST_KEY);
    state.lastId = null;
    showSignIn("");
  }

  async function startConsole() {
    let me;
    try {
      me = await api("GET", "me");
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 401) {
        showSignIn(exc.code === "session_ended" ? t("session_ended") : "");
      } else {
        showSignIn(errorText(exc));
      }
      return;
    }
    state.me = me;
    $("signin").hidden = true;
    $("console").hidden = false;
    $("who").hidden = false;
    $("who-name").textContent = me.user;
    $("who-role").textContent = name("role", me.role);
    $("to-reports").hidden = !REPORT_ROLES.has(me.role);
    if (me.role === "hotline") { location.assign("reports"); return; }  // tickets, no warnings
    $("tab-alarms").hidden = !me.sees.includes(ALARM);
    const traffic = me.sees.some((k) => k !== ALARM);
    $("tab-warnings").hidden = !traffic && me.sees.includes(ALARM);
    setTab(traffic || !me.sees.includes(ALARM) ? "warnings" : "alarms");
    fillKinds();
    initMap();
    renderList();
    renderDetail();
    openStream();
  }

  // ---- the live stream ---------------------------------------------------------------------

  function setConn(s) {
    state.connState = s;
    $("conn").dataset.state = s;
    $("conn-text").textContent = t(`conn_${s}`);
    $("conn-last").textContent = state.lastId === null ? "" : `${t("last_event")}${state.lastId}`;
  }

  function stopStream() {
    if (state.es) state.es.close();
    state.es = null;
    clearTimeout(state.reconnectTimer);
    setConn("offline");
  }

  function openStream() {
    if (state.es) state.es.close();
    clearTimeout(state.reconnectTimer);
    // The browser sends Last-Event-ID by itself when it reconnects this EventSource; a new one
    // (a reload, or after the stream was given up) says where it stopped in the query.
    const url = API + "stream" + (state.lastId === null ? "" : `?last_event_id=${state.lastId}`);
    const es = new EventSource(url);
    state.es = es;
    es.addEventListener("open", () => {
      state.reconnectTry = 0;
      setConn("connected");
      // Listed after the stream is open: what changes from here on comes through the stream.
      // After a gap the stream replays from Last-Event-ID, and the list is read again too: a
      // replay the server could not give (an event id it no longer holds, a browser that
      // reconnected without the header) still ends with what the server holds now. A listed
      // copy never replaces a newer one (upsert), so the two agree whichever comes first.
      if (!state.listLoaded || state.opened) loadList();
      state.opened = true;
    });
    es.addEventListener("warning", (ev) => {
      const id = Number(ev.lastEventId);
      if (Number.isFinite(id) && id > 0) {
        state.lastId = id;
        if (session) session.setItem(LAST_KEY, String(id));
      }
      let w;
      try { w = JSON.parse(ev.data); } catch (_) { return; }
      upsert(w, { live: true });
      setConn("connected");
    });
    es.addEventListener("error", () => {
      if (state.es !== es) return;
      setConn("reconnecting");
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (a 401, 503 …): find out why, then try again ourselves.
        state.es = null;
        const delay = RECONNECT_MS[Math.min(state.reconnectTry, RECONNECT_MS.length - 1)];
        state.reconnectTry += 1;
        state.reconnectTimer = setTimeout(checkAndReconnect, delay);
      }
    });
  }

  async function checkAndReconnect() {
    try {
      const me = await api("GET", "me");
      state.me = { ...state.me, ...me };
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 401) {
        showSignIn(t("session_ended"));
        return;
      }
    }
    if (state.me) openStream();
  }

  // ---- the list ----------------------------------------------------------------------------

  async function loadList() {
    const status = $("f-status").value;
    const err = $("list-error");
    try {
      const jobs = [api("GET", `warnings?status=${encodeURIComponent(status)}`)];
      if (state.me.sees.includes(ALARM)) {
        jobs.push(api("GET", `alarms?status=${encodeURIComponent(status)}`));
      }
      const answers = await Promise.all(jobs);
      for (const a of answers) for (const w of a.warnings) upsert(w, { live: false });
      state.listLoaded = true;
      err.hidden = true;
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 401) { showSignIn(t("session_ended")); return; }
      err.textContent = errorText(exc);
      err.hidden = false;
    }
    renderList();
  }

  function upsert(w, { live }) {
    if (!w || !w.warning_id) return;
    const old = state.warnings.get(w.warning_id);
    // A listed copy never overwrites what the stream already said about the same version.
    if (old && (w.version < old.version || (!live && w.version === old.version))) return;
    state.warnings.set(w.warning_id, w);
    if (!old && live && state.listLoaded && ACTIVE.has(w.status)) announce(w);
    renderList(!old && live ? w.warning_id : null);
    if (state.selected === w.warning_id) {
      renderDetail();
      loadAudit(w.warning_id);
    }
  }

  function visible(w) {
    const tabKind = state.tab === "alarms" ? w.kind === ALARM : w.kind !== ALARM;
    const status = $("f-status").value;
    const kind = $("f-kind").value;
    const active = ACTIVE.has(w.status);
    return tabKind && (status === "all" || (status === "active") === active)
      && (!kind || state.tab === "alarms" || w.kind === kind);
  }

  function renderList(freshId) {
    const list = $("warnings");
    const items = [...state.warnings.values()].filter(visible);
    items.sort((a, b) => (ACTIVE.has(b.status) - ACTIVE.has(a.status))
      || (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9)
      || String(b.updated_at).localeCompare(String(a.updated_at)));
    list.replaceChildren(...items.map((w) => {
      const sev = String(w.severity || "Unknown").toLowerCase();
      const li = el("li", {
        class: `sev-${sev} status-${w.status}${ACTIVE.has(w.status) ? "" : " ended"}`
          + `${w.warning_id === state.selected ? " selected" : ""}`
          + `${w.warning_id === freshId ? " fresh" : ""}`,
        tabIndex: 0, "data-id": w.warning_id, "data-status": w.status,
      },
      el("span", { class: "meta" },
         el("span", { class: `sev sev-${sev}`, text: name("severity", w.severity) }),
         el("span", { text: name("kind", w.kind) }),
         el("span", { class: "status", text: name("status", w.status) })),
      el("span", { class: "headline", text: headline(w) }),
      el("span", { class: "meta" }, el("span", { text: fmtTime(w.updated_at) })));
      li.setAttribute("role", "button");
      li.setAttribute("aria-pressed", String(w.warning_id === state.selected));
      return li;
    }));
    $("count").textContent = String(items.length);
    $("empty").hidden = items.length > 0;
  }

  function fillKinds() {
    const select = $("f-kind");
    const current = select.value;
    const kinds = (state.me ? state.me.sees : []).filter((k) => k !== ALARM);
    select.replaceChildren(el("option", { value: "", text: t("f_all_kinds") }),
                           ...kinds.map((k) => el("option", { value: k, text: name("kind", k) })));
    select.value = kinds.includes(current) ? current : "";
  }

  function setTab(tab) {
    state.tab = tab;
    $("tab-warnings").setAttribute("aria-selected", String(tab === "warnings"));
    $("tab-alarms").setAttribute("aria-selected", String(tab === "alarms"));
    $("f-kind-wrap").hidden = tab === "alarms";
    renderList();
  }

  // ---- new warnings: a sound and a notice --------------------------------------------------

  function unlockAudio() {
    // Browsers let a page make sound only after a user gesture: create the context on one.
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!state.audio) {
      try { state.audio = new Ctx(); } catch (_) { state.audio = null; return; }
    }
    if (state.audio.state === "suspended") state.audio.resume().catch(() => {});
  }

  function beep(severe) {
    const ctx = state.audio;
    if (state.muted || !ctx || ctx.state !== "running") return;
    const tones = severe ? [988, 784, 988] : [880, 660];
    let at = ctx.currentTime + 0.02;
    for (const hz of tones) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = hz;
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(0.25, at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.18);
      osc.connect(gain).connect(ctx.destination);
      osc.start(at);
      osc.stop(at + 0.2);
      at += 0.22;
    }
  }

  function announce(w) {
    beep(w.severity === "Extreme" || w.severity === "Severe");
    toast(`${t("new_warning")}: ${headline(w)}`);
  }

  function toast(text) {
    const node = $("toast");
    node.textContent = text;
    node.hidden = false;
    clearTimeout(state.toastTimer);
    state.toastTimer = setTimeout(() => { node.hidden = true; }, 6000);
  }

  // ---- the selected warning ----------------------------------------------------------------

  function select(id) {
    if (state.selected !== id) {
      state.selected = id;
      closeForm();
      showMessage(null);
    }
    renderList();
    renderDetail();
    loadAudit(id);
    loadCommands(id);
  }

  function field(dl, key, value) {
    if (value === undefined || value === null || value === "") return;
    dl.append(el("dt", { text: t(key) }), el("dd", { "data-field": key }, value));
  }

  function renderDetail() {
    const w = state.selected ? state.warnings.get(state.selected) : null;
    $("detail-empty").hidden = !!w;
    $("detail-body").hidden = !w;
    if (!w) { drawWarning(null); return; }
    $("d-headline").textContent = headline(w);
    $("d-description").textContent = description(w);
    const dl = $("d-fields");
    dl.replaceChildren();
    const d = w.details || {};
    const sev = String(w.severity || "Unknown").toLowerCase();
    field(dl, "f_status", el("span", { id: "d-status", "data-status": w.status,
                                       text: name("status", w.status) }));
    field(dl, "f_kind", name("kind", w.kind));
    field(dl, "f_severity", el("span", { class: `sev sev-${sev}`, text: name("severity", w.severity) }));
    field(dl, "f_started", fmtTime(w.started_at));
    field(dl, "f_updated", fmtTime(w.updated_at));
    if (w.ended_at) field(dl, "f_ended_at", fmtTime(w.ended_at));
    if (w.expected_end) field(dl, "f_expected", fmtTime(w.expected_end));
    if (w.road_names && w.road_names.length) field(dl, "f_roads", w.road_names.join(state.lang === "en" ? ", " : "、"));
    if (w.segment_ids && w.segment_ids.length) field(dl, "f_segments", t("segments_text")(w.segment_ids.length));
    if (Number.isFinite(w.speed_kmh)) field(dl, "f_speed", `${Math.round(w.speed_kmh)} km/h`);
    if (d.vehicle_id) field(dl, "f_vehicle", String(d.vehicle_id));
    if (w.impact) field(dl, "f_impact", t("impact_text")(w.impact));
    if (w.detour) field(dl, "f_detour", t("detour_text")(w.detour));
    if (d.acknowledged_by) field(dl, "f_ack_by", `${d.acknowledged_by} · ${fmtTime(d.acknowledged_at)}`);
    if (d.assigned_to) field(dl, "f_assigned", el("span", { id: "d-assigned", text: String(d.assigned_to) }));
    const notes = Array.isArray(d.notes) ? d.notes : [];
    if (notes.length) {
      field(dl, "f_notes", el("ul", { id: "d-notes" }, ...notes.map((n) =>
        el("li", { text: `${fmtTime(n.at)} ${n.user}: ${n.text}` }))));
    }
    field(dl, "f_id", w.warning_id);
    renderActions(w);
    drawWarning(w);
  }

  function renderActions(w) {
    const mine = state.me && state.me.sees.includes(w.kind);
    $("actions").hidden = !mine;
    const can = {
      ack: ACKABLE.has(w.status), assign: ACTIVE.has(w.status), note: true,
      close: !FINAL.has(w.status), cancel: ACTIVE.has(w.status),
      text: w.kind === ALARM && ACTIVE.has(w.status),
    };
    for (const [action, ok] of Object.entries(can)) $(`act-${action}`).disabled = !ok;
    $("act-text").hidden = w.kind !== ALARM;
  }

  function showMessage(text, kind) {
    const node = $("action-msg");
    node.textContent = text || "";
    node.dataset.kind = kind || "";
    node.hidden = !text;
  }

  function openForm(action) {
    const w = state.warnings.get(state.selected);
    if (!w) return;
    state.form = action;
    $("af-assignee-row").hidden = action !== "assign";
    $("af-vehicle-row").hidden = action !== "text";
    $("af-flags-row").hidden = action !== "text";
    $("af-note").maxLength = action === "text" ? 200 : 2000;
    state.textKey = action === "text" ? newKey() : null;
    $("af-note-label").textContent = action === "text" ? t("af_text") : t("af_note");
    $("af-submit").textContent = action === "close" ? t("af_close")
      : action === "cancel" ? t("af_cancel") : t("af_submit");
    $("af-assignee").value = (w.details && w.details.assigned_to) || "";
    $("af-vehicle").value = (w.details && w.details.vehicle_id)
      || state.textVehicle[w.warning_id] || "";
    $("af-note").value = "";
    $("action-form").hidden = false;
    (action === "assign" ? $("af-assignee") : action === "text" && !$("af-vehicle").value
      ? $("af-vehicle") : $("af-note")).focus();
  }

  function closeForm() {
    state.form = null;
    $("action-form").hidden = true;
  }

  async function onAction(action) {
    unlockAudio();
    showMessage(null);
    if (action === "ack") { await act("ack", {}); return; }
    openForm(action);
  }

  async function submitForm(ev) {
    ev.preventDefault();
    const action = state.form;
    const note = $("af-note").value.trim();
    if (action === "assign") {
      const assignee = $("af-assignee").value.trim();
      if (!assignee) { showMessage(t("need_assignee"), "error"); return; }
      await act("assign", { assignee, note });
    } else if (action === "note") {
      if (!note) { showMessage(t("need_note"), "error"); return; }
      await act("note", { note });
    } else if (action === "text") {
      await sendText($("af-vehicle").value.trim(), note);
    } else if (action === "close" || action === "cancel") {
      await act(action, { note });
    }
  }

  const PATHS = { ack: "ack", assign: "assign", note: "notes", close: "close", cancel: "cancel" };

  async function act(action, body) {
    const id = state.selected;
    if (!id) return;
    $("af-submit").disabled = true;
    try {
      const w = await api("POST", `warnings/${encodeURIComponent(id)}/${PATHS[action]}`, body);
      closeForm();
      upsert(w, { live: true });
      showMessage(t(`ok_${action}`), "ok");
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 401) { showSignIn(t("session_ended")); return; }
      showMessage(errorText(exc), "error");
    } finally {
      $("af-submit").disabled = false;
      loadAudit(id);
    }
  }

  function newKey() {
    const c = window.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    const bytes = new Uint8Array(16);
    c.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sendText(vehicle, text) {
    if (!vehicle) { showMessage(t("need_vehicle"), "error"); return; }
    if (!text) { showMessage(t("need_note"), "error"); return; }
    const id = state.selected;
    const flags = ["display", "tts", "emergency"].filter((f) => $(`af-flag-${f}`).checked);
    $("af-submit").disabled = true;
    try {
      const answer = await api("POST", `vehicles/${encodeURIComponent(vehicle)}/messages`,
                               { text, flags, warning_id: id }, { key: state.textKey });
      state.textVehicle[id] = vehicle;
      closeForm();
      showMessage(t(answer.duplicate ? "dup_text" : "ok_text").replace("{id}", answer.command_id),
                  "ok");
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 401) { showSignIn(t("session_ended")); return; }
      showMessage(errorText(exc), "error");
    } finally {
      $("af-submit").disabled = false;
      loadAudit(id);
      loadCommands(id);
    }
  }

  // The texts sent to the selected alarm's vehicle, with what became of them; polled while one
  // is still on its way (outcomes come from the terminal, not on the warning stream).
  const COMMAND_FINAL = new Set(["acknowledged", "failed", "unsupported", "expired"]);

  async function loadCommands(id) {
    clearTimeout(state.commandsTimer);
    const w = state.warnings.get(id);
    const vehicle = w && ((w.details && w.details.vehicle_id) || state.textVehicle[id]);
    const box = $("commands-box");
    if (!w || w.kind !== ALARM || !vehicle || !state.me || !state.me.sees.includes(ALARM)) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    $("commands-vehicle").textContent = String(vehicle);
    const seq = ++state.commandsSeq;
    let answer;
    try {
      answer = await api("GET", `vehicles/${encodeURIComponent(vehicle)}/messages?limit=20`);
    } catch (exc) {
      if (seq !== state.commandsSeq) return;
      $("commands").tBodies[0].replaceChildren(
        el("tr", {}, el("td", { colSpan: 4, class: "error", text: errorText(exc) })));
      return;
    }
    if (seq !== state.commandsSeq || state.selected !== id) return;
    const en = state.lang === "en";
    const rows = answer.commands.map((c) => el("tr", {
      "data-command": c.command_id, "data-status": c.status,
      "data-warning": c.warning_id || "" },
      el("td", { text: fmtTime(c.requested_at) }),
      el("td", { class: "text", text: c.text || name("action", `terminal_${c.kind}`) }),
      el("td", { class: "user", text: c.requested_by }),
      el("td", { class: `status cmd-${c.status}`,
                 text: `${en ? c.summary_en : c.summary} · ${fmtTime(c.status_at)}` })));
    $("commands").tBodies[0].replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colSpan: 4, class: "muted", text: t("no_commands") }))]));
    if (answer.commands.some((c) => !COMMAND_FINAL.has(c.status))) {
      state.commandsTimer = setTimeout(() => {
        if (state.selected !== id) return;
        loadCommands(id);
        loadAudit(id);
      }, 2000);
    }
  }

  const GOOD_OUTCOMES = new Set(["ok", "duplicate", "requested", "offline_waiting", "sent",
                                 "acknowledged"]);

  async function loadAudit(id) {
    const seq = ++state.auditSeq;
    let answer;
    try {
      answer = await api("GET", `warnings/${encodeURIComponent(id)}/audit`);
    } catch (exc) {
      if (seq !== state.auditSeq) return;
      $("audit").tBodies[0].replaceChildren(
        el("tr", {}, el("td", { colSpan: 6, class: "error", text: errorText(exc) })));
      return;
    }
    if (seq !== state.auditSeq || state.selected !== id) return;
    const rows = answer.audit.map((e) => {
      const d = e.details || {};
      const summary = state.lang === "en" ? d.summary_en : d.summary;
      const said = [d.assignee ? `→ ${d.assignee}` : "", d.note || "", d.message || "",
                    d.text ? `“${d.text}”` : "", summary || "",
                    d.command_id ? `#${d.command_id}` : ""]
        .filter(Boolean).join(" · ");
      return el("tr", { "data-action": e.action, "data-outcome": e.outcome },
        el("td", { text: fmtTime(e.at) }), el("td", { class: "user", text: e.user }),
        el("td", { text: name("role", e.role) }), el("td", { text: name("action", e.action) }),
        el("td", { class: `outcome-${GOOD_OUTCOMES.has(e.outcome) ? "ok" : "refused"}`,
                   text: name("outcome", e.outcome) }),
        el("td", { text: said }));
    });
    $("audit").tBodies[0].replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colSpan: 6, class: "muted", text: t("no_audit") }))]));
  }

  // ---- the map -----------------------------------------------------------------------------

  function mapError(text) {
    const node = $("map-error");
    node.textContent = text ? `${t("map_unavailable")}${text}` : "";
    node.hidden = !text;
  }

  function initMap() {
    if (state.map) return;
    if (!window.L) { mapError("Leaflet"); return; }
    const L = window.L;
    const map = L.map("map", { preferCanvas: true, zoomSnap: 0.5, attributionControl: true });
    map.attributionControl.setPrefix("Leaflet");
    map.attributionControl.addAttribution("© OpenStreetMap contributors");
    state.map = map;
    state.roads = L.geoJSON(null, {
      interactive: false,
      style: (f) => ({ color: "#9aa5b1", weight: ROAD_WEIGHT[f.properties.road_class] || 1,
                       opacity: 0.9 }),
    }).addTo(map);
    state.shapes = L.featureGroup().addTo(map);
    // The warning's own shapes in SVG (few, and each addressable by class); the roads on canvas.
    state.svg = L.svg();
    const legend = L.control({ position: "bottomright" });
    legend.onAdd = () => {
      const div = L.DomUtil.create("div", "map-legend");
      for (const [cls, key] of [["queue", "legend_queue"], ["detour", "legend_detour"],
                                ["area", "legend_area"]]) {
        div.append(el("div", {}, el("i", { class: cls }), el("span", { "data-i18n": key, text: t(key) })));
      }
      return div;
    };
    legend.addTo(map);
    map.setView([30.59, 114.30], 11);  // Wuhan, until the region's extent is known
    map.on("moveend", () => {
      clearTimeout(state.roadsTimer);
      state.roadsTimer = setTimeout(loadRoads, 250);
    });
    fitRegion();
  }

  async function fitRegion() {
    try {
      const region = await api("GET", "region");
      const [w, s, e, n] = region.bbox;
      state.map.fitBounds([[s, w], [n, e]]);
      mapError(null);
    } catch (exc) {
      mapError(exc.message);
      setTimeout(fitRegion, 5000);  // 503 while the road network loads
    }
  }

  async function loadRoads() {
    if (!state.map || !state.me) return;
    const b = state.map.getBounds().pad(0.2);
    const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
    const bbox = [clamp(b.getWest(), -180, 180), clamp(b.getSouth(), -90, 90),
                  clamp(b.getEast(), -180, 180), clamp(b.getNorth(), -90, 90)]
      .map((v) => v.toFixed(5)).join(",");
    if (state.roadsAbort) state.roadsAbort.abort();
    const ctl = new AbortController();
    state.roadsAbort = ctl;
    try {
      const fc = await api("GET", `map?bbox=${bbox}`, undefined, { signal: ctl.signal });
      state.roads.clearLayers();
      state.roads.addData(fc);
      mapError(null);
    } catch (exc) {
      if (exc && exc.name === "AbortError") return;
      mapError(exc.message);
    }
  }

  async function drawWarning(w) {
    if (!state.map) return;
    const key = w ? `${w.warning_id}@${w.version}@${w.detour ? 1 : 0}` : null;
    if (key === state.drawn) return;
    const first = !state.drawn || !w || !state.drawn.startsWith(`${w.warning_id}@`);
    state.drawn = key;
    if (!w) { state.shapes.clearLayers(); return; }
    let fc;
    try {
      fc = await api("GET", `warnings/${encodeURIComponent(w.warning_id)}/map`);
    } catch (exc) {
      mapError(exc.message);
      return;
    }
    if (state.drawn !== key) return;
    const L = window.L;
    const color = SEVERITY_COLORS[w.severity] || SEVERITY_COLORS.Unknown;
    state.shapes.clearLayers();
    for (const f of fc.features) {
      const part = f.properties.part;
      if (part === "area" && f.geometry.type === "Point") {
        const [lon, lat] = f.geometry.coordinates;
        L.circle([lat, lon], { radius: f.properties.radius_m, color: "#ef6c00", weight: 1,
                               dashArray: "4 4", fillOpacity: 0.08, renderer: state.svg,
                               className: "shape-area" }).addTo(state.shapes);
        continue;
      }
      const style = part === "queue" ? { color, weight: 7, opacity: 0.9 }
        : part === "detour" ? { color: "#1565c0", weight: 5, opacity: 0.85, dashArray: "10 6" }
          : { color: "#ef6c00", weight: 1, dashArray: "4 4", fillOpacity: 0.08 };
      L.geoJSON(f, { style: () => ({ ...style, className: `shape-${part}` }),
                     renderer: state.svg }).addTo(state.shapes);
    }
    if (Number.isFinite(w.lon) && Number.isFinite(w.lat)) {
      L.circleMarker([w.lat, w.lon], { radius: 6, color, fillColor: color, fillOpacity: 1,
                                       renderer: state.svg, className: "shape-point" })
        .addTo(state.shapes);
    }
    const bounds = state.shapes.getBounds();
    if (first && bounds.isValid()) state.map.fitBounds(bounds, { padding: [30, 30], maxZoom: 17 });
  }

  // ---- wiring ------------------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("lang").addEventListener("click", () => {
      state.lang = state.lang === "en" ? "zh" : "en";
      if (local) local.setItem(LANG_KEY, state.lang);
      applyLang();
    });
    $("mute").addEventListener("click", () => {
      state.muted = !state.muted;
      if (local) local.setItem(MUTE_KEY, state.muted ? "1" : "0");
      unlockAudio();
      applyLang();
    });
    $("tab-warnings").addEventListener("click", () => setTab("warnings"));
    $("tab-alarms").addEventListener("click", () => setTab("alarms"));
    $("f-status").addEventListener("change", () => { renderList(); loadList(); });
    $("f-kind").addEventListener("change", () => renderList());
    const list = $("warnings");
    list.addEventListener("click", (ev) => {
      const li = ev.target.closest("li[data-id]");
      if (li) select(li.dataset.id);
    });
    list.addEventListener("keydown", (ev) => {
      const li = ev.target.closest("li[data-id]");
      if (li && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); select(li.dataset.id); }
    });
    $("actions").addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-action]");
      if (b && !b.disabled) onAction(b.dataset.action);
    });
    $("action-form").addEventListener("submit", submitForm);
    $("af-dismiss").addEventListener("click", () => { closeForm(); showMessage(null); });
    document.addEventListener("pointerdown", unlockAudio, { once: true });
    document.addEventListener("keydown", unlockAudio, { once: true });
    window.addEventListener("online", () => { if (state.me && !state.es) checkAndReconnect(); });
  }

  wire();
  applyLang();
  startConsole();
})();
