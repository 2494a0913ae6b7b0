/* DOM building and formatting. Text always goes in as text nodes (textContent), never as HTML:
 * message texts, DLQ payloads, reasons and headers are written by whoever sent them. */
import { getLang, t } from "./i18n.js";

const PROPERTIES = new Set(["value", "checked", "hidden", "disabled", "open", "selected", "indeterminate"]);

/* h("button", {class: "btn", "data-testid": "x", on: {click}}, "text", child, [children]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "on") for (const [name, handler] of Object.entries(value)) el.addEventListener(name, handler);
      else if (PROPERTIES.has(key)) el[key] = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/* Replaces an element's children (null and false skipped, arrays flattened: never "null" text). */
export function fill(el, ...children) {
  return append(clear(el), children);
}

/* Screen readers hear this (the page's polite live region). */
export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  setTimeout(() => {
    region.textContent = text;
  }, 50);
}

/* ---- numbers, times, durations ---- */

const DASH = "—";

export function fmtNum(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return DASH;
  return new Intl.NumberFormat(getLang(), { maximumFractionDigits: digits }).format(Number(value));
}

/* 0.0123 -> "1.2%" */
export function fmtPct(fraction) {
  if (fraction === null || fraction === undefined || Number.isNaN(Number(fraction))) return DASH;
  return new Intl.NumberFormat(getLang(), { style: "percent", maximumFractionDigits: 1 }).format(Number(fraction));
}

export function parseTime(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = new Date(typeof value === "number" ? value : String(value));
  return Number.isNaN(date.getTime()) ? null : date;
}

export function fmtDateTime(value) {
  const date = parseTime(value);
  if (!date) return DASH;
  return new Intl.DateTimeFormat(getLang(), { dateStyle: "medium", timeStyle: "medium" }).format(date);
}

/* Today: the time; another day: the date and the time. */
export function fmtShort(value) {
  const date = parseTime(value);
  if (!date) return DASH;
  const now = new Date();
  const sameDay = date.toDateString() === now.toDateString();
  const options = sameDay
    ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return new Intl.DateTimeFormat(getLang(), options).format(date);
}

/* "3 minutes ago", "in 2 hours" */
export function fmtRelative(value, now = Date.now()) {
  const date = parseTime(value);
  if (!date) return "";
  const seconds = Math.round((date.getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  const rtf = new Intl.RelativeTimeFormat(getLang(), { numeric: "auto" });
  if (abs < 45) return rtf.format(0, "second");
  if (abs < 3600) return rtf.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(seconds / 3600), "hour");
  return rtf.format(Math.round(seconds / 86400), "day");
}

/* <time> with the local time and its age; the ages are refreshed by refreshAges(). */
export function timeEl(value) {
  const date = parseTime(value);
  if (!date) return h("span", { class: "muted" }, DASH);
  const iso = date.toISOString();
  return h(
    "time",
    { class: "ts", datetime: iso, title: fmtDateTime(iso) },
    h("span", { class: "ts-abs" }, fmtShort(iso)),
    " ",
    h("span", { class: "ts-rel", "data-at": iso }, fmtRelative(iso)),
  );
}

export function refreshAges(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll(".ts-rel[data-at]")) el.textContent = fmtRelative(el.dataset.at, now);
}

/* 252 -> "4m 12s"; 0.35 -> "350 ms"; the two largest units. */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return DASH;
  let s = Number(seconds);
  if (s < 0) s = 0;
  if (s < 1) return t("dur.ms", { n: Math.round(s * 1000) });
  if (s < 10) return t("dur.s", { n: fmtNum(s, 1) });
  s = Math.round(s);
  const units = [
    [86400, "dur.d"],
    [3600, "dur.h"],
    [60, "dur.m"],
    [1, "dur.s"],
  ];
  const first = units.findIndex(([size]) => s >= size);
  const [size, key] = units[first];
  const n = Math.floor(s / size);
  const parts = [t(key, { n })];
  if (first + 1 < units.length) {
    const [nextSize, nextKey] = units[first + 1];
    const rest = Math.floor((s - n * size) / nextSize);
    if (rest > 0) parts.push(t(nextKey, { n: rest }));
  }
  return parts.join(" ");
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return DASH;
  return fmtDuration(Number(ms) / 1000);
}

/* ---- small building blocks ---- */

export function mono(text, attrs = {}) {
  return h("code", { class: "mono", ...attrs }, text === null || text === undefined || text === "" ? DASH : text);
}

export function badge(text, tone = "neutral", attrs = {}) {
  return h("span", { class: "badge badge-" + tone, ...attrs }, text);
}

/* A coloured dot and its words: colour is never the only sign. */
export function statusDot(tone, label, attrs = {}) {
  return h(
    "span",
    { class: "status status-" + tone, ...attrs },
    h("span", { class: "dot", "aria-hidden": "true" }),
    h("span", { class: "status-label" }, label),
  );
}

export function prettyJson(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

/* An expandable JSON view: <details> with the record in a <pre>. */
export function jsonDetails(value, label, attrs = {}) {
  return h(
    "details",
    { class: "json", ...attrs },
    h("summary", null, label || t("common.json")),
    h("pre", { class: "mono code-block" }, prettyJson(value)),
  );
}

/* A table that scrolls sideways on a laptop and becomes cards on a phone (data-label). */
export function dataTable({ caption, columns, testid, className = "" }) {
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "table " + className, "data-testid": testid },
    caption ? h("caption", { class: "visually-hidden" }, caption) : null,
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        columns.map((col) => h("th", { scope: "col", class: col.cls || null }, col.label)),
      ),
    ),
    tbody,
  );
  return { wrap: h("div", { class: "table-wrap" }, table), table, tbody, columns };
}

export function td(label, content, attrs = {}) {
  return h("td", { "data-label": label, ...attrs }, content);
}

export function emptyRow(columns, text) {
  return h("tr", { class: "empty" }, h("td", { colspan: columns, class: "muted" }, text));
}

/* An error box for a failed load, with a retry button. */
export function errorBox(error, retry) {
  return h(
    "div",
    { class: "alert alert-error", role: "alert", "data-testid": "page-error" },
    h("p", null, errorText(error)),
    retry ? h("button", { type: "button", class: "btn btn-small", on: { click: retry } }, t("common.retry")) : null,
  );
}

export function errorText(error) {
  if (!error) return t("error.generic");
  const detail = error.serverMessage ? ": " + error.serverMessage : "";
  switch (error.status) {
    case 0:
      return t("error.network");
    case 403:
      return t("error.forbidden") + detail;
    case 404:
      return t("error.not_found") + detail;
    case 409:
      return t("error.conflict") + detail;
    case 429:
      return t("error.rate_limited") + detail;
    case 503:
      return t("error.unavailable") + detail;
    default:
      return error.status ? t("error.status", { status: error.status }) + detail : t("error.generic");
  }
}

/* Copies text; falls back to a selected hidden textarea where the Clipboard API is missing
 * (plain http on another host than localhost). */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall through */
  }
  const area = h("textarea", { class: "visually-hidden", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/* A select from [value, label] pairs. */
export function selectEl(attrs, options, current) {
  const select = h("select", attrs);
  for (const [value, label] of options) {
    select.append(h("option", { value, selected: String(value) === String(current ?? "") }, label));
  }
  return select;
}

export function field(labelText, control, hint) {
  const id = control.id || "f-" + Math.random().toString(36).slice(2, 9);
  control.id = id;
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, labelText),
    control,
    hint ? h("small", { class: "muted" }, hint) : null,
  );
}

/* Parameters in the route's query part (#/dlq?stage=process), kept in the address so a filtered
 * page is linkable; replaceState does not fire hashchange, so the page is not rebuilt. */
export function setHashQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) query.set(key, value);
  const text = query.toString();
  history.replaceState(null, "", "#" + path + (text ? "?" + text : ""));
}
