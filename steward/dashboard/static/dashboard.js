/* Shared helpers for the dashboard's pages. Everything inserted into the page goes through
   el() / textContent: prompts, model names and tags are caller-controlled text, never HTML. */
"use strict";

const Steward = (() => {
  /* An element with attributes and children (strings become text nodes, null is skipped). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /* The JSON API, same origin with the session cookie; a lapsed session goes to /login. */
  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
    }
    const response = await fetch(url, {credentials: "same-origin",
                                       headers: {Accept: "application/json"}});
    if (response.status === 401) {
      location.assign("/login");
      throw new Error("sign in again");
    }
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      const error = new Error(message || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function notice(message) {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  const integer = new Intl.NumberFormat("en-US", {maximumFractionDigits: 0});

  function count(value) {
    if (value === null || value === undefined) return "–";
    return integer.format(Number(value));
  }

  /* Compact for chart axes: 1.2k, 3.4M. */
  function compact(value) {
    const n = Number(value);
    const abs = Math.abs(n);
    if (abs >= 1e9) return `${+(n / 1e9).toFixed(1)}B`;
    if (abs >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
    if (abs >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
    return `${+n.toFixed(2)}`;
  }

  /* US dollars with sensible decimals: cents above a dollar, more digits for fractions of a
     cent (a single small request costs $0.000375, and showing $0.00 would be a lie). */
  function money(value) {
    if (value === null || value === undefined || value === "") return "–";
    const n = Number(value);
    if (!Number.isFinite(n)) return String(value);
    const abs = Math.abs(n);
    let digits = 2;
    if (abs !== 0 && abs < 0.01) digits = 6;
    else if (abs !== 0 && abs < 1) digits = 4;
    const text = n.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: digits});
    return n < 0 ? `-$${text.slice(1)}` : `$${text}`;
  }

  function ms(value) {
    if (value === null || value === undefined) return "–";
    const n = Number(value);
    if (n >= 10000) return `${(n / 1000).toFixed(1)} s`;
    if (n >= 1000) return `${(n / 1000).toFixed(2)} s`;
    if (n >= 10) return `${integer.format(Math.round(n))} ms`;
    return `${n.toFixed(1)} ms`;
  }

  function percent(fraction) {
    if (fraction === null || fraction === undefined) return "–";
    const p = Number(fraction) * 100;
    if (p === 0) return "0%";
    if (p < 0.1) return "<0.1%";
    return `${p < 10 ? p.toFixed(1) : Math.round(p)}%`;
  }

  function bytes(value) {
    if (value === null || value === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = Number(value);
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
    return `${unit === 0 ? n : n.toFixed(1)} ${units[unit]}`;
  }

  /* "3 min ago" from epoch seconds, or an RFC 3339 string. */
  function ago(when) {
    if (when === null || when === undefined || when === "") return "never";
    const t = typeof when === "number" ? when * 1000 : Date.parse(when);
    if (!Number.isFinite(t)) return String(when);
    return duration((Date.now() - t) / 1000) + " ago";
  }

  function duration(seconds) {
    const s = Math.max(0, Number(seconds));
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 86400 * 2) return `${+(s / 3600).toFixed(1)} h`;
    return `${+(s / 86400).toFixed(1)} d`;
  }

  const dateTime = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"});

  function when(ts) {
    const t = typeof ts === "number" ? ts * 1000 : Date.parse(ts);
    return Number.isFinite(t) ? dateTime.format(new Date(t)) : String(ts);
  }

  function statusBadge(status) {
    let kind = "bad";
    if (status !== null && status !== undefined && status >= 200 && status < 300) kind = "ok";
    else if (status >= 400 && status < 500) kind = "warn";
    return el("span", {class: `badge ${kind}`, text: status === null || status === undefined
      ? "no status" : String(status)});
  }

  function chips(tags) {
    return Object.entries(tags || {}).map(([name, value]) =>
      el("span", {class: "chip", title: `${name}=${value}`, text: `${name}=${value}`}));
  }

  /* Query-string state, so a view can be linked and the back button works. */
  function query() {
    return new URLSearchParams(location.search);
  }

  function setQuery(params, push) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") search.set(name, value);
    }
    const text = search.toString();
    const url = location.pathname + (text ? `?${text}` : "");
    if (url === location.pathname + location.search) return;
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }

  return {el, api, notice, count, compact, money, ms, percent, bytes, ago, duration, when,
          statusBadge, chips, query, setQuery};
})();
