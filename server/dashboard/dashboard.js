// fedlora hub dashboard: fetches the public JSON API and draws SVG charts. No dependencies,
// no build step. Every data point is an SVG element carrying data-round / data-series /
// data-value attributes, so tests (and curious people) can read the plotted values back.
// Text from the API is only ever set through textContent, never parsed as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const H = 220, M = { top: 24, right: 14, bottom: 30, left: 56 };
const PALETTE = ["#2c6fbb", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d",
  "#d4ac0d"];
const REFRESH_MS = 15000;

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function html(tag, text, parent, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  if (parent) parent.appendChild(node);
  return node;
}

async function api(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" } });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

// ------------------------------------------------------------------------- formatting
function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return Number.isInteger(v) ? String(v) : v.toPrecision(3).replace(/\.?0+$/, "");
}

function fmtBytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) { hi = lo + 1; }
  const step0 = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const start = Math.floor(lo / step) * step;
  const ticks = [+start.toPrecision(12)];
  while (ticks[ticks.length - 1] < hi - step * 1e-9) {
    ticks.push(+(ticks[ticks.length - 1] + step).toPrecision(12));
  }
  return ticks;
}

// ------------------------------------------------------------------------- chart frame
function width(figure) {
  return figure.classList.contains("wide") ? 940 : 460;
}

function frame(figure, name, rounds, yMax, yFormat, failed) {
  figure.querySelectorAll("svg").forEach((s) => s.remove());
  const W = width(figure);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, "data-chart": name, role: "img" });
  figure.appendChild(svg);
  const x0 = M.left, x1 = W - M.right, y0 = H - M.bottom, y1 = M.top;
  const xs = rounds.length ? rounds : [0];
  const lo = Math.min(...xs), hi = Math.max(...xs);
  const span = Math.max(hi - lo, 1);
  const pad = 0.5;
  const x = (r) => x0 + ((r - lo + pad) / (span + 2 * pad)) * (x1 - x0);
  const ticks = niceTicks(0, yMax || 1);
  const top = ticks[ticks.length - 1] || 1;
  const y = (v) => y0 - (v / top) * (y0 - y1);
  const axis = el("g", { class: "axis" }, svg);
  for (const t of ticks) {
    el("line", { x1: x0, x2: x1, y1: y(t), y2: y(t) }, axis);
    const label = el("text", { x: x0 - 6, y: y(t) + 3, "text-anchor": "end" }, axis);
    label.textContent = yFormat(t);
  }
  const every = Math.max(1, Math.ceil(rounds.length / 12));
  rounds.forEach((r, i) => {
    if (i % every) return;
    const label = el("text", { x: x(r), y: y0 + 14, "text-anchor": "middle" }, axis);
    label.textContent = String(r);
  });
  const xl = el("text", { x: (x0 + x1) / 2, y: H - 3, "text-anchor": "middle" }, axis);
  xl.textContent = "round";
  for (const r of failed) {
    if (r < lo - pad || r > hi + pad) continue;
    const m = el("line", { class: "failed-marker", x1: x(r), x2: x(r), y1: y0 - 6, y2: y0,
      "data-round": r }, svg);
    el("title", {}, m).textContent = `round ${r} failed`;
    const t = el("text", { x: x(r), y: y0 + 14, "text-anchor": "middle", class: "failed-label" },
      axis);
    t.textContent = String(r);
  }
  return { svg, x, y, y0, band: ((x1 - x0) / (span + 2 * pad)) * 0.7 };
}

function legend(svg, names) {
  const g = el("g", { class: "legend" }, svg);
  let off = M.left;
  names.forEach((n, i) => {
    el("rect", { x: off, y: 2, width: 9, height: 9, fill: PALETTE[i % PALETTE.length] }, g);
    const t = el("text", { x: off + 12, y: 10 }, g);
    t.textContent = n;
    off += 22 + 6.5 * n.length;
  });
}

function empty(figure, name, why) {
  figure.querySelectorAll("svg").forEach((s) => s.remove());
  const W = width(figure);
  const svg = el("svg", { viewBox: `0 0 ${W} 60`, "data-chart": name }, figure);
  el("text", { x: W / 2, y: 34, "text-anchor": "middle", class: "empty" }, svg).textContent = why;
}

// series: [{name, values: [[round, value|null], ...]}]
function lineChart(figure, name, series, { format = fmtNum, failed = [] } = {}) {
  const pts = series.flatMap((s) => s.values.filter(([, v]) => v !== null && v !== undefined));
  if (!pts.length) return empty(figure, name, "no data yet");
  const rounds = [...new Set(series.flatMap((s) => s.values.map(([r]) => r)))].sort((a, b) => a - b);
  const yMax = Math.max(...pts.map(([, v]) => v));
  const f = frame(figure, name, rounds, yMax, format, failed);
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const good = s.values.filter(([, v]) => v !== null && v !== undefined);
    if (good.length > 1) {
      const d = good.map(([r, v], j) => `${j ? "L" : "M"}${f.x(r).toFixed(1)},${f.y(v).toFixed(1)}`);
      el("path", { d: d.join(""), fill: "none", stroke: color, "stroke-width": 2,
        "data-series": s.name, class: "line" }, f.svg);
    }
    for (const [r, v] of good) {
      const c = el("circle", { cx: f.x(r).toFixed(1), cy: f.y(v).toFixed(1), r: 3, fill: color,
        class: "point", "data-series": s.name, "data-round": r, "data-value": v }, f.svg);
      el("title", {}, c).textContent = `${s.name}, round ${r}: ${format(v)}`;
    }
  });
  if (series.length > 1) legend(f.svg, series.map((s) => s.name));
}

// rows: [{round, parts: {key: value}}]
function stackedBars(figure, name, rows, keys, { format = fmtNum, failed = [], label = String } = {}) {
  const totals = rows.map((row) => keys.reduce((a, k) => a + (row.parts[k] || 0), 0));
  if (!rows.length || Math.max(...totals) <= 0) return empty(figure, name, "no data yet");
  const f = frame(figure, name, rows.map((r) => r.round), Math.max(...totals), format, failed);
  const w = Math.max(2, Math.min(f.band, 40));
  rows.forEach((row) => {
    let acc = 0;
    keys.forEach((k, i) => {
      const v = row.parts[k] || 0;
      if (v <= 0) return;
      const yTop = f.y(acc + v), yBot = f.y(acc);
      const rect = el("rect", { x: (f.x(row.round) - w / 2).toFixed(1), y: yTop.toFixed(1),
        width: w.toFixed(1), height: Math.max(0.5, yBot - yTop).toFixed(1),
        fill: PALETTE[i % PALETTE.length], class: "bar", "data-series": k,
        "data-round": row.round, "data-value": v }, f.svg);
      el("title", {}, rect).textContent = `${label(k)}, round ${row.round}: ${format(v)}`;
      acc += v;
    });
  });
  legend(f.svg, keys.map(label));
}

// ------------------------------------------------------------------------- page
function summaryCards(run, committed) {
  const box = document.getElementById("summary");
  box.replaceChildren();
  const last = committed[committed.length - 1];
  const cards = [
    ["run", run.name],
    ["rounds committed", run.rounds_committed],
    ["rounds failed", run.rounds_failed],
    ["latest adapter", last && last.community_version ? `v${last.community_version}` : "–"],
    ["ε spent", last ? fmtNum(last.epsilon) : "–"],
    ["loss", last ? fmtNum(last.loss) : "–"],
  ];
  for (const [k, v] of cards) {
    const c = html("div", null, box, "card");
    html("div", k, c, "k");
    html("div", v, c, "v");
  }
}

function roundsTable(rounds) {
  const body = document.querySelector("#rounds-table tbody");
  body.replaceChildren();
  for (const r of [...rounds].reverse().slice(0, 50)) {
    const tr = html("tr", null, body, r.status);
    tr.dataset.round = r.number;
    const cells = [r.attempt > 1 ? `${r.number} (attempt ${r.attempt})` : r.number, r.status, r.participants, r.dropouts, fmtNum(r.loss),
      fmtNum(r.epsilon), r.duration_s === null ? "–" : `${fmtNum(r.duration_s)} s`,
      r.community_version ? `v${r.community_version}` : "–", r.failure_reason || ""];
    for (const c of cells) html("td", c, tr);
  }
}

function render(run, rounds) {
  const committed = rounds.filter((r) => r.status === "committed");
  const failed = rounds.filter((r) => r.status === "failed").map((r) => r.number);
  const fig = (id) => document.getElementById(id);
  const series = (key, name) => ({ name, values: committed.map((r) => [r.number, r[key]]) });
  const opts = { failed };
  lineChart(fig("chart-loss"), "loss", [series("loss", "loss")], opts);
  lineChart(fig("chart-perplexity"), "perplexity", [series("perplexity", "perplexity")], opts);
  lineChart(fig("chart-epsilon"), "epsilon", [series("epsilon", "ε")], opts);
  lineChart(fig("chart-participants"), "participants",
    [series("participants", "participants"), series("dropouts", "dropouts")], opts);
  const ranks = [...new Set(committed.flatMap((r) => Object.keys(r.rank_mix)))]
    .sort((a, b) => a - b);
  stackedBars(fig("chart-rankmix"), "rankmix",
    committed.map((r) => ({ round: r.number, parts: r.rank_mix })), ranks.map(String),
    { failed, label: (k) => `r=${k}` });
  lineChart(fig("chart-bytes"), "bytes",
    [series("bytes_up", "up"), series("bytes_down", "down")], { format: fmtBytes, failed });
  const phases = [...new Set(committed.flatMap((r) => Object.keys(r.timings)))];
  stackedBars(fig("chart-timings"), "timings",
    committed.map((r) => ({ round: r.number, parts: r.timings })), phases,
    { format: (v) => fmtNum(v), failed });
  summaryCards(run, committed);
  roundsTable(rounds);
}

function chooseRun(runs) {
  const wanted = new URLSearchParams(location.search).get("run");
  const byId = runs.find((r) => String(r.id) === wanted);
  if (byId) return byId;
  const withRounds = runs.filter((r) => r.latest_round !== null);
  return (withRounds.length ? withRounds : runs)[(withRounds.length ? withRounds : runs).length - 1];
}

let current = null;

async function refresh() {
  const status = document.getElementById("status");
  try {
    const runs = await api("/v1/runs");
    const select = document.getElementById("run-select");
    if (!runs.length) {
      status.textContent = "no runs yet";
      document.body.dataset.state = "empty";
      return;
    }
    const run = current ? runs.find((r) => r.id === current) || chooseRun(runs) : chooseRun(runs);
    current = run.id;
    select.replaceChildren();
    for (const r of runs) {
      const o = html("option", `${r.name} (#${r.id})`, select);
      o.value = r.id;
      if (r.id === run.id) o.selected = true;
    }
    const rounds = await api(`/v1/runs/${run.id}/rounds`);
    render(run, rounds);
    status.classList.remove("error");
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.state = "ready";
    document.body.dataset.rounds = String(rounds.length);
  } catch (err) {
    status.textContent = `error: ${err.message}`;
    status.classList.add("error");
    document.body.dataset.state = "error";
  }
}

document.getElementById("run-select").addEventListener("change", (ev) => {
  current = Number(ev.target.value);
  const url = new URL(location.href);
  url.searchParams.set("run", String(current));
  history.replaceState(null, "", url);
  refresh();
});

refresh();
setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
