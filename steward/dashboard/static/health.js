/* Health: GET /api/health laid out as cards, one per part (spool and upload, bodies, price
   table, workers, budgets, the dashboard's index, the database). Known fields come first with
   plain labels; any other field is still shown, formatted by what its name says it is. */
"use strict";

(() => {
  const {el, api, notice, count, money, bytes, ago, duration} = Steward;
  const SECTIONS = {
    spool: ["Metadata spool and upload", ["upload_enabled", "backlog_bytes",
      "backlog_over_limit", "last_upload_at", "last_upload_status", "last_upload_attempt_at",
      "upload_failures", "upload_error", "held_records", "lost_records", "write_errors",
      "spool_error"]],
    bodies: ["Body storage", ["destination", "enabled", "queued", "queued_bytes", "pending",
      "held", "failing", "failures", "bucket_error", "lost", "refusing_low_space"]],
    pricing: ["Price table", ["version", "source", "age_seconds"]],
    workers: ["Workers", ["configured", "pid", "requests_served"]],
    budgets: ["Budgets", []],
    dashboard: ["Dashboard index", ["indexing_here", "indexed", "last_indexed_at", "error"]],
    database: ["Database", ["backend"]],
  };
  const LABELS = {upload_enabled: "Upload", backlog_bytes: "Backlog", queued: "Queued",
                  queued_bytes: "Queued bytes", pending: "Pending on disk",
                  held: "Held in memory", held_records: "Records held in memory",
                  pid: "PID", age_seconds: "Age", indexing_here: "Indexing in this process",
                  refusing_low_space: "Refusing (low disk space)", source: "Source"};
  // A true here is trouble; other booleans are plain facts (on/off).
  const BAD_WHEN_TRUE = /over_limit|failing|refusing/;
  // A count above zero here is trouble.
  const BAD_WHEN_POSITIVE = /^(lost|lost_records|write_errors|failures|upload_failures)$/;

  function label(name) {
    if (LABELS[name]) return LABELS[name];
    const text = name.replace(/_(seconds|ms|at)$/, "").replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function isMoney(name) {
    return /(^|_)(cost|spent|remaining|amount|limit|usd)($|_)/.test(name);
  }

  function badge(kind, text) {
    return el("span", {class: `badge ${kind}`, text});
  }

  function format(name, value) {
    if (value === null || value === undefined || value === "") {
      return el("span", {class: "subtle", text: "–"});
    }
    if (typeof value === "boolean") {
      if (BAD_WHEN_TRUE.test(name)) return value ? badge("bad", "yes") : badge("ok", "no");
      return value ? badge("ok", "yes") : badge("", "no");
    }
    if (/error/.test(name) && typeof value === "string") {
      return el("span", {class: "error-text", text: value});
    }
    if (typeof value === "number") {
      if (BAD_WHEN_POSITIVE.test(name) && value > 0) return badge("bad", count(value));
      if (/bytes$/.test(name)) return bytes(value);
      if (/(_at|_since)$/.test(name) && value > 1e9) {
        return el("span", {title: new Date(value * 1000).toISOString(), text: ago(value)});
      }
      if (/(age|seconds)$/.test(name)) return duration(value);
      if (/_ms$/.test(name)) return Steward.ms(value);
      if (isMoney(name)) return money(value);
      if (name === "pid") return String(value);
      return Number.isInteger(value) ? count(value) : String(+value.toFixed(4));
    }
    if (typeof value === "string") {
      if (isMoney(name) && /^-?\d+(\.\d+)?$/.test(value)) return money(value);
      return value;
    }
    return JSON.stringify(value);
  }

  function row(name, value) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      return Object.entries(value).map(([inner, v]) => row(`${name}_${inner}`, v)).flat();
    }
    if (Array.isArray(value)) value = value.length ? value.join(", ") : "none";
    return [el("tr", {dataset: {field: name}}, el("th", {text: label(name)}),
               el("td", {}, format(name, value)))];
  }

  function fields(object, order) {
    const names = [...order.filter((n) => n in object),
                   ...Object.keys(object).filter((n) => !order.includes(n)).sort()];
    return el("table", {class: "table kv"}, el("tbody", {},
      names.map((name) => row(name, object[name])).flat()));
  }

  /* Budgets: one row each, with how much of the limit is spent. */
  function budgets(items) {
    if (!items.length) {
      return el("p", {class: "subtle", text: "No budgets. Set one with `steward budgets set`."});
    }
    return el("table", {class: "table"},
      el("thead", {}, el("tr", {}, el("th", {text: "Scope"}), el("th", {class: "num", text: "Limit"}),
                         el("th", {class: "num", text: "Spent"}),
                         el("th", {class: "num", text: "Remaining"}))),
      el("tbody", {}, items.map((b) => {
        const used = Number(b.limit) > 0 ? Math.min(1, Number(b.spent) / Number(b.limit)) : 0;
        const kind = used >= 1 ? "bad" : used >= 0.8 ? "warn" : "";
        return el("tr", {dataset: {scope: b.scope}},
          el("td", {}, b.scope, el("div", {class: `meter ${kind}`},
                                   el("div", {style: `width:${(used * 100).toFixed(1)}%`}))),
          el("td", {class: "num", text: money(b.limit)}),
          el("td", {class: "num", text: money(b.spent)}),
          el("td", {class: "num", text: money(b.remaining)}));
      })));
  }

  function card(name, value) {
    const [title, order] = SECTIONS[name] || [label(name), []];
    let content;
    if (name === "budgets" && Array.isArray(value)) content = budgets(value);
    else if (value && typeof value === "object" && !Array.isArray(value)) {
      content = fields(value, order);
    } else content = fields({[name]: value}, []);
    return el("div", {class: "card", dataset: {section: name}}, el("h2", {text: title}), content);
  }

  /* One line on top: ready or not, and what is degraded. */
  function banner(data) {
    const degraded = Array.isArray(data.degraded) ? data.degraded : [];
    let kind = "ok";
    let text = "Ready: every part is healthy.";
    if (data.ready === false) {
      kind = "bad";
      text = "Not ready to serve.";
    } else if (degraded.length) {
      kind = "warn";
      text = `Serving, degraded: ${degraded.join(", ")}.`;
    }
    return el("div", {class: `banner ${kind} wide`, role: "status", dataset: {section: "status"},
                      text});
  }

  function render(data) {
    const names = Object.keys(data).filter((n) => n !== "ready" && n !== "degraded");
    const known = Object.keys(SECTIONS);
    names.sort((a, b) => (known.includes(a) ? known.indexOf(a) : known.length)
                         - (known.includes(b) ? known.indexOf(b) : known.length)
                         || a.localeCompare(b));
    document.getElementById("health").replaceChildren(banner(data),
                                                      ...names.map((n) => card(n, data[n])));
  }

  async function load() {
    document.body.dataset.ready = "";
    try {
      render(await api("/api/health"));
      notice("");
      document.getElementById("updated").textContent =
        `Updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.ready = "health";
    } catch (error) {
      notice(`Could not load health: ${error.message}`);
    }
  }

  document.getElementById("refresh").addEventListener("click", load);
  load();
})();
