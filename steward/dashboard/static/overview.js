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

  /* Where the cursor is, the values of that point: time, then each group's, largest first. */
  function tooltipPlugin(lines, format) {
    let tip;
    return {hooks: {
      init: (u) => {
        tip = el("div", {class: "tip", hidden: true});
        u.over.append(tip);
        u.over.addEventListener("mouseleave", () => { tip.hidden = true; });
      },
      setCursor: (u) => {
        const i = u.cursor.idx;
        if (i === null || i === undefined || u.cursor.left < 0) { tip.hidden = true; return; }
        const rows = lines.map((l) => [l, l.values[i]])
          .filter(([, v]) => v !== null && v !== undefined && v !== 0)
          .sort((x, y) => y[1] - x[1]);
        tip.replaceChildren(el("div", {class: "tip-time", text: Steward.when(u.data[0][i])}),
          ...(rows.length ? rows.slice(0, 8).map(([line, v]) => el("div", {class: "tip-row"},
            el("span", {class: "swatch", style: `background:${line.color}`}),
            el("span", {class: "tip-name", text: line.name}),
            el("span", {class: "tip-value", text: format.value(v)})))
            : [el("div", {class: "subtle", text: "no requests"})]));
        tip.hidden = false;
        const left = u.cursor.left + 14;
        const flip = left + tip.offsetWidth > u.over.clientWidth;
        tip.style.left = `${flip ? u.cursor.left - tip.offsetWidth - 14 : left}px`;
        tip.style.top = `${Math.max(0, Math.min(u.cursor.top - 10,
                                                u.over.clientHeight - tip.offsetHeight))}px`;
      },
    }};
  }

  /* Additive figures (spend, requests, tokens) as stacked bars: each group's bar is drawn
     from zero to its running total, tallest first, so each shows as its own band. Latency,
     which does not add up, as lines. */
  function drawChart(name, times, lines, format) {
    const figure = document.querySelector(`.chart[data-chart="${name}"]`);
    const plot = figure.querySelector(".plot");
    const old = charts.get(name);
    if (old) { old.destroy(); charts.delete(name); }
    plot.replaceChildren();
    const any = lines.some((l) => l.values.some((v) => v !== null && v !== 0));
    if (!times.length || !any) {
      plot.append(el("div", {class: "empty-chart", text: "No requests in this range"}));
      return;
    }
    const axis = {stroke: cssVar("--ink-3"), grid: {stroke: cssVar("--line-2"), width: 1},
                  ticks: {stroke: cssVar("--line"), width: 1}, font: "11px system-ui, sans-serif"};
    const step = times.length > 1 ? times[1] - times[0] : 60;
    let data;
    let series;
    if (format.stacked) {
      const bars = uPlot.paths.bars({size: [0.82, 40], gap: 0});
      let running = times.map(() => 0);
      const totals = lines.map((line) => {
        running = running.map((v, i) => v + (line.values[i] || 0));
        return running;
      });
      const order = lines.map((_, i) => lines.length - 1 - i);
      data = [times, ...order.map((i) => totals[i])];
      series = order.map((i) => ({label: lines[i].name, stroke: lines[i].color,
                                  fill: lines[i].color, width: 0, paths: bars,
                                  points: {show: false}}));
    } else {
      data = [times, ...lines.map((l) => l.values)];
      series = lines.map((line) => ({label: line.name, stroke: line.color, width: 1.75,
                                     spanGaps: true, points: {show: true, size: 4}}));
    }
    const options = {
      width: Math.max(plot.clientWidth, 200),
      height: 220,
      legend: {show: false},
      cursor: {y: false, drag: {x: false, y: false}, points: {show: !format.stacked}},
      scales: {x: {time: true, range: (u, min, max) => [min - step / 2, max + step / 2]},
               y: {range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1]}},
      axes: [axis, {...axis, size: 60, values: (u, splits) => splits.map((v) => format.axis(v))}],
      series: [{}, ...series],
      plugins: [tooltipPlugin(lines, format)],
    };
    charts.set(name, new uPlot(options, data, plot));
  }

  function renderLegend(groups) {
    document.getElementById("legend").replaceChildren(...colored(groups).map(({group, color}) =>
      el("span", {class: "item", title: group.name},
         el("span", {class: "swatch", style: `background:${color}`}),
         el("span", {class: "name", text: group.name}))));
  }

  function renderCharts(series) {
    const times = series.t || [];
    const groups = series.groups || [];
    const stacked = (axisFormat, value) => ({axis: axisFormat, value, stacked: true});
    renderLegend(groups);
    drawChart("cost", times, lines(groups, (g) => g.cost), stacked(money, money));
    drawChart("requests", times, lines(groups, (g) => g.requests), stacked(compact, count));
    drawChart("tokens", times, lines(groups, (g) => g.input_tokens.map(
      (v, i) => (v || 0) + (g.output_tokens[i] || 0))), stacked(compact, count));
    drawChart("latency", times, lines(groups, (g) => g.latency_p50_ms), {axis: ms, value: ms});
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
