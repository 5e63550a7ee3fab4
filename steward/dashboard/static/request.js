/* One request: its metadata record (GET /api/requests/<id>) and its bodies as stored in the
   operator's bucket (GET /api/requests/<id>/body): the prompt and answer as a conversation,
   then the JSON pretty-printed. Prompt text is shown as text, never interpreted. */
"use strict";

(() => {
  const {el, api, notice, count, money, ms, statusBadge, chips} = Steward;
  const id = document.getElementById("request-id").dataset.id;

  function pretty(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  /* The text of a message's content in any provider's shape: a string, or parts. */
  function textOf(content) {
    if (content === null || content === undefined) return "";
    if (typeof content === "string") return content;
    if (Array.isArray(content)) return content.map(textOf).filter((t) => t !== "").join("\n");
    if (typeof content === "object") {
      if (typeof content.text === "string") return content.text;
      if (content.content !== undefined) return textOf(content.content);
      if (content.parts !== undefined) return textOf(content.parts);
      if (content.functionCall) return `[call ${content.functionCall.name}]`;
      if (content.type === "tool_use" || content.type === "function_call") {
        return `[call ${content.name || ""}]`;
      }
      if (content.type) return `[${content.type}]`;
    }
    return "";
  }

  /* [role, text] pairs of what was asked, for the request shapes Steward forwards. */
  function promptMessages(request) {
    if (!request || typeof request !== "object") {
      return request ? [["request", String(request)]] : [];
    }
    const out = [];
    const system = request.system ?? request.instructions ?? request.systemInstruction;
    if (system !== undefined && system !== null) out.push(["system", textOf(system)]);
    const messages = request.messages ?? request.contents;
    if (Array.isArray(messages)) {
      for (const m of messages) out.push([m.role || "user", textOf(m.content ?? m.parts ?? m)]);
    }
    if (request.input !== undefined) {
      if (Array.isArray(request.input) && request.input.every((m) => m && m.role)) {
        for (const m of request.input) out.push([m.role, textOf(m.content)]);
      } else {
        out.push(["input", textOf(request.input)]);
      }
    }
    if (request.prompt !== undefined) out.push(["prompt", textOf(request.prompt)]);
    return out;
  }

  /* The answer's text from a whole (not streamed) response in any provider's shape. */
  function answerText(response) {
    if (!response || typeof response !== "object") return response ? String(response) : "";
    if (response.error) {
      return typeof response.error === "object" ? response.error.message || pretty(response.error)
        : String(response.error);
    }
    if (Array.isArray(response.choices)) {
      return response.choices.map((c) => textOf(c.message ? c.message.content : c.text))
        .join("\n");
    }
    if (Array.isArray(response.candidates)) {
      return response.candidates.map((c) => textOf(c.content)).join("\n");
    }
    if (Array.isArray(response.output)) {
      return response.output.filter((o) => o.type === "message").map((o) => textOf(o.content))
        .join("\n");
    }
    if (response.output && response.output.message) return textOf(response.output.message.content);
    if (Array.isArray(response.content)) return textOf(response.content);
    return "";
  }

  function message(role, text) {
    const base = role.split(" ")[0];  // "assistant (streamed)" is the assistant
    const kind = ["user", "assistant", "system", "model", "error"].includes(base) ? base : "other";
    return el("div", {class: `message ${kind === "model" ? "assistant" : kind}`},
      el("div", {class: "role", text: role}),
      el("div", {class: "text", text: text || "(empty)"}));
  }

  function renderBody(data) {
    const prompt = document.getElementById("prompt");
    const response = document.getElementById("response");
    if (!data.available) {
      const reason = data.error || "no body was stored for this request";
      prompt.replaceChildren(el("p", {class: "subtle", text: `Body not available: ${reason}`}));
      response.closest(".card").hidden = true;
      for (const part of ["raw-request", "raw-response", "raw-headers"]) {
        document.getElementById(part).hidden = true;
      }
      return;
    }
    const request = data.request;
    const answer = data.stream ? data.response_text : answerText(data.response);
    const failed = !data.stream && data.response && typeof data.response === "object"
      && data.response.error;
    const asked = promptMessages(request);
    prompt.replaceChildren(...(asked.length ? asked.map(([role, text]) => message(role, text))
      : [el("p", {class: "subtle", text: "No prompt text in this request."})]));
    response.replaceChildren(
      answer ? message(failed ? "error" : data.stream ? "assistant (streamed)" : "assistant",
                       answer)
        : el("p", {class: "subtle", text: "No text in the response."}));
    document.querySelector("#raw-request pre").textContent = pretty(data.request);
    document.querySelector("#raw-response pre").textContent = pretty(data.response);
    document.querySelector("#raw-headers pre").textContent =
      pretty({request: data.request_meta, response: data.response_meta});
    document.querySelector("#raw-response summary").textContent =
      data.stream ? "Response body (stream events)" : "Response body (JSON)";
  }

  function time(ts) {
    return new Date(Date.parse(ts)).toLocaleTimeString(undefined, {hour12: false});
  }

  function day(ts) {
    return new Date(Date.parse(ts)).toLocaleDateString(undefined,
      {weekday: "short", year: "numeric", month: "short", day: "numeric"});
  }

  function tile(label, value, sub) {
    return el("div", {class: "tile"}, el("div", {class: "label", text: label}),
      el("div", {class: "value", title: value, text: value}),
      el("div", {class: "sub", text: sub || ""}));
  }

  function renderRecord(record) {
    document.getElementById("title").textContent =
      [record.provider, record.model].filter(Boolean).join(" · ") || "Request";
    document.title = `${record.model || "Request"} · Steward`;
    document.getElementById("badges").replaceChildren(...[
      statusBadge(record.status),
      record.stream ? el("span", {class: "badge", text: "stream"}) : null,
      record.endpoint ? el("span", {class: "badge", text: record.endpoint}) : null,
    ].filter(Boolean));
    document.getElementById("summary").replaceChildren(
      tile("When", time(record.ts), day(record.ts)),
      tile("Key", record.key_name || record.api_key_id || "–", record.api_key_uuid || ""),
      tile("Cost", money(record.cost), record.pricing_status || ""),
      tile("Latency", ms(record.latency_ms), record.ttft_ms !== null && record.ttft_ms !== undefined
        ? `first token ${ms(record.ttft_ms)}` : ""),
      tile("Input tokens", count(record.input_tokens),
           record.cache_read_tokens ? `${count(record.cache_read_tokens)} cached` : ""),
      tile("Output tokens", count(record.output_tokens),
           record.reasoning_tokens ? `${count(record.reasoning_tokens)} reasoning` : ""));
    // The record's own field order (the JSON API sorts keys), then anything the API adds.
    const order = document.getElementById("record").dataset.fields.split(",");
    const names = [...order.filter((n) => n in record),
                   ...Object.keys(record).filter((n) => !order.includes(n)).sort()];
    const rows = names.map((name) => [name, record[name]]).map(([name, value]) => {
      let cell;
      if (name === "tags") cell = el("td", {}, chips(value));
      else if (value === null || value === undefined) cell = el("td", {class: "null", text: "null"});
      else cell = el("td", {text: typeof value === "object" ? JSON.stringify(value) : String(value)});
      return el("tr", {dataset: {field: name}}, el("th", {text: name}), cell);
    });
    document.querySelector("#record tbody").replaceChildren(...rows);
  }

  async function load() {
    try {
      const {record} = await api(`/api/requests/${encodeURIComponent(id)}`);
      renderRecord(record);
    } catch (error) {
      notice(error.status === 404 ? `No request with id ${id}.`
        : `Could not load the request: ${error.message}`);
      document.body.dataset.ready = "error";
      return;
    }
    try {
      renderBody(await api(`/api/requests/${encodeURIComponent(id)}/body`));
    } catch (error) {
      renderBody({available: false, error: error.message});
    }
    document.body.dataset.ready = id;
  }

  load();
})();
