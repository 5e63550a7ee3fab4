/* Health: GET /api/health laid out as cards, one per part (spool, upload, bodies, pricing,
   workers, budgets). Values are formatted by what their names say they are: bytes, seconds,
   times, dollars; anything unknown is shown as it is, so a new field is never hidden. */
"use strict";

(() => {
  const {el, api, notice, count, money, bytes, ago, duration} = Steward;
  const TITLES = {spool: "Metadata spool", upload: "Metadata upload", bodies: "Body storage",
                  bucket: "Bucket", pricing: "Price table", prices: "Price table",
                  workers: "Workers", budgets: "Budgets", database: "Database",
                  index: "Dashboard index", dashboard: "Dashboard index"};
  const ORDER = ["spool", "upload", "bodies", "bucket", "pricing", "prices", "workers",
                 "budgets", "database"];

  /* A field's name as words; the unit suffix goes, since the value is formatted by it. */
  function label(name) {
    const text = name.replace(/_(seconds|ms|at)$/, "").replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function isMoney(name) {
    return /(^|_)(cost|spent|remaining|amount|limit|usd|budget)($|_)/.test(name);
  }

  function format(name, value) {
    if (value === null || value === undefined) return el("span", {class: "subtle", text: "–"});
    if (typeof value === "boolean") {
      const good = /error|fail|refus|held|stale|degraded/.test(name) ? !value : value;
      return el("span", {class: `badge ${good ? "ok" : "bad"}`, text: value ? "yes" : "no"});
    }
    if (/error/.test(name) && typeof value === "string" && value) {
      return el("span", {class: "error-text", text: value, style: "color: var(--bad)"});
    }
    if (typeof value === "number") {
      if (/bytes$/.test(name)) return bytes(value);
      if (/(^|_)(at|since|time|ts)$|^last_/.test(name) && value > 1e9) {
        return el("span", {title: new Date(value * 1000).toISOString(), text: ago(value)});
      }
      if (/(age|seconds|_s)$/.test(name)) return duration(value);
      if (/_ms$/.test(name)) return Steward.ms(value);
      if (isMoney(name)) return money(value);
      return Number.isInteger(value) ? count(value) : String(+value.toFixed(4));
    }
    if (typeof value === "string") {
      if (isMoney(name) && /^-?\d+(\.\d+)?$/.test(value)) return money(value);
      if (/(^|_)(at|since|time|ts)$|^last_/.test(name) && !Number.isNaN(Date.parse(value))
          && /^\d{4}-/.test(value)) {
        return el("span", {title: value, text: ago(value)});
      }
      return value;
    }
    return JSON.stringify(value);
  }

  function table(rows) {
    return el("table", {class: "table kv"}, el("tbody", {}, rows));
  }

  /* Rows of name/value, nested objects flattened with their path. */
  function kvRows(object, prefix) {
    const rows = [];
    for (const [name, value] of Object.entries(object)) {
      const path = prefix ? `${prefix} ${name}` : name;
      if (value && typeof value === "object" && !Array.isArray(value)) {
        rows.push(...kvRows(value, path));
      } else if (Array.isArray(value) && value.some((v) => v && typeof v === "object")) {
        rows.push(el("tr", {}, el("td", {colspan: 2}, el("div", {class: "subtle", text: label(path)}),
                                  list(value))));
      } else if (Array.isArray(value)) {
        rows.push(el("tr", {dataset: {field: path}}, el("th", {text: label(path)}),
                     el("td", {text: value.length ? value.join(", ") : "none"})));
      } else {
        rows.push(el("tr", {dataset: {field: path}}, el("th", {text: label(path)}),
                     el("td", {}, format(name, value))));
      }
    }
    return rows;
  }

  /* A list of objects (workers, budgets) as a table with one column per field. */
  function list(items) {
    if (!items.length) return el("p", {class: "subtle", text: "None."});
    const columns = [...new Set(items.flatMap((item) => Object.keys(item || {})))];
    return el("table", {class: "table"},
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", {text: label(c)})))),
      el("tbody", {}, items.map((item) => el("tr", {},
        columns.map((c) => el("td", {}, format(c, (item || {})[c])))))));
  }

  function card(name, value) {
    const title = TITLES[name] || label(name);
    let content;
    if (Array.isArray(value)) content = list(value);
    else if (value && typeof value === "object") content = table(kvRows(value, ""));
    else content = table([el("tr", {}, el("th", {text: label(name)}), el("td", {}, format(name, value)))]);
    const wide = Array.isArray(value) && value.length && Object.keys(value[0] || {}).length > 4;
    return el("div", {class: `card${wide ? " wide" : ""}`, dataset: {section: name}},
              el("h2", {text: title}), content);
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
    const root = document.getElementById("health");
    const rest = {...data};
    delete rest.ready;
    delete rest.degraded;
    const sections = Object.entries(rest).filter(([, v]) => v && typeof v === "object");
    const scalars = Object.entries(rest).filter(([, v]) => !(v && typeof v === "object"));
    sections.sort(([a], [b]) => {
      const ia = ORDER.indexOf(a) < 0 ? ORDER.length : ORDER.indexOf(a);
      const ib = ORDER.indexOf(b) < 0 ? ORDER.length : ORDER.indexOf(b);
      return ia - ib || a.localeCompare(b);
    });
    const cards = sections.map(([name, value]) => card(name, value));
    if (scalars.length) {
      cards.unshift(el("div", {class: "card", dataset: {section: "general"}},
                       el("h2", {text: "General"}), table(kvRows(Object.fromEntries(scalars), ""))));
    }
    if ("ready" in data || "degraded" in data) cards.unshift(banner(data));
    root.replaceChildren(...cards);
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
