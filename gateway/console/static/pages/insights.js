/* Insights (GET insights): first-response time, SLA breaches, CSAT and sentiment over time, for a
 * period, per hour or day, per instance and queue; the period's totals from `report`. */
import { get } from "../lib/api.js";
import { COUNT_STEPS, createChart } from "../lib/chart.js";
import { errorBox, field, fill, fmtDuration, fmtNum, fmtPct, h, selectEl, setHashQuery } from "../lib/dom.js";
import { getLang, t } from "../lib/i18n.js";

const PERIODS = ["24h", "7d", "30d"];
const BUCKETS = ["hour", "day"];
/* y-axis steps of duration charts, in seconds: ticks at round minutes and hours */
const DURATION_STEPS = [
  1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
];

function obj(value) {
  return value && typeof value === "object" && !Array.isArray(value) ? value : {};
}

function num(value) {
  return value === null || value === undefined || Number.isNaN(Number(value)) ? null : Number(value);
}

function stat(metric, label, value, sub, tone = "neutral") {
  return h(
    "li",
    { class: "card stat tone-" + tone, "data-testid": "insights-card", "data-metric": metric },
    h("span", { class: "card-label" }, label),
    h("span", { class: "card-value" }, value),
    sub ? h("span", { class: "card-sub" }, sub) : null,
  );
}

function periodLabel(value) {
  switch (value) {
    case "24h":
      return t("insights.period_24h");
    case "7d":
      return t("insights.period_7d");
    case "30d":
      return t("insights.period_30d");
    default:
      return value;
  }
}

export function render(root, { query }) {
  let alive = true;
  let charts = [];
  const params = {
    since: PERIODS.includes(query.get("since")) ? query.get("since") : "7d",
    bucket: BUCKETS.includes(query.get("bucket")) ? query.get("bucket") : "",
    instance: query.get("instance") || "",
    queue: query.get("queue") || "",
  };
  if (!params.bucket) params.bucket = params.since === "24h" ? "hour" : "day";

  const period = selectEl(
    { name: "since", "data-testid": "insights-period" },
    PERIODS.map((p) => [p, periodLabel(p)]),
    params.since,
  );
  const bucket = selectEl(
    { name: "bucket", "data-testid": "insights-bucket" },
    [
      ["hour", t("insights.bucket_hour")],
      ["day", t("insights.bucket_day")],
    ],
    params.bucket,
  );
  const instance = selectEl(
    { name: "instance", "data-testid": "insights-instance" },
    [["", t("common.all")]],
    params.instance,
  );
  const queue = selectEl({ name: "queue", "data-testid": "insights-queue" }, [["", t("common.all")]], params.queue);
  const form = h(
    "form",
    { class: "filters", "data-testid": "insights-filters", "aria-label": t("insights.filters") },
    field(t("insights.period"), period),
    field(t("insights.bucket"), bucket),
    field(t("col.instance"), instance),
    field(t("col.queue"), queue),
  );
  const range = h("p", { class: "muted", "data-testid": "insights-range" });
  const body = h("div", { class: "page-body" });
  root.append(h("section", { class: "panel" }, form, range), body);

  function fillSelect(select, values, current) {
    const list = [
      ...new Set([...(Array.isArray(values) ? values : []).filter(Boolean).map(String), ...(current ? [current] : [])]),
    ].sort();
    fill(select, h("option", { value: "" }, t("common.all")));
    for (const value of list) select.append(h("option", { value, selected: value === current }, value));
  }

  function destroyCharts() {
    for (const chart of charts) chart.destroy();
    charts = [];
  }

  function show(data) {
    destroyCharts();
    fillSelect(instance, data.instances, params.instance);
    fillSelect(queue, data.queues, params.queue);
    range.textContent =
      data.since && data.until
        ? t("insights.range", {
            since: new Intl.DateTimeFormat(getLang(), { dateStyle: "medium", timeStyle: "short" }).format(
              new Date(data.since),
            ),
            until: new Intl.DateTimeFormat(getLang(), { dateStyle: "medium", timeStyle: "short" }).format(
              new Date(data.until),
            ),
          })
        : "";
    const report = obj(data.report);
    const volumes = obj(obj(report.volumes).total);
    const first = obj(obj(obj(report.response_times).all).first_response);
    const sla = obj(report.sla);
    const csat = obj(report.csat);
    const sentiment = obj(report.sentiment);
    const cycles = num(sentiment.cycles) || 0;
    const cards = h(
      "ul",
      { class: "cards", "data-testid": "insights-cards", "aria-label": t("insights.totals") },
      stat(
        "opened",
        t("insights.opened"),
        fmtNum(volumes.opened),
        t("insights.resolved_n", { n: fmtNum(volumes.resolved) }),
      ),
      stat(
        "first_response",
        t("insights.first_response_p50"),
        fmtDuration(first.p50_s),
        t("insights.p90_is", { value: fmtDuration(first.p90_s) }),
      ),
      stat(
        "sla",
        t("insights.sla_breach_rate"),
        fmtPct(sla.breach_rate),
        t("insights.breached_cycles", { n: fmtNum(sla.breached_cycles), total: fmtNum(sla.cycles) }),
        num(sla.breach_rate) > 0.1 ? "bad" : num(sla.breach_rate) > 0 ? "warn" : "neutral",
      ),
      stat(
        "csat",
        t("insights.csat_average"),
        csat.average_rating === null || csat.average_rating === undefined
          ? "—"
          : fmtNum(csat.average_rating, 2) + " / 5",
        t("insights.csat_responses_rate", { n: fmtNum(csat.responses), rate: fmtPct(csat.response_rate) }),
      ),
      stat(
        "sentiment",
        t("insights.negative_share"),
        cycles ? fmtPct((num(sentiment.negative) || 0) / cycles) : "—",
        t("insights.sentiment_split", {
          positive: fmtNum(sentiment.positive),
          neutral: fmtNum(sentiment.neutral),
          negative: fmtNum(sentiment.negative),
        }),
      ),
    );
    const series = Array.isArray(data.series) ? data.series : [];
    const x = series.map((row) => Math.floor(new Date(row.start).getTime() / 1000));
    const col = (pick) => series.map((row) => num(pick(obj(row))));
    const grid = h("div", { class: "chart-grid" });
    fill(body, Object.keys(report).length ? cards : null, grid);
    if (!series.length) {
      grid.append(h("p", { class: "empty-state", "data-testid": "insights-empty" }, t("insights.empty")));
      return;
    }
    const panel = () => {
      const section = h("section", { class: "panel" });
      grid.append(section);
      return section;
    };
    const total = (values) => values.reduce((a, b) => a + (b || 0), 0);
    const lastOf = (values) => {
      for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
      return null;
    };

    const p50 = col((r) => r.first_response_p50_s);
    const p90 = col((r) => r.first_response_p90_s);
    const frt = createChart(panel(), {
      testid: "chart-first-response",
      title: t("insights.chart_first_response"),
      series: [
        { label: "p50", points: true },
        { label: "p90", points: true },
      ],
      format: (v) => fmtDuration(v),
      incrs: DURATION_STEPS,
    });
    frt.update({
      x,
      ys: [p50, p90],
      summary: t("insights.summary_first_response", {
        p50: fmtDuration(lastOf(p50)),
        p90: fmtDuration(lastOf(p90)),
      }),
    });

    const breaches = col((r) => r.sla_breaches);
    const opened = col((r) => r.opened);
    const slaChart = createChart(panel(), {
      testid: "chart-sla",
      title: t("insights.chart_sla"),
      series: [
        { label: t("insights.sla_breaches"), bars: true, color: "#dc2626" },
        { label: t("insights.opened"), color: "#2563eb" },
      ],
      format: (v) => fmtNum(v),
      incrs: COUNT_STEPS,
    });
    slaChart.update({
      x,
      ys: [breaches, opened],
      summary: t("insights.summary_sla", {
        breaches: fmtNum(total(breaches)),
        opened: fmtNum(total(opened)),
      }),
    });

    const average = col((r) => r.csat_average);
    const responses = col((r) => r.csat_responses);
    const csatChart = createChart(panel(), {
      testid: "chart-csat",
      title: t("insights.chart_csat"),
      series: [
        { label: t("insights.csat_average"), color: "#7c3aed", points: true },
        { label: t("insights.csat_responses"), bars: true, scale: "y2", color: "#0891b2" },
      ],
      format: (v) => fmtNum(v, 2),
      minMax: 5,
      y2Format: (v) => fmtNum(v),
    });
    csatChart.update({
      x,
      ys: [average, responses],
      summary: t("insights.summary_csat", {
        average: lastOf(average) === null ? "—" : fmtNum(lastOf(average), 2),
        responses: fmtNum(total(responses)),
      }),
    });

    const positive = col((r) => obj(r.sentiment).positive);
    const neutral = col((r) => obj(r.sentiment).neutral);
    const negative = col((r) => obj(r.sentiment).negative);
    const sentimentChart = createChart(panel(), {
      testid: "chart-sentiment",
      title: t("insights.chart_sentiment"),
      series: [
        { label: t("sentiment.positive"), color: "#059669" },
        { label: t("sentiment.neutral"), color: "#6b7280" },
        { label: t("sentiment.negative"), color: "#dc2626" },
      ],
      format: (v) => fmtNum(v),
      incrs: COUNT_STEPS,
    });
    sentimentChart.update({
      x,
      ys: [positive, neutral, negative],
      summary: t("insights.summary_sentiment", {
        positive: fmtNum(total(positive)),
        neutral: fmtNum(total(neutral)),
        negative: fmtNum(total(negative)),
      }),
    });
    charts = [frt, slaChart, csatChart, sentimentChart];
  }

  function load() {
    setHashQuery("/insights", params);
    destroyCharts();
    fill(body, h("p", { class: "loading" }, t("app.loading")));
    get("insights", params).then(
      (data) => {
        if (alive) show(data || {});
      },
      (error) => {
        if (alive && error.status !== 401) fill(body, errorBox(error, load));
      },
    );
  }

  form.addEventListener("change", (event) => {
    if (event.target === period) {
      params.bucket = period.value === "24h" ? "hour" : period.value === "30d" ? "day" : params.bucket;
      bucket.value = params.bucket;
    }
    params.since = period.value;
    params.bucket = bucket.value;
    params.instance = instance.value;
    params.queue = queue.value;
    load();
  });
  form.addEventListener("submit", (event) => event.preventDefault());

  load();
  return () => {
    alive = false;
    destroyCharts();
  };
}
