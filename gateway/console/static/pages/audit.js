/* Audit (permission `audit`): every operator action, newest first (GET audit). */
import { get } from "../lib/api.js";
import {
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
  td,
  timeEl,
} from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { outcomeTone, roleLabel, viaLabel } from "../lib/labels.js";

export function render(root) {
  let alive = true;
  let entries = [];
  const search = h("input", { type: "search", autocomplete: "off", "data-testid": "audit-search" });
  const limit = selectEl(
    { "data-testid": "audit-limit" },
    [
      ["100", "100"],
      ["500", "500"],
      ["1000", "1000"],
    ],
    "100",
  );
  const count = h("p", { class: "muted", role: "status", "data-testid": "audit-count" });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": t("audit.filters") },
    field(t("audit.search"), search),
    field(t("audit.limit"), limit),
  );
  const columns = [
    { label: t("col.time") },
    { label: t("audit.actor") },
    { label: t("audit.action") },
    { label: t("audit.target") },
    { label: t("audit.outcome") },
    { label: t("audit.detail"), cls: "col-text" },
    { label: t("audit.remote") },
  ];
  const table = dataTable({ caption: t("nav.audit"), columns, testid: "audit-table" });
  const status = h("div");
  root.append(
    h("section", { class: "panel" }, form, count),
    status,
    h("section", { class: "panel panel-flush" }, table.wrap),
  );

  function text(entry) {
    return [entry.actor, entry.role, entry.via, entry.action, entry.target, entry.outcome, entry.detail, entry.remote]
      .map((v) => (v === null || v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v)))
      .join(" ")
      .toLowerCase();
  }

  function draw() {
    const needle = search.value.trim().toLowerCase();
    const shown = needle ? entries.filter((entry) => text(entry).includes(needle)) : entries;
    clear(table.tbody);
    if (!shown.length) table.tbody.append(emptyRow(columns.length, t("audit.empty")));
    for (const entry of shown) {
      const detail =
        entry.detail === null || entry.detail === undefined || entry.detail === ""
          ? "—"
          : typeof entry.detail === "string"
            ? entry.detail
            : JSON.stringify(entry.detail);
      table.tbody.append(
        h(
          "tr",
          { "data-testid": "audit-row", "data-id": entry.id, "data-action": entry.action },
          td(columns[0].label, timeEl(entry.at)),
          td(
            columns[1].label,
            h(
              "span",
              null,
              entry.actor || "—",
              h("span", { class: "sub" }, [roleLabel(entry.role), viaLabel(entry.via)].filter(Boolean).join(" · ")),
            ),
          ),
          td(columns[2].label, mono(entry.action)),
          td(columns[3].label, entry.target ? mono(entry.target) : "—"),
          td(columns[4].label, entry.outcome ? badge(String(entry.outcome), outcomeTone(entry.outcome)) : "—"),
          td(columns[5].label, h("span", { class: "break" }, detail), { class: "col-text" }),
          td(columns[6].label, mono(entry.remote)),
        ),
      );
    }
    count.textContent = t("audit.count", { shown: fmtNum(shown.length), total: fmtNum(entries.length) });
  }

  function load() {
    clear(status);
    fill(table.tbody, emptyRow(columns.length, t("app.loading")));
    get("audit", { limit: limit.value }).then(
      (data) => {
        if (!alive) return;
        entries = data && Array.isArray(data.entries) ? data.entries : [];
        draw();
      },
      (error) => {
        if (!alive || error.status === 401) return;
        clear(table.tbody);
        status.append(errorBox(error, load));
      },
    );
  }

  search.addEventListener("input", draw);
  limit.addEventListener("change", load);
  form.addEventListener("submit", (event) => event.preventDefault());
  load();
  return () => {
    alive = false;
  };
}
