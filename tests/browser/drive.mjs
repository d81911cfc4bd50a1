// Drives Debian's Chromium through playwright-core for tracegate's trace viewer tests.
//
// Usage: node drive.mjs < plan.json > facts.json
//
// The plan (written by tests/browser/driver.py):
//   {"chromium": "/usr/bin/chromium", "profile": "<fresh dir>", "base_url": "http://127.0.0.1:PORT",
//    "visits": [{"name", "path", "screenshot": "<png path>", "full_page": bool,
//                "spans": ["<span id>", ...],  // rows to describe (trace page)
//                "copy": bool,                 // click both copy buttons, read the clipboard
//                "expand": "<span id>"}]}      // open this row's details
//
// It only looks and reports: every visit's facts (what the DOM shows, CSP violations,
// console errors, requests that left the origin, timings) go to stdout as one JSON
// object; pytest asserts on them. A visit that fails still takes its screenshot and
// reports {"failure": "..."}. Nothing here downloads a browser: the executable is given.

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { chromium } from "playwright-core";

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const READY_TIMEOUT_MS = 30000;

async function readPlan() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

// Runs in the page before any of its scripts: CSP violations are not console errors
// in every case, so they are collected from the DOM event itself.
function watchCsp() {
  window.__cspViolations = [];
  document.addEventListener("securitypolicyviolation", (event) => {
    window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
  });
}

async function describeList(page) {
  return page.evaluate(() => {
    const text = (selector) => document.querySelector(selector)?.textContent.trim() ?? "";
    const visible = (selector) => {
      const node = document.querySelector(selector);
      return Boolean(node) && !node.hidden;
    };
    const rows = [...document.querySelectorAll("#traces tbody tr")].map((row) => {
      const cells = [...row.cells].map((cell) => cell.textContent.trim());
      return {
        trace_id: row.dataset.traceId ?? "",
        href: row.querySelector("a")?.getAttribute("href") ?? "",
        root_name: row.querySelector("a")?.textContent ?? cells[0],
        service: cells[1],
        start: cells[2],
        duration: cells[3],
        span_count: cells[4],
        error_count: cells[5],
        event_count: cells[6],
        error_highlighted: row.classList.contains("has-errors")
          && row.cells[5].classList.contains("errors"),
      };
    });
    return {
      state: document.body.dataset.state ?? "",
      error: visible("#load-error") ? text("#load-error") : "",
      empty: visible("#empty") ? text("#empty") : "",
      table_visible: visible("#traces"),
      rows,
      render_ms: Number(document.body.dataset.renderMs ?? NaN),
    };
  });
}

async function describeTrace(page, spanIds) {
  return page.evaluate((wanted) => {
    const text = (selector) => document.querySelector(selector)?.textContent.trim() ?? "";
    const errorNode = document.querySelector("#load-error");
    const rows = document.querySelectorAll("#waterfall > .span-row");
    const described = {};
    for (const row of rows) {
      const id = row.dataset.spanId;
      if (!wanted.includes(id) || id in described) continue;
      const bar = row.querySelector(".bar");
      described[id] = {
        index: Number(row.dataset.index),
        depth: Number(row.dataset.depth),
        orphan: row.dataset.orphan === "true",
        indent: getComputedStyle(row.querySelector(".col-name")).getPropertyValue("--depth").trim(),
        name: row.querySelector(".span-name")?.textContent ?? "",
        service: row.querySelector(".col-service")?.textContent ?? "",
        kind: row.querySelector(".col-kind")?.textContent ?? "",
        label: row.querySelector(".bar-label")?.textContent ?? "",
        is_error: row.classList.contains("is-error"),
        error_icon: Boolean(row.querySelector(".err-icon")),
        bar_color: bar ? getComputedStyle(bar).backgroundImage !== "none"
          ? "error-stripes" : getComputedStyle(bar).backgroundColor : "",
        bar_left: bar?.style.left ?? "",
        bar_width: bar?.style.width ?? "",
        sentry_markers: [...row.querySelectorAll(".sentry-marker")].map((marker) => ({
          event_id: marker.dataset.eventId,
          title: marker.title,
        })),
      };
    }
    const order = [...rows].map((row) => row.dataset.spanId);
    return {
      state: document.body.dataset.state ?? "",
      error: errorNode && !errorNode.hidden ? errorNode.textContent.trim() : "",
      hex_shown: text("#trace-id-hex"),
      uuid_shown: text("#trace-id-uuid"),
      summary: text("#summary-text"),
      row_count: rows.length,
      rows_with_details: document.querySelectorAll("#waterfall .span-details").length,
      error_rows: document.querySelectorAll("#waterfall > .span-row.is-error").length,
      max_depth: Math.max(0, ...[...rows].map((row) => Number(row.dataset.depth))),
      order,
      rows: described,
      sentry_list: [...document.querySelectorAll("#sentry-events tbody tr")].map((row) => ({
        level: row.cells[0].textContent,
        title: row.cells[1].textContent,
        span: row.cells[3].textContent,
        event_id: row.cells[4].textContent,
      })),
      render_ms: Number(document.body.dataset.renderMs ?? NaN),
      build_ms: Number(document.body.dataset.buildMs ?? NaN),
    };
  }, spanIds);
}

async function copyBoth(page) {
  const copied = {};
  for (const which of ["hex", "uuid"]) {
    const button = page.locator(`button[data-copy="trace-id-${which}"]`);
    await button.click();
    await page.waitForFunction(
      (selector) => document.querySelector(selector).textContent !== "Copy",
      `button[data-copy="trace-id-${which}"]`,
    );
    copied[which] = {
      button: await button.textContent(),
      clipboard: await page.evaluate(() => navigator.clipboard.readText()),
    };
  }
  return copied;
}

async function expand(page, spanId) {
  // Time from the click to the next frame with the details laid out.
  return page.evaluate(async (id) => {
    const row = [...document.querySelectorAll("#waterfall > .span-row")].find((r) => r.dataset.spanId === id);
    if (!row) return { found: false };
    const before = document.querySelectorAll("#waterfall .span-details").length;
    const started = performance.now();
    row.querySelector(".span-summary").click();
    await new Promise((resolve) => requestAnimationFrame(() => resolve()));
    const details = row.querySelector(".span-details");
    const height = details?.getBoundingClientRect().height ?? 0;
    const took = performance.now() - started;
    row.scrollIntoView({ block: "center" }); // for the screenshot: the opened row in view
    const cells = (selector) => [...(details?.querySelectorAll(selector) ?? [])].map((n) => n.textContent);
    return {
      found: true,
      expand_ms: took,
      details_before: before,
      details_after: document.querySelectorAll("#waterfall .span-details").length,
      expanded: row.querySelector(".span-summary").getAttribute("aria-expanded") === "true",
      visible: height > 0,
      facts: Object.fromEntries(
        [...(details?.querySelectorAll(".facts > div") ?? [])].map((d) => [
          d.querySelector("dt").textContent, d.querySelector("dd").textContent,
        ]),
      ),
      headings: cells("h3"),
      attribute_keys: cells(":scope > table.kv > tbody > tr > th, :scope > table.kv > tr > th"),
    };
  }, spanId);
}

async function visit(context, baseUrl, plan) {
  const page = await context.newPage();
  const facts = { console_errors: [], page_errors: [], external_requests: [] };
  const origin = new URL(baseUrl).origin;
  page.on("console", (message) => {
    if (message.type() === "error") facts.console_errors.push(message.text());
  });
  page.on("pageerror", (error) => facts.page_errors.push(String(error)));
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(`${origin}/`) && !url.startsWith("data:")) facts.external_requests.push(url);
  });
  await page.addInitScript(watchCsp);
  try {
    const started = Date.now();
    const response = await page.goto(baseUrl + plan.path, { waitUntil: "load" });
    facts.status = response?.status() ?? 0;
    facts.csp = (await response?.allHeaders())?.["content-security-policy"] ?? "";
    await page.waitForFunction(
      () => ["ready", "error"].includes(document.body?.dataset.state ?? ""),
      null,
      { timeout: READY_TIMEOUT_MS },
    );
    facts.harness_ms = Date.now() - started;
    const isTrace = plan.path !== "/traces";
    Object.assign(facts, isTrace ? await describeTrace(page, plan.spans ?? []) : await describeList(page));
    if (plan.copy) facts.copy = await copyBoth(page);
    if (plan.expand) facts.expand = await expand(page, plan.expand);
  } catch (error) {
    facts.failure = String(error?.message ?? error);
  }
  facts.csp_violations = await page.evaluate(() => window.__cspViolations ?? []).catch(() => []);
  if (plan.screenshot) {
    mkdirSync(dirname(plan.screenshot), { recursive: true });
    await page.screenshot({ path: plan.screenshot, fullPage: Boolean(plan.full_page) }).catch((error) => {
      facts.screenshot_failure = String(error?.message ?? error);
    });
  }
  await page.close();
  return facts;
}

const plan = await readPlan();
const context = await chromium.launchPersistentContext(plan.profile, {
  executablePath: plan.chromium,
  headless: true,
  args: ARGS,
  viewport: { width: 1400, height: 900 },
  permissions: ["clipboard-read", "clipboard-write"],
  serviceWorkers: "block",
});
const result = { browser: context.browser()?.version() ?? "", visits: {} };
try {
  for (const item of plan.visits) result.visits[item.name] = await visit(context, plan.base_url, item);
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(result));
