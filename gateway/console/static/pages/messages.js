/* Messages: GET messages (newest first), then the `message` events of GET stream?messages=1 with
 * the same filters. Texts are masked unless the user has `unmask` and turns it on. */
import { can, get, openStream } from "../lib/api.js";
import {
  announce,
  badge,
  clear,
  dataTable,
  emptyRow,
  errorBox,
  field,
  fill,
  fmtNum,
  h,
  mono,
  selectEl,
  setHashQuery,
  td,
  timeEl,
} from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { priorityLabel, sentimentLabel, sentimentTone, streamIndicator } from "../lib/labels.js";

const MAX_ROWS = 200;
const FILTERS = ["instance", "queue", "sentiment", "language"];

/* Shared with the conversation view: unmasking lasts while the console stays open. */
let unmaskOn = false;
export function unmaskWanted() {
  return unmaskOn && can("unmask");
}
export function setUnmask(value) {
  unmaskOn = !!value;
}

/* The unmask switch (a checkbox with role=switch), only for users with `unmask`. */
export function unmaskSwitch(onChange) {
  if (!can("unmask")) return null;
  const input = h("input", {
    type: "checkbox",
    role: "switch",
    checked: unmaskWanted(),
    "data-testid": "unmask-toggle",
  });
  input.addEventListener("change", () => {
    setUnmask(input.checked);
    announce(input.checked ? t("messages.unmasked_on") : t("messages.unmasked_off"));
    onChange(input.checked);
  });
  return h("label", { class: "switch" }, input, h("span", null, t("messages.unmask")));
}

export function conversationHref(id) {
  return "#/messages/c/" + encodeURIComponent(id);
}

function tagList(tags) {
  if (!Array.isArray(tags) || !tags.length) return h("span", { class: "muted" }, "—");
  return h(
    "span",
    { class: "tags" },
    tags.map((tag) => badge(typeof tag === "string" ? tag : JSON.stringify(tag), "tag")),
  );
}

export function sentimentBadge(sentiment) {
  if (!sentiment || !sentiment.label) return h("span", { class: "muted" }, "—");
  const score = typeof sentiment.score === "number" ? " " + fmtNum(sentiment.score, 2) : "";
  return badge(sentimentLabel(sentiment.label) + score, sentimentTone(sentiment.label), {
    "data-testid": "message-sentiment",
  });
}

export function render(root, { query }) {
  let alive = true;
  let stop = null;
  let paused = false;
  let buffer = [];
  let fresh = 0;
  let announceTimer = null;
  const seen = new Set();
  const filters = {};
  for (const name of FILTERS) filters[name] = query.get(name) || "";
  const known = { instance: new Set(), queue: new Set(), language: new Set() };

  /* ---- filters ---- */
  const lists = {};
  function textFilter(name, label) {
    const list = h("datalist", { id: "dl-messages-" + name });
    lists[name] = list;
    const input = h("input", {
      type: "search",
      name,
      value: filters[name],
      list: list.id,
      autocomplete: "off",
      "data-testid": "filter-" + name,
    });
    const wrap = field(label, input);
    wrap.append(list);
    return wrap;
  }
  const sentimentSelect = selectEl(
    { name: "sentiment", "data-testid": "filter-sentiment" },
    [
      ["", t("common.any")],
      ["positive", t("sentiment.positive")],
      ["neutral", t("sentiment.neutral")],
      ["negative", t("sentiment.negative")],
    ],
    filters.sentiment,
  );
  const form = h(
    "form",
    { class: "filters", "data-testid": "message-filters", role: "search", "aria-label": t("messages.filters") },
    textFilter("instance", t("col.instance")),
    textFilter("queue", t("col.queue")),
    field(t("col.sentiment"), sentimentSelect),
    textFilter("language", t("col.language")),
    h(
      "div",
      { class: "filter-actions" },
      h("button", { type: "submit", class: "btn btn-primary", "data-testid": "filter-apply" }, t("common.apply")),
      h("button", { type: "reset", class: "btn btn-ghost", "data-testid": "filter-reset" }, t("common.reset")),
    ),
  );

  /* ---- toolbar ---- */
  const live = streamIndicator("messages-live");
  const newCount = h("span", { class: "muted", "aria-live": "polite", "data-testid": "messages-new-count" });
  const pause = h(
    "button",
    { type: "button", class: "btn btn-small", "aria-pressed": "false", "data-testid": "pause-toggle" },
    t("messages.pause"),
  );
  const unmask = unmaskSwitch(() => reload());
  root.querySelector(".page-head").append(h("div", { class: "page-tools" }, live.el, newCount, pause, unmask));

  const columns = [
    { label: t("col.time") },
    { label: t("col.instance") },
    { label: t("col.sender") },
    { label: t("col.text"), cls: "col-text" },
    { label: t("col.language") },
    { label: t("col.sentiment") },
    { label: t("col.queue") },
    { label: t("col.tags") },
  ];
  const table = dataTable({ caption: t("nav.messages"), columns, testid: "message-table", className: "messages" });
  const status = h("div", { class: "page-body" });
  root.append(h("section", { class: "panel" }, form), status, h("section", { class: "panel panel-flush" }, table.wrap));

  function remember(message) {
    for (const [name, value] of [
      ["instance", message.instance],
      ["queue", message.queue],
      ["language", message.language],
    ]) {
      if (value && !known[name].has(value)) {
        known[name].add(value);
        lists[name].append(h("option", { value }));
      }
    }
  }

  function messageRow(message, isNew) {
    const href = conversationHref(message.conversation_id || "");
    const sender = message.sender || {};
    const text = message.text === null || message.text === undefined || message.text === "" ? null : message.text;
    const row = h(
      "tr",
      {
        class: "clickable" + (isNew ? " is-new" : "") + (message.masked ? " is-masked" : ""),
        "data-testid": "message-row",
        "data-id": message.id,
        "data-conversation-id": message.conversation_id,
        "data-masked": message.masked ? "true" : "false",
      },
      td(columns[0].label, timeEl(message.received_at)),
      td(
        columns[1].label,
        h(
          "span",
          null,
          mono(message.instance),
          message.channel && message.channel !== message.instance ? h("span", { class: "sub" }, message.channel) : null,
        ),
      ),
      td(
        columns[2].label,
        h("span", { class: "sender" }, sender.name || "", h("span", { class: "sub" }, mono(sender.id))),
      ),
      td(
        columns[3].label,
        h(
          "a",
          { href, class: "message-text" + (text ? "" : " muted"), "data-testid": "message-link" },
          h("span", { "data-testid": "message-text" }, text ?? t("messages.no_text")),
        ),
        { class: "col-text" },
      ),
      td(columns[4].label, message.language ? mono(message.language) : "—"),
      td(columns[5].label, sentimentBadge(message.sentiment)),
      td(
        columns[6].label,
        h(
          "span",
          null,
          message.queue || "—",
          message.priority && message.priority !== "normal"
            ? h(
                "span",
                null,
                " ",
                badge(priorityLabel(message.priority), message.priority === "urgent" ? "bad" : "warn"),
              )
            : null,
        ),
      ),
      td(columns[7].label, tagList(message.tags)),
    );
    row.addEventListener("click", (event) => {
      if (event.target.closest("a, button, input, select, textarea, summary")) return;
      if (window.getSelection && String(window.getSelection()).length) return;
      location.hash = href;
    });
    return row;
  }

  function prepend(messages, isNew) {
    const empty = table.tbody.querySelector("tr.empty");
    if (empty && messages.length) empty.remove();
    for (const message of messages) {
      if (!message || !message.id || seen.has(message.id)) continue;
      seen.add(message.id);
      remember(message);
      table.tbody.prepend(messageRow(message, isNew));
    }
    while (table.tbody.rows.length > MAX_ROWS) {
      const last = table.tbody.rows[table.tbody.rows.length - 1];
      seen.delete(last.dataset.id);
      last.remove();
    }
  }

  function sayNew() {
    newCount.textContent = fresh ? t("messages.new_count", { n: fmtNum(fresh) }) : "";
    announceTimer = null;
  }

  function onMessage(message) {
    if (paused) {
      buffer.push(message);
      if (buffer.length > MAX_ROWS) buffer.shift();
      pause.textContent = t("messages.resume_with", { n: fmtNum(buffer.length) });
      return;
    }
    if (seen.has(message.id)) return;
    prepend([message], true);
    fresh += 1;
    if (!announceTimer) announceTimer = setTimeout(sayNew, 3000);
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? t("messages.resume") : t("messages.pause");
    if (paused) live.set("paused");
    else {
      live.set("live");
      const waiting = buffer;
      buffer = [];
      prepend(waiting, true);
      fresh += waiting.length;
      sayNew();
    }
  });

  function reload() {
    if (stop) stop();
    stop = null;
    seen.clear();
    fresh = 0;
    buffer = [];
    sayNew();
    fill(table.tbody, emptyRow(columns.length, t("app.loading")));
    clear(status);
    const params = { ...filters, limit: 50, unmask: unmaskWanted() };
    get("messages", params).then(
      (data) => {
        if (!alive) return;
        clear(table.tbody);
        const messages = (data && data.messages) || [];
        if (!messages.length) table.tbody.append(emptyRow(columns.length, t("messages.empty")));
        /* newest first: prepend oldest first */
        prepend(messages.slice().reverse(), false);
        stop = openStream(
          { messages: 1, ...filters, unmask: unmaskWanted() },
          { message: onMessage, state: (state) => live.set(paused && state === "live" ? "paused" : state) },
        );
      },
      (error) => {
        if (!alive || error.status === 401) return;
        clear(table.tbody);
        status.append(errorBox(error, reload));
      },
    );
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const name of FILTERS) filters[name] = (form.elements[name].value || "").trim();
    setHashQuery("/messages", filters);
    reload();
  });
  form.addEventListener("reset", () => {
    setTimeout(() => {
      for (const name of FILTERS) {
        filters[name] = "";
        form.elements[name].value = "";
      }
      setHashQuery("/messages", filters);
      reload();
    }, 0);
  });
  sentimentSelect.addEventListener("change", () => form.requestSubmit());

  /* instance names for the filter's suggestions */
  get("channels").then(
    (data) => {
      if (!alive || !data) return;
      for (const channel of data.instances || []) remember({ instance: channel.name });
    },
    () => {},
  );

  reload();
  return () => {
    alive = false;
    clearTimeout(announceTimer);
    if (stop) stop();
  };
}
