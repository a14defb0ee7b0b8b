// polymq management console: plain JS over the /api endpoints, no build step, no CDN.
"use strict";

const state = { view: "overview", timer: null, auth: sessionStorage.getItem("polymq-auth") };
const $ = (sel, root = document) => root.querySelector(sel);

function setStatus(text, ok = true) {
  const el = $("#status");
  el.textContent = text;
  el.className = ok ? "ok" : "error";
}

async function api(method, path, body) {
  const headers = { "X-Polymq-Console": "1" };
  if (state.auth) headers.Authorization = "Basic " + state.auth;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch("api/" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) {
    showLogin("Log in with a broker user.");
    throw new Error("not authorized");
  }
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error((data && data.reason) || res.statusText);
  return data;
}

const enc = (s) => encodeURIComponent(s);
const fmt = (n) => (n === null || n === undefined ? "" : String(Math.round(n * 100) / 100));

function cell(text, attrs = {}) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  for (const [k, v] of Object.entries(attrs)) td.setAttribute(k, v);
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// -- overview ------------------------------------------------------------------------------

function drawChart(samples) {
  const canvas = $("#chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const series = { publish: [], in: [], out: [] };
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.t - a.t) || 1;
    series.publish.push({ t: b.t, v: (b.enqueued + b.appended - a.enqueued - a.appended) / dt });
    series.in.push({ t: b.t, v: (b.messages_in - a.messages_in) / dt });
    series.out.push({ t: b.t, v: (b.messages_out - a.messages_out) / dt });
  }
  const all = [...series.publish, ...series.in, ...series.out].map((p) => p.v);
  const max = Math.max(1, ...all);
  ctx.strokeStyle = "#999";
  ctx.beginPath();
  ctx.moveTo(pad, 5); ctx.lineTo(pad, h - pad); ctx.lineTo(w - 5, h - pad);
  ctx.stroke();
  ctx.fillStyle = "#333";
  ctx.font = "11px sans-serif";
  ctx.fillText(fmt(max), 2, 12);
  ctx.fillText("0", 2, h - pad);
  const colors = { publish: "#1f77b4", in: "#2ca02c", out: "#d62728" };
  const n = series.publish.length;
  for (const [name, pts] of Object.entries(series)) {
    ctx.strokeStyle = colors[name];
    ctx.lineWidth = 2;
    ctx.beginPath();
    pts.forEach((p, i) => {
      const x = pad + (n <= 1 ? 0 : (i * (w - pad - 10)) / (n - 1));
      const y = h - pad - (p.v / max) * (h - pad - 10);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  // the drawn values, for people reading the page and for tests
  const last = series.publish.length ? series.publish[series.publish.length - 1] : null;
  canvas.dataset.points = String(n);
  canvas.dataset.lastTime = last ? String(last.t) : "";
  canvas.dataset.lastPublishRate = last ? fmt(last.v) : "0";
  canvas.dataset.maxRate = fmt(max);
}

async function loadOverview() {
  const ov = await api("GET", "overview");
  const t = ov.object_totals, q = ov.queue_totals, m = ov.message_stats;
  const items = [
    ["Version", ov.polymq_version], ["Uptime (s)", Math.round(ov.uptime / 1000)],
    ["Connections", t.connections], ["Queues", t.queues], ["Streams", t.streams],
    ["Consumers", t.consumers], ["Messages ready", q.messages_ready],
    ["Unacknowledged", q.messages_unacknowledged],
    ["Publish/s", fmt(m.publish_details.rate)], ["Memory (bytes)", ov.mem_used],
    ["Alarm", ov.mem_alarm ? "on: " + (ov.alarm_reason || "") : "off"],
  ];
  $("#totals").replaceChildren(...items.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    dd.dataset.testid = "total-" + k.toLowerCase().replace(/[^a-z]+/g, "-");
    return [dt, dd];
  }));
  drawChart(ov.samples);
  // protocols side by side: one column per protocol
  const protos = Object.keys(ov.protocols).sort();
  const head = document.createElement("tr");
  head.append(document.createElement("th"));
  for (const p of protos) {
    const th = document.createElement("th"); th.scope = "col"; th.textContent = p; head.append(th);
  }
  $("#protocols thead").replaceChildren(head);
  const rows = [["connections", "Connections"], ["messages_in", "Messages in"],
    ["messages_out", "Messages out"], ["bytes_in", "Bytes in"], ["bytes_out", "Bytes out"]]
    .map(([key, label]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th"); th.scope = "row"; th.textContent = label;
      tr.append(th, ...protos.map((p) => cell(ov.protocols[p][key] ?? 0,
        { "data-testid": `proto-${p}-${key}` })));
      return tr;
    });
  fillRows($("#protocols tbody"), rows);
}

// -- tables --------------------------------------------------------------------------------

async function loadConnections() {
  const conns = await api("GET", "connections");
  fillRows($("#connections tbody"), conns.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.testid = "connection-row-" + c.id;
    tr.append(cell(c.protocol), cell(c.client_id), cell(c.user), cell(c.peer), cell(c.tls),
      cell(c.messages_in), cell(c.messages_out), cell(c.bytes_in), cell(c.bytes_out));
    const td = document.createElement("td");
    td.append(button("Close", () => act(`close connection ${c.name}`,
      () => api("DELETE", "connections/" + enc(c.name)))));
    tr.append(td);
    return tr;
  }));
}

async function loadQueues() {
  const queues = (await api("GET", "queues")).filter((q) => q.type !== "stream");
  fillRows($("#queues tbody"), queues.map((q) => {
    const tr = document.createElement("tr");
    tr.dataset.testid = `queue-row-${q.vhost}-${q.name}`;
    tr.append(cell(q.vhost), cell(q.name), cell(q.type),
      cell(q.messages_ready, { "data-testid": `queue-ready-${q.vhost}-${q.name}` }),
      cell(q.messages_unacknowledged), cell(q.consumers),
      cell(fmt(q.message_stats.publish_details.rate)));
    const td = document.createElement("td");
    td.append(
      button("Purge", () => act(`purge ${q.name}`,
        () => api("DELETE", `queues/${enc(q.vhost)}/${enc(q.name)}/contents`))),
      button("Delete", () => {
        if (confirm(`Delete queue ${q.name}?`)) {
          act(`delete ${q.name}`, () => api("DELETE", `queues/${enc(q.vhost)}/${enc(q.name)}`));
        }
      }));
    tr.append(td);
    return tr;
  }));
}

async function loadTopics() {
  const streams = await api("GET", "streams");
  fillRows($("#topics tbody"), streams.flatMap((s) => s.partitions.map((p, i) => {
    const tr = document.createElement("tr");
    tr.dataset.testid = `topic-row-${s.vhost}-${s.name}-${p.partition}`;
    tr.append(cell(s.vhost), cell(s.name), cell(p.partition), cell(p.start_offset),
      cell(p.end_offset), cell(p.bytes), cell(s.groups.join(", ")));
    const td = document.createElement("td");
    if (i === 0) {
      td.append(button("Delete", () => {
        if (confirm(`Delete topic ${s.name}?`)) {
          act(`delete ${s.name}`, () => api("DELETE", `streams/${enc(s.vhost)}/${enc(s.name)}`));
        }
      }));
    }
    tr.append(td);
    return tr;
  })));
}

async function loadGroups() {
  const groups = await api("GET", "groups");
  fillRows($("#groups tbody"), groups.flatMap((g) => {
    const parts = g.partitions.length ? g.partitions : [{}];
    return parts.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.testid = `group-row-${g.group}-${p.topic ?? ""}-${p.partition ?? ""}`;
      tr.append(cell(g.group), cell(g.state), cell(g.members.length), cell(p.topic),
        cell(p.partition), cell(p.current_offset), cell(p.log_end_offset), cell(p.lag));
      return tr;
    });
  }));
}

async function loadMqtt() {
  const [sessions, retained] = await Promise.all([api("GET", "mqtt/sessions"),
    api("GET", "mqtt/retained")]);
  fillRows($("#mqtt table[aria-label='mqtt sessions'] tbody"), sessions.map((s) => {
    const tr = document.createElement("tr");
    tr.append(cell(s.client_id), cell(s.connected), cell(s.persistent), cell(s.protocol_version),
      cell(s.queued),
      cell(s.subscriptions.map((x) => `${x.filter} (QoS ${x.qos})`).join(", ")));
    return tr;
  }));
  fillRows($("#mqtt table[aria-label='retained messages'] tbody"), retained.map((r) => {
    const tr = document.createElement("tr");
    tr.append(cell(r.topic), cell(r.payload_bytes), cell(r.payload));
    return tr;
  }));
}

const loaders = { overview: loadOverview, connections: loadConnections, queues: loadQueues,
  topics: loadTopics, groups: loadGroups, mqtt: loadMqtt };

async function act(what, fn) {
  setStatus(`${what}…`);
  try {
    await fn();
    setStatus(`${what}: done`);
  } catch (e) {
    setStatus(`${what}: ${e.message}`, false);
  }
  refresh();
}

async function refresh() {
  try {
    await loaders[state.view]();
    $("#updated").textContent = new Date().toISOString();
  } catch (e) {
    if (e.message !== "not authorized") setStatus(e.message, false);
  }
}

function schedule() {
  clearInterval(state.timer);
  const ms = Number($("#interval").value);
  if (ms > 0) state.timer = setInterval(refresh, ms);
}

function show(view) {
  state.view = view;
  for (const s of document.querySelectorAll("[data-view-section]")) s.hidden = s.id !== view;
  for (const b of document.querySelectorAll("nav button")) {
    b.setAttribute("aria-pressed", String(b.dataset.view === view));
  }
  location.hash = view;
  refresh();
}

function showLogin(message) {
  clearInterval(state.timer);
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  for (const s of document.querySelectorAll("[data-view-section]")) s.hidden = true;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("nav button")) {
    b.addEventListener("click", () => show(b.dataset.view));
  }
  $("#interval").addEventListener("change", schedule);
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem("polymq-auth");
    state.auth = null;
    showLogin("Logged out.");
  });
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    state.auth = btoa(`${f.user.value}:${f.password.value}`);
    try {
      await api("GET", "whoami");
      sessionStorage.setItem("polymq-auth", state.auth);
      f.hidden = true;
      show(state.view);
      schedule();
    } catch (e) {
      $("#login-error").textContent = "Login failed.";
    }
  });
  const initial = location.hash.slice(1);
  if (loaders[initial]) state.view = initial;
  if (!state.auth) {
    showLogin();
    return;
  }
  show(state.view);
  schedule();
});
