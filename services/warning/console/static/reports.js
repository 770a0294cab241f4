// TTI reports desk: citizens' reports and hotline tickets, moved on by the departments.
// Uses the console's session (sign in at the console); talks only to ../v1/dept/reports.
// Statuses move forward only; the reply is what the reporter reads, the note stays inside.
"use strict";

(() => {
  const API = "../v1/dept/";
  const LANG_KEY = "tti.console.lang";
  const POLL_MS = 15000;
  const HANDLES = new Set(["police", "transport", "hotline", "admin"]);
  const NEXT = {
    received: ["reviewing", "confirmed", "resolved", "rejected"],
    reviewing: ["confirmed", "resolved", "rejected"],
    confirmed: ["resolved"], resolved: [], rejected: [],
  };

  const I18N = {
    zh: {
      title: "市民报料与热线工单", to_console: "预警值班台", go_sign_in: "前往值班台登录",
      need_sign_in: "请先在值班台登录。", not_for_role: "您的角色不处理市民报料。",
      filter_status: "状态", filter_channel: "来源", f_open: "待办", f_done: "已办结/不予采纳",
      f_all: "全部", f_all_channels: "全部来源", ch_web: "网页", ch_wechat: "微信",
      refresh: "刷新", empty: "暂无报料或工单", pick: "在列表中选择一条报料或工单。",
      sf_status: "处理为", sf_reply: "答复（报料人可见）", sf_note: "内部备注（不公开）",
      sf_warning: "关联预警编号（可选）", sf_submit: "提交", history_title: "处理记录",
      beijing_time: "时间均为北京时间", col_time: "时间", col_user: "用户", col_status: "状态",
      col_reply: "答复", col_note: "备注", no_history: "尚未处理", final: "已办结，不能再改",
      f_kind: "类型", f_channel: "来源", f_reported: "报料时间", f_occurred: "发生时间",
      f_where: "位置", f_contact: "联系方式", f_status: "状态", f_reply: "答复",
      f_warning: "关联预警", f_photo: "照片", open_photo: "查看照片",
      saved: "已更新为：{s}", unchanged: "没有变化（重复提交）", failed: "请求失败",
      refused: "操作被拒绝", network_error: "无法连接服务器，请检查网络。",
      status: { received: "已受理", reviewing: "核查中", confirmed: "已核实", resolved: "已办结",
                rejected: "不予采纳" },
      kind: { congestion: "拥堵", accident: "事故", road_damage: "路面损坏", closure: "封路",
              bus: "公交", complaint: "投诉", suggestion: "建议", enquiry: "咨询", help: "求助",
              other: "其他" },
      role: { police: "交警", transport: "交通运输", safety: "安全监管", hotline: "热线",
              admin: "管理员" },
    },
    en: {
      title: "Citizens' reports and hotline tickets", to_console: "Duty console",
      go_sign_in: "Sign in at the duty console", need_sign_in: "Sign in at the duty console first.",
      not_for_role: "Your role does not handle citizens' reports.", filter_status: "Status",
      filter_channel: "Channel", f_open: "To do", f_done: "Resolved / not taken up", f_all: "All",
      f_all_channels: "All channels", ch_web: "Web", ch_wechat: "WeChat", refresh: "Refresh",
      empty: "No reports or tickets", pick: "Pick a report or ticket in the list.",
      sf_status: "Move to", sf_reply: "Reply (the reporter reads it)",
      sf_note: "Internal note (never public)", sf_warning: "Linked warning id (optional)",
      sf_submit: "Submit", history_title: "Handling", beijing_time: "Times are Beijing time",
      col_time: "Time", col_user: "User", col_status: "Status", col_reply: "Reply",
      col_note: "Note", no_history: "Not handled yet", final: "Final: no further change",
      f_kind: "Kind", f_channel: "Channel", f_reported: "Reported", f_occurred: "Happened",
      f_where: "Where", f_contact: "Contact", f_status: "Status", f_reply: "Reply",
      f_warning: "Warning", f_photo: "Photo", open_photo: "Open the photo",
      saved: "Now: {s}", unchanged: "Nothing changed (a repeated request)", failed: "Failed",
      refused: "Refused", network_error: "The server cannot be reached; check the network.",
      status: { received: "received", reviewing: "being checked", confirmed: "confirmed",
                resolved: "resolved", rejected: "not taken up" },
      kind: { congestion: "congestion", accident: "accident", road_damage: "road damage",
              closure: "closure", bus: "bus", complaint: "complaint", suggestion: "suggestion",
              enquiry: "enquiry", help: "help", other: "other" },
      role: { police: "police", transport: "transport", safety: "safety", hotline: "hotline",
              admin: "admin" },
    },
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    lang: (localStorage.getItem(LANG_KEY) || "zh") === "en" ? "en" : "zh",
    me: null, reports: [], selected: null, detail: null, timer: 0,
  };

  function t(key) {
    const v = I18N[state.lang][key];
    return v === undefined ? I18N.zh[key] : v;
  }
  function name(group, value) { return (I18N[state.lang][group] || {})[value] || value; }
  const beijing = new Intl.DateTimeFormat("zh-CN", {
    timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : beijing.format(d).replace(/\//g, "-");
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

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.me && state.me.csrf) headers["X-CSRF-Token"] = state.me.csrf;
    let resp;
    try {
      resp = await fetch(API + path, {
        method, headers, credentials: "same-origin", cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_) {
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

  function applyLang() {
    document.documentElement.lang = state.lang === "en" ? "en" : "zh-CN";
    document.title = state.lang === "en" ? "TTI reports desk" : "市民报料与热线工单 · TTI reports desk";
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    $("lang").textContent = state.lang === "en" ? "中文" : "English";
    if (state.me) $("who-role").textContent = name("role", state.me.role);
    renderList();
    renderDetail();
  }

  function showSignIn(message) {
    clearInterval(state.timer);
    $("desk").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    $("signin-msg").textContent = message;
  }

  async function start() {
    try {
      state.me = await api("GET", "me");
    } catch (exc) {
      showSignIn(exc.status === 401 ? t("need_sign_in") : errorText(exc));
      return;
    }
    $("who-name").textContent = state.me.user;
    $("who-role").textContent = name("role", state.me.role);
    $("who").hidden = false;
    if (!HANDLES.has(state.me.role)) { showSignIn(t("not_for_role")); return; }
    $("signin").hidden = true;
    $("desk").hidden = false;
    await loadList();
    state.timer = setInterval(loadList, POLL_MS);
  }

  async function loadList() {
    const params = new URLSearchParams({ limit: "200" });
    if ($("f-status").value) params.set("status", $("f-status").value);
    if ($("f-channel").value) params.set("channel", $("f-channel").value);
    try {
      const body = await api("GET", `reports?${params}`);
      state.reports = body.reports;
      $("list-error").hidden = true;
    } catch (exc) {
      if (exc.status === 401) { showSignIn(t("need_sign_in")); return; }
      $("list-error").textContent = errorText(exc);
      $("list-error").hidden = false;
    }
    renderList();
  }

  function renderList() {
    const list = $("reports");
    list.replaceChildren();
    for (const r of state.reports) {
      const li = el("li", { tabIndex: 0, "data-number": r.number, "data-status": r.status,
                            class: r.number === state.selected ? "selected" : null },
        el("span", { class: "meta" },
           el("span", { text: r.number }), el("span", { text: name("kind", r.kind) }),
           el("span", { text: r.channel }), el("span", { class: "status", text: name("status", r.status) })),
        el("span", { class: "headline", text: r.text || "—" }),
        el("span", { class: "meta", text: fmtTime(r.reported_at) }));
      list.append(li);
    }
    $("count").textContent = String(state.reports.length);
    $("empty").hidden = state.reports.length > 0;
  }

  async function select(number) {
    state.selected = number;
    renderList();
    showMessage(null);
    try {
      state.detail = await api("GET", `reports/${encodeURIComponent(number)}`);
    } catch (exc) {
      state.detail = null;
      showMessage(errorText(exc), "error");
    }
    renderDetail();
  }

  function field(dl, key, value) {
    if (value === null || value === undefined || value === "") return;
    dl.append(el("dt", { text: t(key) }), el("dd", null, value));
  }

  function renderDetail() {
    const r = state.detail;
    $("detail-empty").hidden = !!r;
    $("detail-body").hidden = !r;
    if (!r) return;
    $("d-number").textContent = `${r.number} · ${name("status", r.status)}`;
    $("d-text").textContent = r.text || "";
    const dl = $("d-fields");
    dl.replaceChildren();
    field(dl, "f_kind", name("kind", r.kind));
    field(dl, "f_channel", r.channel);
    field(dl, "f_reported", fmtTime(r.reported_at));
    if (r.occurred_at) field(dl, "f_occurred", fmtTime(r.occurred_at));
    if (r.lon !== null && r.lat !== null) field(dl, "f_where", `${r.lon.toFixed(5)}, ${r.lat.toFixed(5)}`);
    else field(dl, "f_where", r.segment_id);
    field(dl, "f_contact", r.contact);
    field(dl, "f_reply", r.reply);
    field(dl, "f_warning", r.warning_id);
    if (r.photo && r.photo.url) {
      // The publisher serves it; opened in its own tab (this page's policy allows no other origin).
      field(dl, "f_photo", el("a", { href: r.photo.url, target: "_blank", rel: "noopener noreferrer",
                                     text: t("open_photo") }));
    }
    const next = NEXT[r.status] || [];
    // Forward only; the current status again (non-final) updates the reply.
    const choices = next.length ? [...next, r.status] : [];
    $("sf-status").replaceChildren(
      ...choices.map((s) => el("option", { value: s, text: name("status", s) })));
    $("status-form").hidden = choices.length === 0;
    if (!next.length) showMessage(t("final"), "ok");
    const body = $("history").tBodies[0];
    body.replaceChildren();
    for (const h of r.history || []) {
      body.append(el("tr", { "data-status": h.status },
        el("td", { text: fmtTime(h.at) }), el("td", { text: h.user }),
        el("td", { text: name("status", h.status) }), el("td", { text: h.reply || "" }),
        el("td", { text: h.note || "" })));
    }
    if (!(r.history || []).length) {
      body.append(el("tr", null, el("td", { colSpan: 5, class: "muted", text: t("no_history") })));
    }
  }

  function showMessage(text, kind) {
    const box = $("action-msg");
    box.hidden = !text;
    box.textContent = text || "";
    if (kind) box.dataset.kind = kind;
  }

  async function submit(ev) {
    ev.preventDefault();
    const r = state.detail;
    if (!r) return;
    const body = { status: $("sf-status").value, reply: $("sf-reply").value.trim(),
                   note: $("sf-note").value.trim() };
    const wid = $("sf-warning").value.trim();
    if (wid) body.warning_id = wid;
    $("sf-submit").disabled = true;
    try {
      const done = await api("POST", `reports/${encodeURIComponent(r.number)}/status`, body);
      $("sf-reply").value = "";
      $("sf-note").value = "";
      $("sf-warning").value = "";
      await select(r.number);
      showMessage(done.changed ? t("saved").replace("{s}", name("status", done.status))
                               : t("unchanged"), "ok");
      await loadList();
    } catch (exc) {
      if (exc.status === 401) { showSignIn(t("need_sign_in")); return; }
      showMessage(errorText(exc), "error");
    } finally {
      $("sf-submit").disabled = false;
    }
  }

  function wire() {
    $("lang").addEventListener("click", () => {
      state.lang = state.lang === "en" ? "zh" : "en";
      localStorage.setItem(LANG_KEY, state.lang);
      applyLang();
    });
    $("f-status").addEventListener("change", loadList);
    $("f-channel").addEventListener("change", loadList);
    $("refresh").addEventListener("click", loadList);
    const list = $("reports");
    list.addEventListener("click", (ev) => {
      const li = ev.target.closest("li[data-number]");
      if (li) select(li.dataset.number);
    });
    list.addEventListener("keydown", (ev) => {
      const li = ev.target.closest("li[data-number]");
      if (li && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); select(li.dataset.number); }
    });
    $("status-form").addEventListener("submit", submit);
  }

  wire();
  applyLang();
  start();
})();
