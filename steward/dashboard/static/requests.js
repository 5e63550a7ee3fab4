/* Requests: newest first from GET /api/requests, filtered, a page at a time with the API's
   cursor. Filters and the cursor live in the URL, so the back button returns to a page. */
"use strict";

(() => {
  const {el, api, notice, count, money, ms, when, statusBadge, chips, query, setQuery} = Steward;
  const FIELDS = ["key", "model", "provider", "status", "tag", "since", "min_cost",
                  "min_latency_ms"];
  const SINCE = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400};
  const PAGE = 50;
  const form = document.getElementById("filters");
  const body = document.querySelector("#requests tbody");
  const older = document.getElementById("older");
  const newest = document.getElementById("newest");
  let generation = 0;
  let next = null;

  function ensureOption(select, value, label) {
    if (!value || [...select.options].some((o) => o.value === value)) return;
    select.append(el("option", {value, text: label || value}));
  }

  function fillForm() {
    const q = query();
    for (const name of FIELDS) {
      const input = form.elements[name];
      const value = q.get(name) || "";
      if (input.tagName === "SELECT") ensureOption(input, value);
      input.value = value;
    }
  }

  async function loadFilters() {
    try {
      const filters = await api("/api/filters");
      const add = (name, values) => {
        for (const value of [...(values || [])].sort()) ensureOption(form.elements[name], value);
      };
      add("key", filters.keys);
      add("model", filters.models);
      add("provider", filters.providers);
      const tags = [];
      for (const [name, values] of Object.entries(filters.tags || {})) {
        for (const value of values) tags.push(`${name}=${value}`);
      }
      add("tag", tags);
      fillForm();
    } catch (error) {
      notice(`Could not load the filter lists: ${error.message}`);
    }
  }

  function row(record) {
    const href = `/requests/${encodeURIComponent(record.id)}`;
    const tokens = `${count(record.input_tokens)} / ${count(record.output_tokens)}`;
    const status = statusBadge(record.status);
    return el("tr", {dataset: {id: record.id}, onclick: (event) => {
      if (!event.target.closest("a")) location.assign(href);
    }},
      el("td", {class: "time"}, el("a", {href, title: record.ts, text: when(record.ts)})),
      el("td", {text: record.key_name || record.api_key_id || "–"}),
      el("td", {class: "model", title: record.response_model || record.model || "",
                text: record.model || "–"}),
      el("td", {class: "subtle", text: record.provider || "–"}),
      el("td", {}, status, record.stream ? el("span", {class: "chip", text: "stream"}) : null),
      el("td", {class: "num", text: tokens}),
      el("td", {class: "num", text: money(record.cost)}),
      el("td", {class: "num", text: ms(record.latency_ms)}),
      el("td", {}, chips(record.tags)));
  }

  async function load() {
    fillForm();
    const q = query();
    const params = {limit: q.get("limit") || PAGE, cursor: q.get("cursor")};
    for (const name of FIELDS) if (name !== "since") params[name] = q.get(name);
    const since = SINCE[q.get("since")];
    if (since) params.from = Math.floor(Date.now() / 1000) - since;
    const mine = ++generation;
    document.body.dataset.ready = "";
    try {
      const data = await api("/api/requests", params);
      if (mine !== generation) return;
      notice("");
      const records = data.requests || [];
      body.replaceChildren(...records.map(row));
      document.getElementById("empty").hidden = records.length > 0;
      next = data.next || null;
      older.disabled = !next;
      newest.disabled = !q.get("cursor");
      document.getElementById("shown").textContent = records.length
        ? `${count(records.length)} request${records.length === 1 ? "" : "s"}`
          + (q.get("cursor") ? " (older page)" : "") : "";
      document.body.dataset.ready = q.toString() || "all";
    } catch (error) {
      if (mine === generation) notice(`Could not load requests: ${error.message}`);
    }
  }

  /* The form's filters, and the page size when the URL sets one (?limit=). */
  function filters() {
    const values = {limit: query().get("limit")};
    for (const name of FIELDS) values[name] = form.elements[name].value.trim();
    return values;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setQuery(filters(), true);
    load();
  });
  form.addEventListener("change", (event) => {
    if (event.target.tagName === "SELECT") form.requestSubmit();
  });
  form.addEventListener("reset", (event) => {
    event.preventDefault();
    setQuery({limit: query().get("limit")}, true);
    load();
  });
  older.addEventListener("click", () => {
    if (!next) return;
    setQuery({...filters(), cursor: next}, true);
    load();
    window.scrollTo({top: 0});
  });
  newest.addEventListener("click", () => {
    setQuery(filters(), true);
    load();
  });
  window.addEventListener("popstate", load);

  loadFilters();
  load();
})();
