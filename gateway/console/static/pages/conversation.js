/* A conversation's whole timeline (GET conversations/{id}): inbound, processed (tags, routing and
 * its reason), outbound (auto-replies marked), delivery events and conversation events, oldest
 * first, each with its time, a summary and the record as expandable JSON. */
import { get, segment } from "../lib/api.js";
import { badge, errorBox, fill, fmtDuration, fmtNum, h, jsonDetails, mono, timeEl } from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import {
  authorLabel,
  conversationEventLabel,
  deliveryLabel,
  kindLabel,
  priorityLabel,
  sentimentLabel,
  sentimentTone,
} from "../lib/labels.js";
import { unmaskSwitch, unmaskWanted } from "./messages.js";

const KINDS = ["inbound", "processed", "outbound", "delivery", "conversation"];

function obj(value) {
  return value && typeof value === "object" && !Array.isArray(value) ? value : {};
}

function present(value) {
  return value !== null && value !== undefined && value !== "";
}

function kv(pairs) {
  const rows = pairs.filter(([, value]) => present(value));
  if (!rows.length) return null;
  return h(
    "dl",
    { class: "kv kv-compact" },
    rows.map(([label, value]) => h("div", { class: "kv-row" }, h("dt", null, label), h("dd", null, value))),
  );
}

function party(value) {
  const p = obj(value);
  if (!present(p.id) && !present(p.name)) return null;
  return h(
    "span",
    null,
    p.name || "",
    p.name ? " " : "",
    present(p.id) ? mono(p.id, { class: "mono muted small" }) : "",
  );
}

function textBlock(record) {
  const content = obj(record.content);
  const text = present(content.text) ? content.text : present(record.text) ? record.text : null;
  if (text === null) return null;
  return h("p", { class: "bubble", "data-testid": "timeline-text" }, String(text));
}

function isAutomatic(record) {
  const author = obj(record.author);
  return author.kind === "automatic" || author.kind === "bot";
}

/* The parts of a record worth reading without opening its JSON. */
function details(kind, record) {
  switch (kind) {
    case "inbound":
      return [
        kv([
          [t("col.sender"), party(record.sender)],
          [t("col.language"), record.language ? mono(record.language) : null],
        ]),
        textBlock(record),
      ];
    case "processed": {
      const tags = obj(record.tags);
      const sentiment = obj(tags.sentiment);
      const routing = obj(record.routing);
      const labels = Object.entries(obj(tags.labels));
      return [
        kv([
          [
            t("col.sentiment"),
            sentiment.label
              ? badge(
                  sentimentLabel(sentiment.label) +
                    (typeof sentiment.score === "number" ? " " + fmtNum(sentiment.score, 2) : ""),
                  sentimentTone(sentiment.label),
                )
              : null,
          ],
          [t("col.language"), record.language ? mono(record.language) : null],
          [
            t("col.tags"),
            labels.length
              ? h(
                  "span",
                  { class: "tags" },
                  labels.map(([key, value]) =>
                    badge(
                      key + (value === true ? "" : "=" + (typeof value === "string" ? value : JSON.stringify(value))),
                      "tag",
                    ),
                  ),
                )
              : null,
          ],
          [t("col.queue"), routing.queue || null],
          [t("conversation.priority"), routing.priority ? priorityLabel(routing.priority) : null],
          [t("conversation.rule"), routing.rule ? mono(routing.rule) : null],
          [
            t("conversation.routing_reason"),
            routing.reason ? h("span", { "data-testid": "routing-reason" }, routing.reason) : null,
          ],
          [t("conversation.sla_due"), routing.sla_due_at ? timeEl(routing.sla_due_at) : null],
          [t("col.topic"), routing.topic ? mono(routing.topic) : null],
        ]),
      ];
    }
    case "outbound": {
      const author = obj(record.author);
      return [
        kv([
          [
            t("conversation.author"),
            author.kind ? h("span", null, authorLabel(author.kind), author.name ? " · " + author.name : "") : null,
          ],
          [t("conversation.recipient"), party(record.recipient)],
          [t("conversation.resolves"), record.resolve ? t("common.yes") : null],
        ]),
        textBlock(record),
      ];
    }
    case "delivery": {
      const error = obj(record.error);
      return [
        kv([
          [
            t("conversation.status"),
            record.status ? badge(deliveryLabel(record.status), record.status === "failed" ? "bad" : "ok") : null,
          ],
          [t("conversation.attempt"), record.attempt > 1 ? fmtNum(record.attempt) : null],
          [
            t("conversation.error"),
            error.code || error.message
              ? h("span", { class: "text-bad" }, [error.code, error.message].filter(Boolean).join(": "))
              : null,
          ],
        ]),
      ];
    }
    case "conversation":
      return [
        kv([
          [t("conversation.event"), record.type ? conversationEventLabel(record.type) : null],
          [t("conversation.duration"), present(record.value_s) ? fmtDuration(record.value_s) : null],
          [t("col.queue"), record.queue || null],
          [t("conversation.due"), record.due_at ? timeEl(record.due_at) : null],
          [t("conversation.rating"), present(record.rating) ? "★ " + record.rating + " / 5" : null],
          [t("conversation.comment"), record.comment || null],
          [t("conversation.reason"), record.reason || null],
        ]),
      ];
    default:
      return [];
  }
}

function timelineItem(item) {
  const record = obj(item.record);
  const kind = item.kind || "";
  const auto = kind === "outbound" && isAutomatic(record);
  const position = [
    item.topic,
    present(item.partition) ? "#" + item.partition : null,
    present(item.offset) ? "@" + item.offset : null,
  ]
    .filter(Boolean)
    .join(" ");
  return h(
    "li",
    {
      class: "tl-item kind-" + (KINDS.includes(kind) ? kind : "other"),
      "data-testid": "timeline-item",
      "data-kind": kind,
    },
    h("span", { class: "tl-marker", "aria-hidden": "true" }),
    h(
      "div",
      { class: "tl-body" },
      h(
        "div",
        { class: "tl-head" },
        badge(kindLabel(kind), "kind-" + kind, { "data-testid": "timeline-kind" }),
        auto ? badge(t("conversation.auto_reply"), "warn", { "data-testid": "timeline-auto-reply" }) : null,
        h("span", { class: "tl-summary", "data-testid": "timeline-summary" }, item.summary || ""),
        h("span", { class: "tl-time" }, timeEl(item.at)),
      ),
      details(kind, record),
      h("div", { class: "tl-meta muted small" }, position ? mono(position) : null),
      jsonDetails(item.record, t("common.json"), { "data-testid": "timeline-json" }),
    ),
  );
}

export function render(root, { id }) {
  let alive = true;
  const hidden = new Set();
  const back = h(
    "a",
    { href: "#/messages", class: "back-link", "data-testid": "back-to-messages" },
    "← " + t("nav.messages"),
  );
  root.querySelector(".page-head").prepend(back);
  root.querySelector(".page-head").append(
    h(
      "div",
      { class: "page-tools" },
      mono(id, { "data-testid": "conversation-id" }),
      unmaskSwitch(() => load()),
    ),
  );
  const body = h("div", { class: "page-body" });
  root.append(body);

  function load() {
    fill(body, h("p", { class: "loading" }, t("app.loading")));
    get("conversations/" + segment(id), { unmask: unmaskWanted() }).then(
      (data) => {
        if (!alive) return;
        show(data || {});
      },
      (error) => {
        if (!alive || error.status === 401) return;
        fill(
          body,
          error.status === 404
            ? h("p", { class: "empty-state", "data-testid": "conversation-missing" }, t("conversation.not_found"))
            : errorBox(error, load),
        );
      },
    );
  }

  function show(data) {
    const items = Array.isArray(data.items) ? data.items : [];
    const counts = {};
    for (const item of items) counts[item.kind] = (counts[item.kind] || 0) + 1;
    const scanned = Object.entries(obj(data.scanned));
    const list = h(
      "ol",
      { class: "timeline", "data-testid": "timeline", "aria-label": t("conversation.timeline") },
      items.map(timelineItem),
    );
    const toggles = h(
      "fieldset",
      { class: "kind-filter" },
      h("legend", null, t("conversation.show")),
      KINDS.filter((kind) => counts[kind]).map((kind) => {
        const box = h("input", {
          type: "checkbox",
          checked: !hidden.has(kind),
          "data-testid": "kind-toggle",
          "data-kind": kind,
        });
        box.addEventListener("change", () => {
          if (box.checked) hidden.delete(kind);
          else hidden.add(kind);
          applyFilter();
        });
        return h(
          "label",
          { class: "check" },
          box,
          " ",
          kindLabel(kind),
          " ",
          h("span", { class: "muted" }, "(" + counts[kind] + ")"),
        );
      }),
    );
    function applyFilter() {
      for (const li of list.children) li.hidden = hidden.has(li.dataset.kind);
    }
    applyFilter();
    fill(
      body,
      h(
        "section",
        { class: "panel conversation-summary", "data-testid": "conversation-summary" },
        h(
          "p",
          null,
          t("conversation.items", { n: fmtNum(items.length) }),
          items.length ? h("span", null, " · ", timeEl(items[0].at), " → ", timeEl(items[items.length - 1].at)) : null,
        ),
        scanned.length
          ? h(
              "p",
              { class: "muted small", "data-testid": "conversation-scanned" },
              t("conversation.scanned"),
              " ",
              scanned.map(([topic, n], i) => h("span", null, i ? ", " : "", mono(topic), " ", fmtNum(n))),
            )
          : null,
        items.length ? toggles : null,
      ),
      items.length ? list : h("p", { class: "empty-state" }, t("conversation.empty")),
    );
  }

  load();
  return () => {
    alive = false;
  };
}
