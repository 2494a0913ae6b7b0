/* Time-series charts on the vendored uPlot (global `uPlot`, vendor/uPlot.iife.min.js), each with a
 * text alternative: an aria-label summary on the plot and the same numbers as a table. */
import { getLang, t } from "./i18n.js";
import { clear, dataTable, fmtDateTime, h, td } from "./dom.js";

export const PALETTE = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#dc2626", "#65a30d"];

function cssVar(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/* Axis labels in the user's language: times within two days, dates beyond. */
function timeAxisValues(u, splits) {
  const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
  const options = span > 2 * 86400 ? { month: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit" };
  const format = new Intl.DateTimeFormat(getLang(), options);
  return splits.map((v) => format.format(new Date(v * 1000)));
}

/* spec: {testid, title, series: [{label, color?, bars?, scale?, points?}], format(value) -> text,
 *        height?, minMax? (the y axis reaches at least this), incrs? (y tick steps),
 *        y2Format? (a second axis on the right for series with scale "y2")}
 * data: {x: [unix seconds], ys: [[values] per series], summary: text} */
/* Whole-number tick steps for counts (uPlot would otherwise label 0.2, 0.4... rounded to 0, 0, 1). */
export const COUNT_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7];

export function createChart(container, spec) {
  const plot = h("div", { class: "chart-plot", role: "img", "data-testid": spec.testid });
  const tableHolder = h("div", { class: "chart-table" });
  const figure = h(
    "figure",
    { class: "chart" },
    h("figcaption", { class: "chart-title" }, spec.title),
    plot,
    h(
      "details",
      { class: "chart-alt", "data-testid": spec.testid + "-table" },
      h("summary", null, t("chart.show_table")),
      tableHolder,
    ),
  );
  container.append(figure);

  let uplot = null;
  let last = null;
  const height = spec.height || 220;
  const muted = cssVar("--muted", "#5b6472");
  const grid = cssVar("--grid", "rgba(0,0,0,.08)");

  function axis(scale, format, side, incrs) {
    const spec = {
      scale,
      side,
      stroke: muted,
      grid: { stroke: grid, width: 1, show: side !== 1 },
      ticks: { stroke: grid, width: 1 },
      values: (u, splits) => splits.map((v) => (v === 0 ? "0" : format(v))),
      size: 72,
    };
    if (incrs) spec.incrs = incrs;
    return spec;
  }

  /* Bars centred on their bucket need half a bucket of room at both ends. */
  function xRange(u, min, max) {
    if (!spec.series.some((s) => s.bars) || !last || last.x.length === 0) return [min, max];
    const step = last.x.length > 1 ? last.x[1] - last.x[0] : 3600;
    return [min - step / 2, max + step / 2];
  }

  function options(width) {
    const hasY2 = spec.series.some((s) => s.scale === "y2");
    const scales = {
      x: { time: true, range: xRange },
      y: { range: (u, min, max) => [0, Math.max(max || 0, spec.minMax || 1)] },
    };
    if (hasY2) scales.y2 = { range: spec.y2Range || ((u, min, max) => [0, Math.max(max || 0, 1)]) };
    const axes = [
      { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, values: timeAxisValues },
      axis("y", spec.format, 3, spec.incrs),
    ];
    if (hasY2) axes.push(axis("y2", spec.y2Format || spec.format, 1, spec.y2Incrs));
    return {
      width,
      height,
      scales,
      axes,
      legend: { live: true },
      cursor: { points: { size: 6 }, drag: { x: false, y: false } },
      series: [
        { label: t("chart.time"), value: (u, v) => (v === null || v === undefined ? "—" : fmtDateTime(v * 1000)) },
        ...spec.series.map((s, i) => {
          const color = s.color || PALETTE[i % PALETTE.length];
          const fmt = s.scale === "y2" ? spec.y2Format || spec.format : spec.format;
          const base = {
            label: s.label,
            scale: s.scale || "y",
            stroke: color,
            width: 2,
            spanGaps: false,
            points: { show: s.points ?? false },
            value: (u, v) => (v === null || v === undefined ? "—" : fmt(v)),
          };
          if (s.bars) {
            base.paths = uPlot.paths.bars({ size: [0.6, 48] });
            base.fill = color + "99";
            base.width = 1;
          }
          return base;
        }),
      ],
    };
  }

  function width() {
    return Math.max(260, Math.floor(plot.clientWidth || container.clientWidth || 600));
  }

  function renderTable(data) {
    clear(tableHolder);
    const columns = [{ label: t("chart.time") }, ...spec.series.map((s) => ({ label: s.label, cls: "num" }))];
    const table = dataTable({ caption: spec.title, columns, testid: spec.testid + "-rows", className: "compact" });
    data.x.forEach((x, row) => {
      const tr = h("tr", null, td(columns[0].label, fmtDateTime(x * 1000)));
      spec.series.forEach((s, i) => {
        const v = data.ys[i] ? data.ys[i][row] : null;
        const fmt = s.scale === "y2" ? spec.y2Format || spec.format : spec.format;
        tr.append(td(s.label, v === null || v === undefined ? "—" : fmt(v), { class: "num" }));
      });
      table.tbody.append(tr);
    });
    tableHolder.append(table.wrap);
  }

  function update(data) {
    last = data;
    plot.setAttribute("aria-label", spec.title + ". " + (data.summary || ""));
    const aligned = [data.x, ...spec.series.map((s, i) => data.ys[i] || data.x.map(() => null))];
    if (typeof uPlot === "undefined") {
      plot.textContent = t("chart.unavailable");
    } else if (!uplot) {
      uplot = new uPlot(options(width()), aligned, plot);
    } else {
      uplot.setData(aligned);
    }
    renderTable(data);
  }

  const observer =
    typeof ResizeObserver === "undefined"
      ? null
      : new ResizeObserver(() => {
          if (uplot && Math.abs(uplot.width - width()) > 2) uplot.setSize({ width: width(), height });
        });
  if (observer) observer.observe(plot);

  return {
    update,
    /* A new series list (an instance appeared): build the plot again. */
    rebuild(newSeries) {
      spec.series = newSeries;
      if (uplot) uplot.destroy();
      uplot = null;
      clear(plot);
      if (last) update(last);
    },
    destroy() {
      if (observer) observer.disconnect();
      if (uplot) uplot.destroy();
      uplot = null;
    },
  };
}
