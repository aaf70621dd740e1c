// The dashboard: polls /api/overview every second and redraws. No framework, no build step.
"use strict";

const POLL_MS = 1000;
const RECENT_ROWS = 15;
// Histogram upper bounds in seconds, as gateway/admin/metrics.py DURATION_BUCKETS.
const BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
let previous = null; // {time, total, buckets}

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child === null || child === undefined ? "" : child);
  return node;
}

function quantile(buckets, q) {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    const count = buckets[i];
    if (count && seen + count >= rank) {
      if (i === BOUNDS.length) return BOUNDS[BOUNDS.length - 1];
      const lower = i ? BOUNDS[i - 1] : 0;
      return lower + (BOUNDS[i] - lower) * (rank - seen) / count;
    }
    seen += count;
  }
  return BOUNDS[BOUNDS.length - 1];
}

function ms(seconds) {
  if (seconds === null) return "–";
  return seconds < 0.01 ? (seconds * 1000).toFixed(2) + " ms" : (seconds * 1000).toFixed(1) + " ms";
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return seconds < 1 ? "just now" : seconds.toFixed(0) + " s ago";
}

function render(view) {
  const metrics = view.metrics;
  const total = metrics.requests.reduce((sum, row) => sum + row[3], 0);
  const now = Date.now();
  // Rates and percentiles over the last poll interval; the totals since start before that.
  let windowBuckets = metrics.buckets;
  if (previous) {
    const seconds = (now - previous.time) / 1000;
    $("rps").textContent = seconds > 0 ? ((total - previous.total) / seconds).toFixed(1) : "–";
    const delta = metrics.buckets.map((n, i) => n - (previous.buckets[i] || 0));
    if (delta.some((n) => n > 0)) windowBuckets = delta;
  }
  previous = { time: now, total, buckets: metrics.buckets };
  $("total-requests").textContent = total;
  $("p50").textContent = ms(quantile(windowBuckets, 0.5));
  $("p99").textContent = ms(quantile(windowBuckets, 0.99));
  $("connections").textContent = view.connections;
  const lookups = view.cache.hits + view.cache.misses;
  $("cache-ratio").textContent = lookups ? (100 * view.cache.hits / lookups).toFixed(0) + " %" : "–";
  $("processes").textContent = view.processes.length + " gateway process(es)";

  const codes = {};
  for (const [, , code, n] of metrics.requests) codes[code] = (codes[code] || 0) + n;
  $("codes").replaceChildren(...Object.keys(codes).sort().map((code) =>
    el("span", { class: "code c" + String(code)[0], "data-code": code }, code + ": " + codes[code])));

  const upstreamRows = [];
  for (const pool of view.upstreams) {
    for (const server of pool.servers) {
      upstreamRows.push(el("tr", { class: "server", "data-upstream": pool.name, "data-url": server.url },
        el("td", {}, pool.name), el("td", {}, server.url),
        el("td", {}, el("span", { class: "state " + server.state }, server.state)),
        el("td", {}, server.in_flight), el("td", {}, server.failures),
        el("td", {}, ago(server.last_check)), el("td", {}, server.last_error || "")));
    }
  }
  $("upstreams").tBodies[0].replaceChildren(...upstreamRows);

  $("certificates").tBodies[0].replaceChildren(...view.certificates.map((cert) => {
    const days = Math.floor((Date.parse(cert.not_after) - now) / 86400000);
    return el("tr", { class: "certificate" }, el("td", {}, cert.names.join(", ")),
      el("td", {}, cert.not_after.slice(0, 10)), el("td", { class: "days-left" }, days),
      el("td", {}, cert.source));
  }));

  const cache = view.cache;
  const items = [["entries", cache.entries], ["bytes", cache.bytes], ["hits", cache.hits],
    ["misses", cache.misses]];
  for (const [result, n] of Object.entries(cache.results || {})) items.push(["X-Cache " + result, n]);
  $("cache").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));

  $("recent").tBodies[0].replaceChildren(...view.metrics.recent.slice(-RECENT_ROWS).reverse().map((r) =>
    el("tr", {}, el("td", {}, new Date(r.time * 1000).toLocaleTimeString()), el("td", {}, r.method),
      el("td", { class: "target", title: r.target }, r.target),
      el("td", { class: "s" + String(r.status)[0] }, r.status),
      el("td", {}, (r.duration * 1000).toFixed(1)), el("td", {}, r.upstream), el("td", {}, r.bytes))));
}

async function poll() {
  try {
    const response = await fetch("/api/overview", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    $("status").textContent = "live";
    $("status").className = "status ok";
  } catch (error) {
    $("status").textContent = "cannot reach the admin API: " + error.message;
    $("status").className = "status error";
  }
  setTimeout(poll, POLL_MS);
}

poll();
