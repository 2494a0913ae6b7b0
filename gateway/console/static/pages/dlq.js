/* DLQ: browse (GET dlq), inspect one record's raw payload, reason and headers (GET dlq/{id}), replay
 * one or a selection (POST dlq/replay, permission `replay`) and show each record's outcome. */
import { can, get, post, segment } from "../lib/api.js";
import {
  announce,
  badge,
  clear,
  copyText,
  dataTable,
  emptyRow,
  errorBox,
  errorText,
  field,
  fill,
  fmtNum,
  h,
  mono,
  prettyJson,
  selectEl,
  setHashQuery,
  td,
  timeEl,
} from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { outcomeLabel, outcomeTone, stageLabel } from "../lib/labels.js";

const FILTERS = ["stage", "instance", "reason"];

function outcomeContent(result) {
  const ids = Array.isArray(result.message_ids) ? result.message_ids : [];
  return [
    badge(outcomeLabel(result.outcome), outcomeTone(result.outcome)),
    result.target ? h("span", { class: "small" }, " → ", mono(result.target)) : null,
    result.detail ? h("div", { class: "small muted outcome-detail" }, result.detail) : null,
    ids.length
      ? h(
          "div",
          { class: "small" },
          t("dlq.message_ids"),
          " ",
          ids.map((id, i) => [i ? ", " : "", mono(id)]),
        )
      : null,
  ];
}

export function render(root, { query }) {
  let alive = true;
  const mayReplay = can("replay");
  const filters = {};
  for (const name of FILTERS) filters[name] = query.get(name) || "";
  const rows = new Map(); /* dlq id -> {row, box, outcome, record} */

  /* ---- filters ---- */
  const instances = h("datalist", { id: "dl-dlq-instance" });
  const form = h(
    "form",
    { class: "filters", "data-testid": "dlq-filters", role: "search", "aria-label": t("dlq.filters") },
    field(
      t("col.stage"),
      selectEl(
        { name: "stage", "data-testid": "filter-stage" },
        [
          ["", t("common.any")],
          ["ingress", t("stage.ingress")],
          ["normalize", t("stage.normalize")],
          ["process", t("stage.process")],
          ["dispatch", t("stage.dispatch")],
        ],
        filters.stage,
      ),
    ),
    field(
      t("col.instance"),
      h("input", {
        type: "search",
        name: "instance",
        value: filters.instance,
        list: instances.id,
        autocomplete: "off",
        "data-testid": "filter-instance",
      }),
    ),
    field(
      t("dlq.reason_contains"),
      h("input", {
        type: "search",
        name: "reason",
        value: filters.reason,
        autocomplete: "off",
        "data-testid": "filter-reason",
      }),
    ),
    instances,
    h(
      "div",
      { class: "filter-actions" },
      h("button", { type: "submit", class: "btn btn-primary", "data-testid": "filter-apply" }, t("common.apply")),
      h("button", { type: "reset", class: "btn btn-ghost", "data-testid": "filter-reset" }, t("common.reset")),
    ),
  );

  /* ---- toolbar ---- */
  const size = h("span", { class: "muted", "data-testid": "dlq-size" });
  const refresh = h(
    "button",
    { type: "button", class: "btn btn-small", "data-testid": "dlq-refresh" },
    t("common.refresh"),
  );
  root.querySelector(".page-head").append(h("div", { class: "page-tools" }, size, refresh));

  const replaySelected = h(
    "button",
    { type: "button", class: "btn btn-primary", disabled: true, "data-testid": "dlq-replay" },
    t("dlq.replay_selected", { n: 0 }),
  );
  const force = h("input", { type: "checkbox", "data-testid": "dlq-force" });
  const summary = h("div", {
    class: "form-status",
    role: "status",
    "aria-live": "polite",
    "data-testid": "dlq-replay-summary",
  });
  const toolbar = mayReplay
    ? h(
        "div",
        { class: "toolbar", "data-testid": "dlq-toolbar" },
        replaySelected,
        h("label", { class: "check" }, force, " ", t("dlq.force")),
        summary,
      )
    : h("p", { class: "muted small", "data-testid": "dlq-readonly" }, t("dlq.readonly"));

  const selectAll = mayReplay
    ? h("input", { type: "checkbox", "aria-label": t("dlq.select_all"), "data-testid": "dlq-select-all" })
    : null;
  const columns = [
    ...(mayReplay ? [{ label: "", cls: "col-check" }] : []),
    { label: t("col.time") },
    { label: t("col.stage") },
    { label: t("col.instance") },
    { label: t("col.component") },
    { label: t("col.reason"), cls: "col-text" },
    { label: t("col.message_id") },
    { label: t("dlq.actions_outcome"), cls: "col-outcome" },
  ];
  const table = dataTable({ caption: t("nav.dlq"), columns, testid: "dlq-table", className: "dlq" });
  if (selectAll) table.table.querySelector("thead th").append(selectAll);
  const status = h("div");
  root.append(
    h("section", { class: "panel" }, form),
    status,
    h("section", { class: "panel panel-flush" }, toolbar, table.wrap),
  );

  /* ---- the inspect dialog ---- */
  const dialogBody = h("div", { class: "dialog-body" });
  const dialogTitle = h("h2", { id: "dlq-dialog-title", class: "dialog-title" }, t("dlq.inspect_title"));
  const closeButton = h(
    "button",
    { type: "button", class: "btn btn-ghost", "data-testid": "dlq-detail-close" },
    t("common.close"),
  );
  const dialog = h(
    "dialog",
    { class: "dialog", "aria-labelledby": "dlq-dialog-title", "data-testid": "dlq-detail" },
    h("div", { class: "dialog-head" }, dialogTitle, closeButton),
    dialogBody,
  );
  closeButton.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); /* a click on the backdrop */
  });
  root.append(dialog);
  let opener = null;
  dialog.addEventListener("close", () => {
    if (opener && opener.isConnected) opener.focus();
  });

  function selected() {
    return [...rows.entries()].filter(([, entry]) => entry.box && entry.box.checked).map(([id]) => id);
  }

  function updateSelection() {
    if (!mayReplay) return;
    const ids = selected();
    replaySelected.disabled = ids.length === 0;
    replaySelected.textContent = t("dlq.replay_selected", { n: fmtNum(ids.length) });
    selectAll.checked = ids.length > 0 && ids.length === rows.size;
    selectAll.indeterminate = ids.length > 0 && ids.length < rows.size;
  }
  if (selectAll) {
    selectAll.addEventListener("change", () => {
      for (const entry of rows.values()) entry.box.checked = selectAll.checked;
      updateSelection();
    });
  }

  function dlqRow(record) {
    const entry = { record };
    const cells = [];
    if (mayReplay) {
      entry.box = h("input", {
        type: "checkbox",
        "aria-label": t("dlq.select_one", { id: record.id }),
        "data-testid": "dlq-select",
      });
      entry.box.addEventListener("change", updateSelection);
      cells.push(td("", entry.box, { class: "col-check" }));
    }
    const inspect = h(
      "button",
      { type: "button", class: "btn btn-small", "data-testid": "dlq-inspect" },
      t("dlq.inspect"),
    );
    inspect.addEventListener("click", () => openDetail(record.id, inspect));
    let replayOne = null;
    if (mayReplay) {
      replayOne = h(
        "button",
        { type: "button", class: "btn btn-small", "data-testid": "dlq-replay-one" },
        t("dlq.replay"),
      );
      replayOne.addEventListener("click", () => replay([record.id]));
    }
    entry.state = h(
      "span",
      { class: "sub", "data-testid": "dlq-state", "data-replayed": record.replayed ? "true" : "false" },
      record.replayed ? badge(t("dlq.replayed"), "ok") : null,
    );
    entry.outcome = h("div", { class: "outcome", "data-testid": "dlq-outcome" });
    cells.push(
      td(t("col.time"), timeEl(record.at)),
      td(t("col.stage"), h("span", null, badge(stageLabel(record.stage), "stage"), entry.state)),
      td(
        t("col.instance"),
        h(
          "span",
          null,
          mono(record.instance),
          record.channel && record.channel !== record.instance
            ? h("span", { class: "muted small" }, " " + record.channel)
            : null,
        ),
      ),
      td(
        t("col.component"),
        h(
          "span",
          null,
          record.component || "—",
          record.error_type ? h("div", { class: "muted small" }, mono(record.error_type)) : null,
        ),
      ),
      td(t("col.reason"), h("span", { class: "reason clamp", title: record.reason || "" }, record.reason || "—"), {
        class: "col-text",
      }),
      td(t("col.message_id"), mono(record.message_id)),
      td(t("dlq.actions_outcome"), h("div", null, h("span", { class: "actions" }, inspect, replayOne), entry.outcome), {
        class: "col-outcome",
      }),
    );
    entry.row = h("tr", { "data-testid": "dlq-row", "data-id": record.id, "data-stage": record.stage }, cells);
    rows.set(record.id, entry);
    return entry.row;
  }

  function load() {
    refresh.disabled = true;
    rows.clear();
    clear(status);
    clear(summary);
    fill(table.tbody, emptyRow(columns.length, t("app.loading")));
    get("dlq", { ...filters, limit: 200 }).then(
      (data) => {
        if (!alive) return;
        refresh.disabled = false;
        const records = (data && data.records) || [];
        size.textContent = t("dlq.size", { shown: fmtNum(records.length), size: fmtNum(data && data.size) });
        clear(table.tbody);
        if (!records.length) table.tbody.append(emptyRow(columns.length, t("dlq.empty")));
        for (const record of records) table.tbody.append(dlqRow(record));
        updateSelection();
      },
      (error) => {
        if (!alive) return;
        refresh.disabled = false;
        clear(table.tbody);
        if (error.status !== 401) status.append(errorBox(error, load));
      },
    );
  }

  async function replay(ids) {
    if (!ids.length) return;
    const buttons = [replaySelected, ...root.querySelectorAll("[data-testid=dlq-replay-one]")];
    for (const button of buttons) button.disabled = true;
    for (const id of ids) {
      const entry = rows.get(id);
      if (entry) {
        entry.outcome.dataset.outcome = "pending";
        fill(entry.outcome, h("span", { class: "muted" }, t("dlq.replaying")));
      }
    }
    summary.className = "form-status";
    summary.textContent = t("dlq.replaying_n", { n: fmtNum(ids.length) });
    try {
      const answer = await post("dlq/replay", { ids, force: force.checked });
      if (!alive) return;
      const results = (answer && answer.results) || [];
      const tally = new Map();
      const answered = new Set();
      for (const result of results) {
        answered.add(result.dlq_id);
        tally.set(result.outcome, (tally.get(result.outcome) || 0) + 1);
        const entry = rows.get(result.dlq_id);
        if (!entry) continue;
        entry.outcome.dataset.outcome = result.outcome;
        fill(entry.outcome, outcomeContent(result));
        if (result.outcome === "replayed" || result.outcome === "duplicate") {
          entry.state.dataset.replayed = "true";
          fill(entry.state, badge(t("dlq.replayed"), "ok"));
        }
        if (entry.box) entry.box.checked = false;
      }
      for (const id of ids) {
        const entry = rows.get(id);
        if (entry && !answered.has(id)) {
          entry.outcome.dataset.outcome = "missing";
          fill(entry.outcome, badge(t("dlq.no_result"), "bad"));
        }
      }
      const words = [...tally.entries()].map(([outcome, n]) => outcomeLabel(outcome) + ": " + fmtNum(n)).join(", ");
      summary.className = "form-status";
      summary.textContent = t("dlq.replay_done", { n: fmtNum(results.length) }) + (words ? " — " + words : "");
    } catch (error) {
      if (!alive || error.status === 401) return;
      const text = errorText(error);
      for (const id of ids) {
        const entry = rows.get(id);
        if (entry) {
          entry.outcome.dataset.outcome = "error";
          fill(entry.outcome, badge(t("dlq.replay_failed"), "bad"), h("div", { class: "small muted" }, text));
        }
      }
      summary.className = "form-status text-bad";
      summary.textContent = t("dlq.replay_failed") + ": " + text;
    } finally {
      for (const button of buttons) button.disabled = false;
      updateSelection();
    }
  }
  replaySelected.addEventListener("click", () => replay(selected()));

  function openDetail(id, from) {
    opener = from;
    dialogTitle.textContent = t("dlq.inspect_title");
    fill(dialogBody, h("p", { class: "loading" }, t("app.loading")));
    if (!dialog.open) dialog.showModal();
    get("dlq/" + segment(id)).then(
      (record) => {
        if (!alive || !dialog.open) return;
        showDetail(record || {});
      },
      (error) => {
        if (!alive || error.status === 401) return;
        fill(
          dialogBody,
          errorBox(error, () => openDetail(id, from)),
        );
      },
    );
  }

  function showDetail(record) {
    const headers = Object.entries(record.headers && typeof record.headers === "object" ? record.headers : {});
    const facts = [
      [t("col.id"), mono(record.id)],
      [t("col.time"), timeEl(record.at)],
      [t("col.stage"), stageLabel(record.stage)],
      [t("col.instance"), mono(record.instance)],
      [t("col.channel"), record.channel || "—"],
      [t("col.component"), record.component || "—"],
      [t("dlq.error_type"), mono(record.error_type)],
      [t("dlq.source_topic"), mono(record.source_topic)],
      [t("col.message_id"), mono(record.message_id)],
      [t("dlq.state"), record.replayed ? t("dlq.replayed") : t("dlq.pending")],
    ];
    const headerTable = dataTable({
      caption: t("dlq.headers"),
      columns: [{ label: t("dlq.header_name") }, { label: t("dlq.header_value") }],
      testid: "dlq-headers",
      className: "compact",
    });
    if (!headers.length) headerTable.tbody.append(emptyRow(2, t("dlq.no_headers")));
    for (const [name, value] of headers) {
      headerTable.tbody.append(
        h(
          "tr",
          null,
          td(t("dlq.header_name"), mono(name)),
          td(t("dlq.header_value"), h("span", { class: "mono break" }, String(value))),
        ),
      );
    }
    let payloadBox;
    if (record.payload_hidden || record.payload === null || record.payload === undefined) {
      payloadBox = h(
        "p",
        { class: "alert alert-info", "data-testid": "dlq-payload-hidden" },
        record.payload_hidden ? t("dlq.payload_hidden") : t("dlq.payload_none"),
      );
    } else {
      const raw = String(record.payload);
      let formatted = null;
      if (record.payload_encoding !== "base64") {
        try {
          formatted = prettyJson(JSON.parse(raw));
        } catch {
          formatted = null;
        }
      }
      const pre = h("pre", { class: "mono code-block payload", "data-testid": "dlq-payload" }, formatted ?? raw);
      const asSent = formatted
        ? h(
            "label",
            { class: "check small" },
            h("input", {
              type: "checkbox",
              "data-testid": "dlq-payload-raw",
              on: {
                change: (event) => {
                  pre.textContent = event.target.checked ? raw : formatted;
                },
              },
            }),
            " ",
            t("dlq.payload_as_sent"),
          )
        : null;
      const copy = h(
        "button",
        { type: "button", class: "btn btn-small", "data-testid": "dlq-payload-copy" },
        t("dlq.copy_payload"),
      );
      copy.addEventListener("click", async () => {
        const ok = await copyText(raw);
        announce(ok ? t("dlq.payload_copied") : t("channels.copy_failed"));
      });
      payloadBox = h(
        "div",
        null,
        h(
          "div",
          { class: "toolbar" },
          badge(record.payload_encoding || "utf-8", "neutral", { "data-testid": "dlq-payload-encoding" }),
          asSent,
          copy,
        ),
        pre,
      );
    }
    fill(
      dialogBody,
      h(
        "dl",
        { class: "kv kv-compact" },
        facts.map(([label, value]) => h("div", { class: "kv-row" }, h("dt", null, label), h("dd", null, value))),
      ),
      h("h3", null, t("col.reason")),
      h("pre", { class: "code-block reason-block", "data-testid": "dlq-reason" }, record.reason || "—"),
      h("h3", null, t("dlq.headers")),
      headerTable.wrap,
      h("h3", null, t("dlq.payload")),
      payloadBox,
    );
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const name of FILTERS) filters[name] = (form.elements[name].value || "").trim();
    setHashQuery("/dlq", filters);
    load();
  });
  form.addEventListener("reset", () => {
    setTimeout(() => {
      for (const name of FILTERS) {
        filters[name] = "";
        form.elements[name].value = "";
      }
      setHashQuery("/dlq", filters);
      load();
    }, 0);
  });
  form.elements.stage.addEventListener("change", () => form.requestSubmit());
  refresh.addEventListener("click", load);

  get("channels").then(
    (data) => {
      if (!alive || !data) return;
      for (const channel of data.instances || []) instances.append(h("option", { value: channel.name }));
    },
    () => {},
  );

  load();
  return () => {
    alive = false;
    if (dialog.open) dialog.close();
  };
}
