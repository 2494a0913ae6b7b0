/* Overview: traffic per instance over the last hour, webhook answer times and errors, lag, DLQ and
 * dispatch failures; GET overview once, then the `overview` events of GET stream?overview=1. */
import { get, openStream } from "../lib/api.js";
import { COUNT_STEPS, createChart } from "../lib/chart.js";
import { dataTable, emptyRow, errorBox, fill, fmtMs, fmtNum, fmtPct, h, mono, td, timeEl } from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { componentLabel, streamIndicator } from "../lib/labels.js";

function card(metric, label, value, sub, tone = "neutral", href = null) {
  const body = [
    h("span", { class: "card-label" }, label),
    h("span", { class: "card-value", "data-testid": "overview-value" }, value),
    sub ? h("span", { class: "card-sub" }, sub) : null,
  ];
  return h(
    "li",
    { class: "card stat tone-" + tone, "data-testid": "overview-card", "data-metric": metric },
    href ? h("a", { class: "card-link", href }, body) : body,
  );
}

function lagOf(data, component) {
  const rows = (data.lag || []).filter((row) => row.component === component);
  return rows.length ? rows.reduce((sum, row) => sum + (Number(row.lag) || 0), 0) : null;
}

function errorRate(webhook) {
  if (!webhook || !webhook.requests) return null;
  return ((Number(webhook.errors_4xx) || 0) + (Number(webhook.errors_5xx) || 0)) / webhook.requests;
}

export function render(root) {
  let alive = true;
  let stop = null;
  let chart = null;
  let chartNames = "";
  const live = streamIndicator("overview-live");
  const updated = h("span", { class: "muted", "data-testid": "overview-updated" });
  root.querySelector(".page-head").append(h("div", { class: "page-tools" }, live.el, updated));

  const body = h("div", { class: "page-body" });
  root.append(body);
  const cards = h("ul", { class: "cards", "data-testid": "overview-cards", "aria-label": t("overview.key_figures") });
  const chartBox = h(
    "section",
    { class: "panel", "aria-labelledby": "ov-chart" },
    h("h2", { id: "ov-chart", class: "panel-title" }, t("overview.traffic")),
  );
  const webhookBox = h(
    "section",
    { class: "panel", "aria-labelledby": "ov-webhooks" },
    h("h2", { id: "ov-webhooks", class: "panel-title" }, t("overview.webhooks")),
  );
  const lagBox = h(
    "section",
    { class: "panel", "aria-labelledby": "ov-lag" },
    h("h2", { id: "ov-lag", class: "panel-title" }, t("overview.lag")),
  );
  const webhookTable = h("div");
  const lagTable = h("div");
  webhookBox.append(webhookTable);
  lagBox.append(lagTable);

  function show(data) {
    if (!alive || !data) return;
    const totals = data.totals || {};
    const dlq = data.dlq || {};
    const failed = Number(totals.dispatch_failed) || 0;
    const rate = totals.webhook_error_rate;
    const workerLag = lagOf(data, "worker");
    const dispatchLag = lagOf(data, "dispatch");
    fill(
      cards,
      card(
        "messages",
        t("overview.messages_hour"),
        fmtNum(totals.messages_last_hour),
        t("overview.last_minute", { n: fmtNum(totals.messages_last_minute) }),
      ),
      card(
        "webhook_requests",
        t("overview.webhook_requests"),
        fmtNum(totals.webhook_requests),
        t("overview.error_rate_is", { rate: fmtPct(rate) }),
        rate > 0.05 ? "bad" : rate > 0 ? "warn" : "neutral",
      ),
      card(
        "dispatch_failed",
        t("overview.dispatch_failures"),
        fmtNum(failed),
        t("overview.of_sent", { n: fmtNum(totals.dispatch_sent) }),
        failed > 0 ? "bad" : "neutral",
      ),
      card(
        "dlq",
        t("overview.dlq_size"),
        fmtNum(dlq.size),
        t("overview.dlq_last_hour", { n: fmtNum(dlq.last_hour) }),
        dlq.last_hour > 0 ? "warn" : "neutral",
        "#/dlq",
      ),
      card(
        "worker_lag",
        t("overview.worker_lag"),
        fmtNum(workerLag),
        t("overview.records_behind"),
        workerLag > 1000 ? "warn" : "neutral",
      ),
      card(
        "dispatch_lag",
        t("overview.dispatch_lag"),
        fmtNum(dispatchLag),
        t("overview.records_behind"),
        dispatchLag > 1000 ? "warn" : "neutral",
      ),
    );
    fill(updated, t("overview.updated"), " ", timeEl(data.generated_at));
    showChart(data);
    showWebhooks(data);
    showLag(data);
  }

  function showChart(data) {
    const instances = data.instances || [];
    const x = (data.minutes || []).map((minute) => Math.floor(new Date(minute).getTime() / 1000));
    const series = instances.map((instance) => ({ label: instance.name }));
    const names = instances.map((instance) => instance.name).join("\u0000");
    const summary = instances.length
      ? instances
          .map((instance) => {
            const values = (instance.messages || []).map(Number);
            const total = values.reduce((a, b) => a + (b || 0), 0);
            return t("overview.chart_summary_item", {
              name: instance.name,
              total: fmtNum(total),
              peak: fmtNum(values.length ? Math.max(...values) : 0),
            });
          })
          .join("; ")
      : t("overview.no_instances");
    const chartData = { x, ys: instances.map((instance) => instance.messages || []), summary };
    if (!chart) {
      chart = createChart(chartBox, {
        testid: "chart-overview-messages",
        title: t("overview.chart_title"),
        series,
        format: (v) => fmtNum(v),
        incrs: COUNT_STEPS,
      });
      chartNames = names;
    } else if (names !== chartNames) {
      chartNames = names;
      chart.rebuild(series);
    }
    chart.update(chartData);
  }

  function showWebhooks(data) {
    const columns = [
      { label: t("col.instance") },
      { label: t("col.type") },
      { label: t("overview.col_messages"), cls: "num" },
      { label: t("overview.col_requests"), cls: "num" },
      { label: "4xx", cls: "num" },
      { label: "5xx", cls: "num" },
      { label: t("overview.col_error_rate"), cls: "num" },
      { label: "p50", cls: "num" },
      { label: "p95", cls: "num" },
    ];
    const table = dataTable({ caption: t("overview.webhooks"), columns, testid: "overview-webhooks" });
    const instances = data.instances || [];
    if (!instances.length) table.tbody.append(emptyRow(columns.length, t("overview.no_instances")));
    for (const instance of instances) {
      const w = instance.webhook || {};
      const total = (instance.messages || []).reduce((a, b) => a + (Number(b) || 0), 0);
      const rate = errorRate(w);
      table.tbody.append(
        h(
          "tr",
          { "data-testid": "overview-webhook-row", "data-instance": instance.name },
          td(columns[0].label, mono(instance.name)),
          td(columns[1].label, instance.type || "—"),
          td(columns[2].label, fmtNum(total), { class: "num" }),
          td(columns[3].label, fmtNum(w.requests), { class: "num" }),
          td(columns[4].label, fmtNum(w.errors_4xx), { class: "num" + (w.errors_4xx > 0 ? " text-warn" : "") }),
          td(columns[5].label, fmtNum(w.errors_5xx), { class: "num" + (w.errors_5xx > 0 ? " text-bad" : "") }),
          td(columns[6].label, fmtPct(rate), { class: "num" }),
          td(columns[7].label, fmtMs(w.p50_ms), { class: "num" }),
          td(columns[8].label, fmtMs(w.p95_ms), { class: "num" }),
        ),
      );
    }
    fill(webhookTable, table.wrap);
  }

  function showLag(data) {
    const columns = [
      { label: t("col.component") },
      { label: t("col.group") },
      { label: t("col.topic") },
      { label: t("overview.col_lag"), cls: "num" },
    ];
    const table = dataTable({ caption: t("overview.lag"), columns, testid: "overview-lag" });
    const rows = data.lag || [];
    if (!rows.length) table.tbody.append(emptyRow(columns.length, t("overview.no_lag")));
    for (const row of rows) {
      table.tbody.append(
        h(
          "tr",
          { "data-testid": "overview-lag-row", "data-component": row.component },
          td(columns[0].label, componentLabel(row.component)),
          td(columns[1].label, mono(row.group)),
          td(columns[2].label, mono(row.topic)),
          td(columns[3].label, fmtNum(row.lag), { class: "num" + (row.lag > 1000 ? " text-warn" : "") }),
        ),
      );
    }
    fill(lagTable, table.wrap);
  }

  function load() {
    fill(body, h("p", { class: "loading" }, t("app.loading")));
    get("overview").then(
      (data) => {
        if (!alive) return;
        fill(body, cards, chartBox, webhookBox, lagBox);
        show(data);
        if (!stop) {
          stop = openStream({ overview: 1 }, { overview: show, state: live.set });
        }
      },
      (error) => {
        if (alive && error.status !== 401) fill(body, errorBox(error, load));
      },
    );
  }
  load();

  return () => {
    alive = false;
    if (stop) stop();
    if (chart) chart.destroy();
  };
}
