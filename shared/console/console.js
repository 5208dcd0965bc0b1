// The dualsync console: reads and acts only through the admin API (/api/...), keeps no state of its own.
// Every datum is put on the page as text (textContent, attributes), never as HTML.
"use strict";

const API = "/api/";
const TOKEN_KEY = "dualsync-token";

// `dualsync ui` prints a URL with #token=...: kept for this tab, then taken out of the address bar.
(function keepToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

async function api(path, body) {
  const headers = { "Accept": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["X-Dualsync-Token"] = token;
  const init = { headers, credentials: "same-origin" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// -- building the page safely ------------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "class") node.className = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function text(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  return isNaN(moment) ? String(iso) : moment.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

function notice(message, bad) {
  const node = document.getElementById("notice");
  node.textContent = message;
  node.className = bad ? "bad" : "";
}

function button(label, action, props) {
  const node = el("button", Object.assign({ type: "button" }, props || {}), label);
  node.addEventListener("click", async () => {
    node.disabled = true;
    try {
      await action();
    } catch (error) {
      notice(error.message, true);
    } finally {
      node.disabled = false;
    }
  });
  return node;
}

// -- flows ------------------------------------------------------------------------------------------------------

function renderFlows(status) {
  document.getElementById("queue").textContent = `queue ${status.queue}`;
  const body = clear(document.querySelector("#flows tbody"));
  for (const flow of status.flows) {
    const state = flow.paused ? el("span", { class: "warn" }, "paused", flow.paused_reason ? ` (${flow.paused_reason})` : "")
      : flow.last_error ? el("span", { class: "bad" }, "failing") : el("span", { class: "ok" }, "ok");
    const letters = Object.entries(flow.dead_letters || {}).map(([reason, n]) => `${reason} ${n}`).join(", ");
    const error = flow.last_error ? `${flow.last_error.error} (since ${when(flow.last_error.since)})` : "";
    body.append(el("tr", { "data-flow": flow.flow },
      el("td", {}, flow.flow), el("td", {}, `${flow.source} → ${flow.target}`), el("td", {}, state),
      el("td", { class: "num" }, text(flow.queued)), el("td", { class: "num" }, duration(flow.lag_seconds)),
      el("td", {}, letters || "0"), el("td", { class: "bad" }, error)));
  }
}

// -- dead letters -----------------------------------------------------------------------------------------------

async function followJob(job) {
  while (job.status === "queued" || job.status === "running") {
    notice(`replaying: ${job.matched} matched, ${job.replayed} replayed`);
    await new Promise((resolve) => setTimeout(resolve, 500));
    job = await api(`jobs/${encodeURIComponent(job.id)}`);
  }
  if (job.status === "failed") throw new Error(`replay failed: ${job.error}`);
  const skipped = Object.entries(job.skipped).map(([why, n]) => `${n} ${why}`).join(", ");
  notice(`replayed ${job.replayed} of ${job.matched}` + (skipped ? `, skipped ${skipped}` : ""));
  return job;
}

async function replay(filter) {
  const answer = await api("replay", filter);
  await followJob(answer.job);
  await refresh();
}

function renderDeadLetters(list) {
  const root = clear(document.getElementById("dead-letters"));
  document.getElementById("dead-letter-count").textContent =
    `${list.count}${list.truncated ? "+" : ""}`;
  if (!list.dead_letters.length) {
    root.append(el("p", { class: "empty" }, "No dead letters."));
    return;
  }
  const byReason = new Map();
  for (const letter of list.dead_letters) {
    const reason = letter.reason || "unknown";
    if (!byReason.has(reason)) byReason.set(reason, []);
    byReason.get(reason).push(letter);
  }
  for (const [reason, letters] of byReason) {
    const heading = el("h3", {}, `${reason} (${letters.length}) `);
    if (reason !== "unknown") heading.append(button(`Replay all ${reason}`, () => replay({ reason })));
    const body = el("tbody");
    for (const letter of letters) {
      const row = el("tr", { class: "dead-letter", "data-key": letter.key || "", "data-flow": letter.flow || "" },
        el("td", {}, text(letter.flow)), el("td", { class: "record" }, text(letter.record)),
        el("td", { class: "field" }, text(letter.field)), el("td", { class: "rule" }, text(letter.rule)),
        el("td", { class: "num" }, text(letter.attempt)), el("td", {}, when(letter.enqueued_at)));
      const cell = el("td");
      if (letter.flow && letter.key) {
        cell.append(button("Replay", () => replay({ flow: letter.flow, key: letter.key, reason: letter.reason }),
          { class: "replay" }));
      }
      row.append(cell);
      body.append(row);
    }
    root.append(heading, el("table", {}, el("thead", {}, el("tr", {},
      ...["flow", "record", "field", "rule", "attempt", "since", ""].map((h) => el("th", {}, h)))), body));
  }
}

// -- conflicts --------------------------------------------------------------------------------------------------

function renderConflicts(conflicts) {
  const root = clear(document.getElementById("conflicts"));
  document.getElementById("conflict-count").textContent = String(conflicts.length);
  if (!conflicts.length) {
    root.append(el("p", { class: "empty" }, "No open conflicts."));
    return;
  }
  for (const conflict of conflicts) {
    const systems = Object.keys(conflict.keys);
    for (const field of conflict.fields) {
      for (const system of Object.keys(field.values)) if (!systems.includes(system)) systems.push(system);
    }
    const keys = systems.map((s) => `${s} ${conflict.keys[s] === undefined ? "—" : conflict.keys[s]}`).join(" / ");
    const box = el("div", { class: "conflict", "data-key": conflict.key, "data-flow": conflict.flow },
      el("h3", {}, `${conflict.pair}: ${keys}`), el("div", { class: "muted" }, `since ${when(conflict.since)}`));
    if (conflict.detail) box.append(el("p", {}, conflict.detail));
    if (conflict.fields.length) {
      box.append(el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "field"), ...systems.map((s) => el("th", {}, s)))),
        el("tbody", {}, ...conflict.fields.map((f) => el("tr", {}, el("td", {}, f.field),
          ...systems.map((s) => el("td", {}, text(f.values[s]))))))));
    }
    const actions = el("div", { class: "actions" });
    for (const system of systems) {
      actions.append(button(`Take ${system}`, async () => {
        await api("conflicts/resolve", { flow: conflict.flow, key: conflict.key, take: system });
        notice(`${conflict.key}: ${system}'s values sent`);
        await refresh();
      }, { class: "take", "data-system": system }));
    }
    box.append(actions);
    root.append(box);
  }
}

// -- change requests --------------------------------------------------------------------------------------------

function renderRequests(requests) {
  const root = clear(document.getElementById("requests"));
  document.getElementById("request-count").textContent = String(requests.length);
  if (!requests.length) {
    root.append(el("p", { class: "empty" }, "No change requests."));
    return;
  }
  for (const request of requests) {
    const box = el("div", { class: "conflict", "data-key": request.key, "data-flow": request.flow },
      el("h3", {}, `${request.flow}: ${request.key} (${request.op})`),
      el("div", { class: "muted" }, `since ${when(request.since)}`),
      el("table", {}, el("thead", {}, el("tr", {}, ...["field", "before", "after"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...request.fields.map((f) => el("tr", {}, el("td", {}, `${f.field} → ${f.to}`),
          el("td", {}, text(f.before)), el("td", {}, text(f.after)))))),
      el("div", { class: "actions" },
        button("Approve", async () => {
          await api("requests/approve", { flow: request.flow, key: request.key });
          await refresh();
        }),
        button("Reject", async () => {
          const reason = prompt(`Why reject ${request.key}?`);
          if (!reason) return;
          await api("requests/reject", { flow: request.flow, key: request.key, reason });
          await refresh();
        })));
    root.append(box);
  }
}

// -- runs -------------------------------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, label) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (label !== undefined) node.textContent = label;
  return node;
}

function renderRunChart(runs) {
  const root = clear(document.getElementById("runs-chart"));
  const shown = runs.slice(0, 40).reverse(); // oldest on the left
  if (!shown.length) {
    root.append(el("p", { class: "empty" }, "No runs yet."));
    return;
  }
  const width = 760, height = 160, left = 40, bottom = 20, top = 10;
  const most = Math.max(1, ...shown.map((r) => Math.max(r.applied, r.dead_lettered)));
  const step = (width - left) / shown.length;
  const bar = Math.min(18, Math.max(2, step / 2 - 2));
  const scale = (n) => ((height - bottom - top) * n) / most;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", id: "run-chart",
    "aria-label": "applied and failed changes per run" });
  chart.append(svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#d0d7de" }));
  chart.append(svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, String(most)));
  chart.append(svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, "0"));
  shown.forEach((run, i) => {
    const x = left + i * step + 1;
    const applied = svg("rect", { x, y: height - bottom - scale(run.applied), width: bar,
      height: scale(run.applied), fill: "#1a7f37", class: "applied" });
    applied.append(svg("title", {}, `${run.flow} ${when(run.started_at || run.finished_at)}: applied ${run.applied}`));
    const failed = svg("rect", { x: x + bar + 1, y: height - bottom - scale(run.dead_lettered), width: bar,
      height: scale(run.dead_lettered), fill: "#cf222e", class: "failed" });
    failed.append(svg("title", {}, `${run.flow} ${when(run.started_at || run.finished_at)}: dead-lettered ${run.dead_lettered}`));
    chart.append(applied, failed);
  });
  // When the oldest and the newest run shown started, under the axis.
  const label = (run) => when(run.started_at || run.finished_at).slice(5, 16);
  chart.append(svg("text", { x: left, y: height - 4 }, label(shown[0])));
  if (shown.length > 1) {
    chart.append(svg("text", { x: width, y: height - 4, "text-anchor": "end" }, label(shown[shown.length - 1])));
  }
  root.append(chart, el("div", { class: "legend" },
    el("span", {}, el("span", { class: "swatch applied" }), "applied"),
    el("span", {}, el("span", { class: "swatch failed" }), "dead-lettered")));
}

function renderRuns(runs) {
  renderRunChart(runs);
  const body = clear(document.querySelector("#runs tbody"));
  for (const run of runs.slice(0, 50)) {
    body.append(el("tr", { "data-run": run.run_id },
      el("td", {}, run.flow), el("td", {}, when(run.started_at)), el("td", {}, when(run.finished_at)),
      el("td", { class: "num" }, run.pulled), el("td", { class: "num" }, run.applied),
      el("td", { class: "num" }, run.skipped), el("td", { class: "num" }, run.retried),
      el("td", { class: "num" + (run.dead_lettered ? " bad" : "") }, run.dead_lettered),
      el("td", { class: "bad" }, run.error || "")));
  }
}

// -- refresh ----------------------------------------------------------------------------------------------------

async function refresh() {
  try {
    const [flows, letters, conflicts, requests, runs] = await Promise.all([
      api("flows"), api("dead-letters"), api("conflicts"), api("requests"), api("runs?busy=true")]);
    renderFlows(flows);
    renderDeadLetters(letters);
    renderConflicts(conflicts.conflicts);
    renderRequests(requests.requests);
    renderRuns(runs.runs);
    document.body.dataset.loaded = String(Date.now());
  } catch (error) {
    if (error.status === 401) {
      notice(sessionStorage.getItem(TOKEN_KEY) === null && location.pathname.startsWith("/api/")
        ? "Not signed in: open /.auth/login/aad?post_login_redirect_uri=/api/console" : error.message, true);
    } else {
      notice(error.message, true);
    }
  }
}

document.getElementById("refresh").addEventListener("click", refresh);
refresh();
