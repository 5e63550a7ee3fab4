/* Overview: totals, charts by group and the top spenders for one time range, from
   GET /api/overview. The range and grouping live in the URL so a view can be linked. */
"use strict";

(() => {
  const {el, api, notice, count, compact, money, ms, percent, query, setQuery} = Steward;
  const RANGES = ["1h", "24h", "7d", "30d"];
  const PALETTE = ["#4f46e5", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6",
                   "#ec4899", "#84cc16", "#a16207"];
  const OTHER_COLOR = "#94a3b8";
  const API_BUCKETS = ["(other)", "(untagged)"];
  const rangeButtons = document.querySelectorAll("#range button");
  const groupSelect = document.getElementById("group");
  const charts = new Map();  // chart name -> uPlot
  let generation = 0;

  function state() {
    const q = query();
    const range = RANGES.includes(q.get("range")) ? q.get("range") : "24h";
    return {range, group: q.get("group") || "model"};
  }

  function ensureGroupOption(value) {
    if ([...groupSelect.options].some((o) => o.value === value)) return;
    const label = value.startsWith("tag:") ? `Tag: ${value.slice(4)}` : value;
    groupSelect.append(el("option", {value, text: label}));
  }

  function showControls({range, group}) {
    for (const button of rangeButtons) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
    ensureGroupOption(group);
    groupSelect.value = group;
  }

  async function loadTagGroups() {
    try {
      const filters = await api("/api/filters");
      for (const name of Object.keys(filters.tags || {}).sort()) ensureGroupOption(`tag:${name}`);
      groupSelect.value = state().group;
    } catch (error) {
      notice(`Could not load the tag list: ${error.message}`);
    }
  }

  function setTile(metric, value, text, sub, bad) {
    const tile = document.querySelector(`.tile[data-metric="${metric}"]`);
    tile.dataset.value = value === null || value === undefined ? "" : String(value);
    tile.querySelector(".value").textContent = text;
    tile.querySelector(".value").title = text;
    tile.querySelector(".sub").textContent = sub || "";
    tile.classList.toggle("bad", Boolean(bad));
  }

  function renderTotals(t) {
    const requests = Number(t.requests || 0);
    const cost = Number(t.cost || 0);
    setTile("requests", t.requests, count(t.requests),
            `${count(t.errors)} error${t.errors === 1 ? "" : "s"}`);
    setTile("cost", t.cost, money(t.cost),
            requests ? `${money(cost / requests)} per request` : "");
    setTile("error_rate", t.error_rate, percent(t.error_rate),
            `${count(t.errors)} of ${count(t.requests)}`, t.error_rate >= 0.05);
    setTile("latency_p50_ms", t.latency_p50_ms, ms(t.latency_p50_ms), "median, whole request");
    setTile("latency_p95_ms", t.latency_p95_ms, ms(t.latency_p95_ms), "95th percentile");
    setTile("ttft_p50_ms", t.ttft_p50_ms, ms(t.ttft_p50_ms),
            t.ttft_p95_ms === null || t.ttft_p95_ms === undefined ? "streams only"
              : `p95 ${ms(t.ttft_p95_ms)}`);
    setTile("input_tokens", t.input_tokens, count(t.input_tokens), "cached included");
    setTile("output_tokens", t.output_tokens, count(t.output_tokens), "reasoning included");
    setTile("cache_read_tokens", t.cache_read_tokens, count(t.cache_read_tokens),
            `${count(t.cache_write_tokens)} written to cache`);
    setTile("reasoning_tokens", t.reasoning_tokens, count(t.reasoning_tokens), "");
  }

  /* The API sends at most ten groups (busiest first) and sums the rest into "(other)";
     "(other)" and "(untagged)" are drawn in grey. */
  function colored(groups) {
    let next = 0;
    return groups.map((g) => ({group: g, color: API_BUCKETS.includes(g.name) ? OTHER_COLOR
      : PALETTE[next++ % PALETTE.length]}));
  }

  function lines(groups, metric) {
    return colored(groups).map(({group, color}) => ({name: group.name, color,
                                                     values: metric(group)}));
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function drawChart(name, times, lines, format) {
    const figure = document.querySelector(`.chart[data-chart="${name}"]`);
    const plot = figure.querySelector(".plot");
    const old = charts.get(name);
    if (old) { old.destroy(); charts.delete(name); }
    plot.replaceChildren();
    if (!times.length || !lines.length) {
      plot.append(el("div", {class: "empty-chart", text: "No requests in this range"}));
      return;
    }
    const axis = {stroke: cssVar("--ink-3"), grid: {stroke: cssVar("--line-2"), width: 1},
                  ticks: {stroke: cssVar("--line"), width: 1}, font: "11px system-ui, sans-serif"};
    const sparse = times.length > 0 && lines.every((l) => l.values.filter((v) => v).length <= 3);
    const options = {
      width: Math.max(plot.clientWidth, 200),
      height: 220,
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true}, y: {range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1]}},
      axes: [axis, {...axis, size: 56, values: (u, splits) => splits.map((v) => format.axis(v))}],
      legend: {live: true},
      series: [{value: (u, v) => (v === null ? "–" : Steward.when(v))},
               ...lines.map((line) => ({
                 label: line.name, stroke: line.color, width: 1.75,
                 fill: format.fill ? `${line.color}14` : undefined,
                 spanGaps: format.spanGaps, points: {show: sparse || format.points, size: 5},
                 value: (u, v) => (v === null || v === undefined ? "–" : format.value(v)),
               }))],
    };
    const chart = new uPlot(options, [times, ...lines.map((l) => l.values)], plot);
    charts.set(name, chart);
  }

  function renderCharts(series) {
    const times = series.t || [];
    const groups = series.groups || [];
    const counts = {axis: compact, value: count, spanGaps: false, fill: true};
    drawChart("cost", times, lines(groups, (g) => g.cost),
              {axis: (v) => money(v), value: money, spanGaps: false, fill: true});
    drawChart("requests", times, lines(groups, (g) => g.requests), counts);
    drawChart("tokens", times, lines(groups, (g) => g.input_tokens.map(
      (v, i) => (v || 0) + (g.output_tokens[i] || 0))), counts);
    drawChart("latency", times, lines(groups, (g) => g.latency_p50_ms),
              {axis: ms, value: ms, spanGaps: true, points: true});
  }

  function renderTop(id, rows, filter) {
    const body = document.querySelector(`#${id} tbody`);
    body.replaceChildren();
    if (!rows || !rows.length) {
      body.append(el("tr", {}, el("td", {colspan: 3, class: "subtle", text: "Nothing yet"})));
      return;
    }
    const top = Math.max(...rows.map((r) => Number(r.cost || 0)), 0);
    for (const row of rows) {
      const link = `/requests?${new URLSearchParams({[filter]: row.name})}`;
      const share = top > 0 ? Math.max(2, (Number(row.cost || 0) / top) * 100) : 0;
      body.append(el("tr", {dataset: {name: row.name}},
        el("td", {}, el("a", {class: "name", href: link, title: row.name, text: row.name}),
           el("div", {class: "bar", style: `width:${share.toFixed(1)}%`})),
        el("td", {class: "num", text: count(row.requests)}),
        el("td", {class: "num", dataset: {value: row.cost}, text: money(row.cost)})));
    }
  }

  function describePeriod(data) {
    const period = document.getElementById("period");
    if (data.from === undefined || data.to === undefined) { period.textContent = ""; return; }
    const step = data.step ? ` · ${Steward.duration(data.step)} per point` : "";
    period.textContent = `${Steward.when(data.from)} – ${Steward.when(data.to)}${step}`;
  }

  async function load() {
    const current = state();
    showControls(current);
    const mine = ++generation;
    document.body.dataset.ready = "";
    try {
      const data = await api("/api/overview", current);
      if (mine !== generation) return;  // a newer choice was made meanwhile
      notice("");
      describePeriod(data);
      renderTotals(data.totals || {});
      renderCharts(data.series || {});
      const top = data.top || {};
      renderTop("top-keys", top.keys, "key");
      renderTop("top-models", top.models, "model");
      renderTop("top-tags", top.tags, "tag");
      document.body.dataset.ready = `${current.range}|${current.group}`;
    } catch (error) {
      if (mine === generation) notice(`Could not load the overview: ${error.message}`);
    }
  }

  function choose(change) {
    setQuery({...state(), ...change}, true);
    load();
  }

  for (const button of rangeButtons) {
    button.addEventListener("click", () => choose({range: button.dataset.range}));
  }
  groupSelect.addEventListener("change", () => choose({group: groupSelect.value}));
  window.addEventListener("popstate", load);
  new ResizeObserver(() => {
    for (const chart of charts.values()) {
      const width = chart.root.parentElement.clientWidth;
      if (width && Math.abs(width - chart.width) > 2) chart.setSize({width, height: 220});
    }
  }).observe(document.querySelector(".charts"));

  loadTagGroups();
  load();
})();
