// tracegate's trace viewer: the recent traces (/traces) and one trace's waterfall
// (/traces/<trace_id>), both read from the JSON API under /v1/traces.
//
// Everything the API returns is untrusted: it reaches the page through textContent,
// element properties and the CSSOM only (no innerHTML, no style attributes, so the
// pages run under `Content-Security-Policy: default-src 'self'`).
//
// A trace may hold thousands of spans: rows are built once into a DocumentFragment
// with no layout read in between, offscreen rows skip layout (`content-visibility`
// in viewer.css), one delegated listener serves every row, and a span's details are
// built only when its row is first expanded.

const API = "/v1/traces";
const LIST_LIMIT = 100;
const AUTO_REFRESH_MS = 5000;
const SERVICE_COLORS = 8;
const MAX_INDENT = 32; // deeper spans keep this indentation; data-depth keeps the truth
const HEX32 = /^[0-9a-f]{32}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const EXAMPLE_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// ---------------------------------------------------------------- shared helpers

/** An element with an optional class and text; text always goes in as textContent. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** The 32-hex spelling of a trace id given in hex or UUID spelling; null otherwise. */
export function traceIdHex(value) {
  const id = String(value ?? "").trim().toLowerCase();
  if (HEX32.test(id)) return id;
  if (UUID.test(id)) return id.replaceAll("-", "");
  return null;
}

/** The UUID (8-4-4-4-12) spelling of a 32-hex trace id. */
export function traceIdUuid(hex) {
  return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
}

function num(value, fallback = 0) {
  const n = Number(value);
  return Number.isFinite(n) ? n : fallback;
}

function str(value) {
  return value === undefined || value === null ? "" : String(value);
}

export function formatDuration(ms) {
  const value = Number(ms);
  if (!Number.isFinite(value)) return "—";
  const abs = Math.abs(value);
  if (abs < 1) return `${Math.round(value * 1000)} µs`;
  if (abs < 10) return `${value.toFixed(2)} ms`;
  if (abs < 100) return `${value.toFixed(1)} ms`;
  if (abs < 1000) return `${Math.round(value)} ms`;
  if (abs < 60000) return `${(value / 1000).toFixed(2)} s`;
  const minutes = Math.floor(value / 60000);
  return `${minutes} min ${Math.round((value - minutes * 60000) / 1000)} s`;
}

const DATE_TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit",
  fractionalSecondDigits: 3, hourCycle: "h23",
});

/** A <time> element for a unix-ms timestamp: local time shown, ISO (UTC) in datetime/title. */
function timeElement(ms) {
  const node = el("time");
  const date = new Date(num(ms, NaN));
  if (Number.isNaN(date.getTime())) {
    node.textContent = "—";
    return node;
  }
  node.dateTime = date.toISOString();
  node.title = date.toISOString();
  node.textContent = DATE_TIME.format(date);
  return node;
}

/** Stable color slots: services get slots in order of first appearance. */
function serviceColors() {
  const slots = new Map();
  return (service) => {
    if (!slots.has(service)) slots.set(service, slots.size % SERVICE_COLORS);
    return `svc-${slots.get(service)}`;
  };
}

async function fetchJson(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch (error) {
    return { ok: false, status: 0, body: null, message: `network error: ${error.message}` };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // a non-JSON body (a proxy's error page): reported by status below
  }
  const apiMessage = body?.error?.message;
  const message = response.ok
    ? ""
    : `${response.status} ${response.statusText}${apiMessage ? `: ${apiMessage}` : ""}`;
  return { ok: response.ok && body !== null, status: response.status, body, message };
}

function setStatus(text) {
  const status = document.getElementById("status");
  if (status) status.textContent = text;
}

function showError(text) {
  const node = document.getElementById("load-error");
  node.textContent = text;
  node.hidden = !text;
}

// ------------------------------------------------------------ the traces page

function startTracesPage() {
  const table = document.getElementById("traces");
  const tbody = table.tBodies[0];
  const empty = document.getElementById("empty");
  const autoButton = document.getElementById("auto-refresh");
  document.getElementById("empty-command").textContent =
    `curl -si ${location.origin}/example -H 'traceparent: ${EXAMPLE_TRACEPARENT}'`;

  let timer = null;
  let loading = false;

  async function load() {
    if (loading) return;
    loading = true;
    setStatus("Loading…");
    try {
      const result = await fetchJson(`${API}?limit=${LIST_LIMIT}`);
      if (!result.ok) {
        showError(`Could not load traces: ${result.message || "unexpected response"}`);
        setStatus("");
        return;
      }
      showError("");
      const traces = Array.isArray(result.body.traces) ? result.body.traces : [];
      tbody.replaceChildren(renderTraceRows(traces));
      table.hidden = traces.length === 0;
      empty.hidden = traces.length !== 0;
      setStatus(`${traces.length} trace${traces.length === 1 ? "" : "s"} · updated ${DATE_TIME.format(new Date())}`);
      document.body.dataset.renderMs = performance.now().toFixed(1);
      document.body.dataset.state = "ready";
    } finally {
      loading = false;
    }
  }

  document.getElementById("refresh").addEventListener("click", load);
  autoButton.addEventListener("click", () => {
    const on = timer === null;
    if (on) {
      timer = setInterval(() => { if (!document.hidden) load(); }, AUTO_REFRESH_MS);
      load();
    } else {
      clearInterval(timer);
      timer = null;
    }
    autoButton.setAttribute("aria-pressed", String(on));
    autoButton.textContent = `Auto-refresh: ${on ? "on" : "off"}`;
  });
  // The whole row opens the trace; the link in the first cell stays the real target.
  tbody.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    const link = event.target.closest("tr")?.querySelector("a[href]");
    if (link) link.click();
  });
  load();
}

function renderTraceRows(traces) {
  const colorOf = serviceColors();
  const fragment = document.createDocumentFragment();
  for (const item of traces) {
    const hex = traceIdHex(item.trace_id) ?? traceIdHex(item.trace_id_uuid);
    const errors = num(item.error_count);
    const row = el("tr", errors > 0 ? "trace-row has-errors" : "trace-row");
    if (hex) row.dataset.traceId = hex;

    const nameCell = el("td", "root-name");
    const name = str(item.root_name) || "(unnamed span)";
    if (hex) {
      const link = el("a", null, name);
      link.href = `/traces/${hex}`;
      nameCell.append(link);
    } else {
      nameCell.textContent = name;
    }
    if (hex) nameCell.append(el("code", "trace-id-short", hex.slice(0, 8)));

    const service = str(item.service) || "unknown";
    const serviceCell = el("td");
    serviceCell.append(el("span", `service ${colorOf(service)}`, service));

    const startCell = el("td");
    startCell.append(timeElement(item.start_ms));

    const errorCell = el("td", errors > 0 ? "num errors" : "num", errors);
    if (errors > 0) {
      errorCell.prepend(el("span", "err-icon", "⚠ "));
      errorCell.title = `${errors} span${errors === 1 ? "" : "s"} with status ERROR`;
    }
    row.append(
      nameCell,
      serviceCell,
      startCell,
      el("td", "num", formatDuration(item.duration_ms)),
      el("td", "num", num(item.span_count)),
      errorCell,
      el("td", "num", num(item.event_count)),
    );
    fragment.append(row);
  }
  return fragment;
}

// -------------------------------------------------------------- the trace page

/**
 * Order spans for the waterfall: parents before their children, siblings by start
 * time. A span whose parent is not in the trace is a root; spans caught in a parent
 * cycle are shown as roots too, so every span appears exactly once.
 * Returns [{span, depth, orphan}] in display order.
 */
export function layoutSpans(spans) {
  const byId = new Map();
  for (const span of spans) if (!byId.has(span.span_id)) byId.set(span.span_id, span);
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    const parent = span.parent_span_id;
    if (parent && parent !== span.span_id && byId.has(parent)) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(span);
    } else {
      roots.push(span);
    }
  }
  const byStart = (a, b) => num(a.start_ms) - num(b.start_ms) || num(b.end_ms) - num(a.end_ms);
  roots.sort(byStart);
  for (const list of children.values()) list.sort(byStart);

  const ordered = [];
  const seen = new Set();
  const walk = (root) => {
    // Iterative: a chain of thousands of spans must not overflow the call stack.
    const stack = [[root, 0]];
    while (stack.length) {
      const [span, depth] = stack.pop();
      if (seen.has(span)) continue;
      seen.add(span);
      const parent = span.parent_span_id;
      ordered.push({ span, depth, orphan: depth === 0 && Boolean(parent) && !byId.has(parent) });
      const kids = byId.get(span.span_id) === span ? children.get(span.span_id) : undefined;
      if (kids) for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], depth + 1]);
    }
  };
  for (const root of roots) walk(root);
  for (const span of spans) if (!seen.has(span)) walk(span); // parent cycles
  return ordered;
}

async function startTracePage() {
  performance.mark("tracegate:start");
  const requested = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() ?? "");
  const hex = traceIdHex(requested);
  showTraceIds(hex);
  document.querySelector(".trace-ids").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-copy]");
    if (button) copyText(document.getElementById(button.dataset.copy), button);
  });
  if (!hex) {
    showError(`"${requested}" is not a trace id: use 32 hex digits or the UUID spelling.`);
    return;
  }
  setStatus("Loading…");
  const result = await fetchJson(`${API}/${hex}`);
  performance.mark("tracegate:data");
  if (!result.ok) {
    setStatus("");
    const detail = result.body?.error?.message ? ` (${result.body.error.message})` : "";
    showError(result.status === 404
      ? `Trace ${hex} was not found${detail}: it has not been stored yet, or it has expired.`
      : `Could not load trace ${hex}: ${result.message || "unexpected response"}`);
    document.body.dataset.state = "error";
    return;
  }
  const trace = result.body;
  showTraceIds(traceIdHex(trace.trace_id) ?? hex);
  renderTrace(trace);
  performance.mark("tracegate:rendered");
  const build = performance.measure("tracegate:build", "tracegate:data", "tracegate:rendered");
  const total = performance.now();
  document.body.dataset.renderMs = total.toFixed(1);
  document.body.dataset.buildMs = build.duration.toFixed(1);
  document.body.dataset.state = "ready";
  const count = Array.isArray(trace.spans) ? trace.spans.length : 0;
  setStatus(`${count} span${count === 1 ? "" : "s"} rendered in ${Math.round(total)} ms`);
}

function showTraceIds(hex) {
  document.getElementById("trace-id-hex").textContent = hex ?? "—";
  document.getElementById("trace-id-uuid").textContent = hex ? traceIdUuid(hex) : "—";
  if (hex) document.title = `Trace ${hex.slice(0, 8)} · tracegate`;
  for (const button of document.querySelectorAll("button[data-copy]")) button.disabled = !hex;
}

const copyResets = new WeakMap();

async function copyText(source, button) {
  const text = source.textContent;
  let copied = false;
  try {
    if (!navigator.clipboard) throw new Error("no async clipboard (insecure context?)");
    await navigator.clipboard.writeText(text);
    copied = true;
  } catch {
    // Fallback: select the id so the user can copy it; try the legacy command too.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
  }
  const label = button.dataset.label ?? button.textContent;
  button.dataset.label = label;
  button.textContent = copied ? "Copied" : "Selected — press Ctrl+C";
  clearTimeout(copyResets.get(button));
  copyResets.set(button, setTimeout(() => { button.textContent = label; }, 1500));
}

function renderTrace(trace) {
  const spans = (Array.isArray(trace.spans) ? trace.spans : []).filter((s) => s && typeof s === "object");
  const sentryEvents = (Array.isArray(trace.sentry_events) ? trace.sentry_events : [])
    .filter((e) => e && typeof e === "object");
  const rows = layoutSpans(spans);

  let start = Infinity;
  let end = -Infinity;
  for (const span of spans) {
    const s = num(span.start_ms, NaN);
    const e = num(span.end_ms, s + num(span.duration_ms));
    if (Number.isFinite(s)) start = Math.min(start, s);
    if (Number.isFinite(e)) end = Math.max(end, e, s);
  }
  if (!Number.isFinite(start)) start = 0;
  if (!Number.isFinite(end) || end < start) end = start;
  const axis = { start, total: Math.max(end - start, 0.001) };

  const eventsBySpan = new Map();
  for (const event of sentryEvents) {
    const key = str(event.span_id);
    if (!eventsBySpan.has(key)) eventsBySpan.set(key, []);
    eventsBySpan.get(key).push(event);
  }
  const colorOf = serviceColors();
  for (const { span } of rows) colorOf(str(span.service) || "unknown");

  renderSummary(spans, sentryEvents, axis, colorOf);
  renderAxis(axis);

  const waterfall = document.getElementById("waterfall");
  const rowBySpan = new Map();
  const fragment = document.createDocumentFragment();
  for (let i = 0; i < rows.length; i++) {
    const row = spanRow(rows[i], i, axis, colorOf, eventsBySpan.get(str(rows[i].span.span_id)) ?? []);
    if (!rowBySpan.has(str(rows[i].span.span_id))) rowBySpan.set(str(rows[i].span.span_id), row);
    fragment.append(row);
  }
  waterfall.replaceChildren(fragment);
  document.getElementById("waterfall-section").hidden = rows.length === 0;
  if (rows.length === 0) showError("This trace has no spans.");

  const context = { rows, axis, eventsBySpan, spanIds: new Set(rowBySpan.keys()) };
  waterfall.addEventListener("click", (event) => {
    const summary = event.target.closest(".span-summary");
    if (summary) toggleDetails(summary, context);
  });
  waterfall.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    const summary = event.target.closest(".span-summary");
    if (!summary) return;
    event.preventDefault();
    toggleDetails(summary, context);
  });
  renderSentryEvents(sentryEvents, axis, rowBySpan, context);
}

function renderSummary(spans, sentryEvents, axis, colorOf) {
  const services = [...new Set(spans.map((s) => str(s.service) || "unknown"))];
  const errors = spans.filter((s) => s.status === "ERROR").length;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const errorText = el("span", errors > 0 ? "has-errors" : null, plural(errors, "error"));
  document.getElementById("summary-text").replaceChildren(
    `${plural(spans.length, "span")} · ${plural(services.length, "service")} · `
      + `${formatDuration(axis.total)} · `,
    errorText,
    ` · ${plural(sentryEvents.length, "Sentry event")} · started `,
    timeElement(axis.start),
  );
  const legend = document.getElementById("legend");
  legend.replaceChildren(...services.map((service) => {
    const item = el("li");
    item.append(el("span", `service ${colorOf(service)}`, service));
    return item;
  }));
  document.getElementById("summary").hidden = false;
}

function renderAxis(axis) {
  const ticks = document.createDocumentFragment();
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", "tick", formatDuration((axis.total * i) / 4));
    tick.style.left = `${i * 25}%`;
    ticks.append(tick);
  }
  document.getElementById("axis").replaceChildren(ticks);
}

function percent(value, axis) {
  return Math.min(100, Math.max(0, ((value - axis.start) / axis.total) * 100));
}

function spanRow({ span, depth, orphan }, index, axis, colorOf, events) {
  const service = str(span.service) || "unknown";
  const color = colorOf(service);
  const isError = span.status === "ERROR";
  const startMs = num(span.start_ms, axis.start);
  const duration = num(span.duration_ms, num(span.end_ms, startMs) - startMs);

  const row = el("div", isError ? "span-row is-error" : "span-row");
  row.setAttribute("role", "listitem");
  row.dataset.index = String(index);
  row.dataset.spanId = str(span.span_id);
  row.dataset.depth = String(depth);
  if (orphan) row.dataset.orphan = "true";

  const summary = el("div", "span-summary");
  summary.setAttribute("role", "button");
  summary.setAttribute("aria-expanded", "false");
  summary.tabIndex = 0;

  const nameCell = el("div", "col-name");
  nameCell.style.setProperty("--depth", String(Math.min(depth, MAX_INDENT)));
  if (isError) {
    const icon = el("span", "err-icon", "⚠");
    icon.title = span.status_message ? `ERROR: ${str(span.status_message)}` : "ERROR";
    icon.setAttribute("aria-label", "error");
    nameCell.append(icon);
  }
  const name = el("span", "span-name", str(span.name) || "(unnamed span)");
  name.title = str(span.name);
  nameCell.append(name);
  if (orphan) {
    const mark = el("span", "orphan", "↰");
    mark.title = `parent ${str(span.parent_span_id)} is not in this trace`;
    nameCell.append(mark);
  }

  const serviceCell = el("div", "col-service");
  const chip = el("span", `service ${color}`, service);
  chip.title = service;
  serviceCell.append(chip);
  const kindCell = el("div", "col-kind", str(span.kind) || "—");

  const timeline = el("div", "col-timeline");
  const left = percent(startMs, axis);
  const width = Math.max(percent(startMs + duration, axis) - left, 0);
  const bar = el("div", `bar ${color}`);
  bar.style.left = `${left}%`;
  bar.style.width = `${width}%`;
  // The duration goes after the bar, else before it, else (a bar across most of the
  // axis) inside its right end.
  const label = el("span", "bar-label", formatDuration(duration));
  if (left + width <= 75) {
    label.style.left = `${left + width}%`;
  } else if (left >= 15) {
    label.style.right = `${100 - left}%`;
  } else {
    label.classList.add("inside");
    label.style.right = `${100 - left - width}%`;
  }
  timeline.append(bar, label);
  for (const event of events) timeline.append(sentryMarker(event, axis, startMs));

  summary.append(nameCell, serviceCell, kindCell, timeline);
  row.append(summary);
  return row;
}

function sentryMarker(event, axis, fallbackMs) {
  const level = str(event.level) || "event";
  const marker = el("span", `sentry-marker level-${/^[a-z]+$/.test(level) ? level : "other"}`,
    level.slice(0, 1).toUpperCase());
  const at = num(event.timestamp_ms, fallbackMs);
  marker.style.left = `${percent(at, axis)}%`;
  const text = `Sentry ${level}: ${str(event.title) || "(untitled)"}`;
  marker.title = text;
  marker.setAttribute("aria-label", text);
  marker.dataset.eventId = str(event.event_id);
  return marker;
}

function toggleDetails(summary, context) {
  const row = summary.parentElement;
  let details = row.querySelector(":scope > .span-details");
  const open = summary.getAttribute("aria-expanded") !== "true";
  if (open && !details) {
    details = spanDetails(context.rows[Number(row.dataset.index)], context);
    row.append(details);
  }
  if (details) details.hidden = !open;
  summary.setAttribute("aria-expanded", String(open));
  row.classList.toggle("expanded", open);
}

function spanDetails({ span, orphan }, context) {
  const { axis } = context;
  const details = el("div", "span-details");
  const facts = el("dl", "facts");
  const fact = (term, value) => {
    const wrap = el("div");
    wrap.append(el("dt", null, term));
    const dd = el("dd");
    dd.append(value instanceof Node ? value : el("span", null, value));
    wrap.append(dd);
    facts.append(wrap);
  };
  fact("Span id", el("code", null, str(span.span_id)));
  const parent = str(span.parent_span_id);
  fact("Parent span id", parent
    ? el("code", null, orphan ? `${parent} (not in this trace)` : parent)
    : "— (root span)");
  fact("Service", str(span.service) || "unknown");
  fact("Kind", str(span.kind) || "—");
  fact("Start", `+${formatDuration(num(span.start_ms) - axis.start)}`);
  fact("Duration", formatDuration(span.duration_ms));
  const status = el("span", span.status === "ERROR" ? "status-error" : null, str(span.status) || "UNSET");
  fact("Status", status);
  if (span.status_message) fact("Status message", str(span.status_message));
  details.append(facts);

  const attributes = span.attributes && typeof span.attributes === "object" ? span.attributes : {};
  details.append(el("h3", null, "Attributes"), keyValueTable(attributes));

  const events = Array.isArray(span.events) ? span.events : [];
  details.append(el("h3", null, `Events (${events.length})`));
  if (events.length) {
    for (const event of events) {
      const block = el("div", "span-event");
      const head = el("p", "span-event-head");
      head.append(
        el("strong", null, str(event?.name) || "(unnamed event)"),
        ` at +${formatDuration(num(event?.time_ms) - axis.start)}`,
      );
      block.append(head, keyValueTable(event?.attributes ?? {}));
      details.append(block);
    }
  } else {
    details.append(el("p", "muted", "none"));
  }

  const links = Array.isArray(span.links) ? span.links : [];
  details.append(el("h3", null, `Links (${links.length})`));
  if (links.length) {
    const list = el("ul", "links");
    for (const link of links) {
      const item = el("li");
      const linked = traceIdHex(link?.trace_id);
      const target = el(linked ? "a" : "span", null, `trace ${str(link?.trace_id)}`);
      if (linked) target.href = `/traces/${linked}`;
      item.append(target, ` · span `, el("code", null, str(link?.span_id)));
      if (linked && context.spanIds.has(str(link?.span_id))) item.append(" (in this trace)");
      list.append(item);
    }
    details.append(list);
  } else {
    details.append(el("p", "muted", "none"));
  }

  const ids = Array.isArray(span.sentry_event_ids) ? span.sentry_event_ids : [];
  const sentry = context.eventsBySpan.get(str(span.span_id)) ?? [];
  if (ids.length || sentry.length) {
    details.append(el("h3", null, "Sentry events"));
    const list = el("ul", "links");
    const listed = new Set();
    for (const event of sentry) {
      listed.add(str(event.event_id));
      list.append(el("li", null, `${str(event.level)}: ${str(event.title)} (${str(event.event_id)})`));
    }
    for (const id of ids) if (!listed.has(str(id))) list.append(el("li", null, str(id)));
    details.append(list);
  }
  return details;
}

function keyValueTable(values) {
  const keys = Object.keys(values).sort();
  if (!keys.length) return el("p", "muted", "none");
  const table = el("table", "kv");
  for (const key of keys) {
    const row = el("tr");
    const value = values[key];
    row.append(el("th", null, key), el("td", null, typeof value === "string" ? value : JSON.stringify(value)));
    table.append(row);
  }
  return table;
}

function renderSentryEvents(events, axis, rowBySpan, context) {
  const section = document.getElementById("sentry-section");
  section.hidden = events.length === 0;
  if (!events.length) return;
  const sorted = [...events].sort((a, b) => num(a.timestamp_ms) - num(b.timestamp_ms));
  const fragment = document.createDocumentFragment();
  for (const event of sorted) {
    const level = str(event.level) || "event";
    const row = el("tr", `sentry-event level-${/^[a-z]+$/.test(level) ? level : "other"}`);
    const spanCell = el("td");
    const spanRowNode = rowBySpan.get(str(event.span_id));
    if (spanRowNode) {
      const jump = el("button", "link", spanRowNode.querySelector(".span-name").textContent);
      jump.type = "button";
      jump.addEventListener("click", () => {
        const summary = spanRowNode.querySelector(".span-summary");
        if (summary.getAttribute("aria-expanded") !== "true") toggleDetails(summary, context);
        spanRowNode.scrollIntoView({ block: "center" });
        summary.focus({ preventScroll: true });
      });
      spanCell.append(jump);
    } else {
      spanCell.textContent = event.span_id ? `${str(event.span_id)} (not in this trace)` : "—";
    }
    row.append(
      el("td", "level", level),
      el("td", null, str(event.title) || "(untitled)"),
      el("td", "num", `+${formatDuration(num(event.timestamp_ms, axis.start) - axis.start)}`),
      spanCell,
    );
    const idCell = el("td");
    idCell.append(el("code", null, str(event.event_id)));
    row.append(idCell);
    fragment.append(row);
  }
  document.getElementById("sentry-events").tBodies[0].replaceChildren(fragment);
}

// --------------------------------------------------------------------- start

const page = document.body?.dataset.page;
if (page === "traces") startTracesPage();
else if (page === "trace") startTracePage();
