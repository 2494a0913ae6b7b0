/* Channels: each instance's webhook URL, last verified request, last rejection, rate limiting and
 * send health; "send a test message" where the channel can send and the role may (send_test). */
import { can, get, post, segment } from "../lib/api.js";
import {
  announce,
  badge,
  clear,
  copyText,
  errorBox,
  errorText,
  field,
  fill,
  fmtNum,
  fmtPct,
  h,
  mono,
  parseTime,
  statusDot,
  timeEl,
} from "../lib/dom.js";
import { t } from "../lib/i18n.js";

function sum(values) {
  return values.reduce((a, b) => a + (Number(b) || 0), 0);
}

/* ok / warn / bad / idle, and why (the words go next to the dot). */
export function health(channel) {
  const send = channel.send || {};
  const sent = Number(send.sent) || 0;
  const failed = Number(send.failed) || 0;
  const retried = Number(send.retried) || 0;
  const rejected = sum(Object.values(channel.rejected_last_hour || {}));
  const limited = Number(channel.rate_limited_last_hour) || 0;
  const lastOk = parseTime(channel.last_verified_at);
  const lastBad = channel.last_rejection ? parseTime(channel.last_rejection.at) : null;
  const rejectedLast = !!lastBad && (!lastOk || lastBad > lastOk);
  const reasons = [];
  if (failed) reasons.push(t("channels.why_failed", { n: fmtNum(failed) }));
  if (retried) reasons.push(t("channels.why_retried", { n: fmtNum(retried) }));
  if (rejected) reasons.push(t("channels.why_rejected", { n: fmtNum(rejected) }));
  if (limited) reasons.push(t("channels.why_limited", { n: fmtNum(limited) }));
  if (rejectedLast) reasons.push(t("channels.why_last_rejected"));
  let tone = "ok";
  if ((failed > 0 && sent === 0) || (rejectedLast && rejected > 0 && !channel.messages_last_hour)) tone = "bad";
  else if (reasons.length) tone = "warn";
  else if (!lastOk && !channel.messages_last_hour && !sent) tone = "idle";
  return { tone, reasons };
}

function healthLabel(tone) {
  switch (tone) {
    case "ok":
      return t("health.ok");
    case "warn":
      return t("health.warn");
    case "bad":
      return t("health.bad");
    default:
      return t("health.idle");
  }
}

function row(label, value) {
  return h("div", { class: "kv-row" }, h("dt", null, label), h("dd", null, value));
}

function webhookField(channel) {
  if (!channel.webhook_url) return h("p", { class: "muted" }, t("channels.no_webhook"));
  const input = h("input", {
    type: "text",
    class: "mono",
    readonly: true,
    value: channel.webhook_url,
    "data-testid": "channel-webhook-url",
  });
  const button = h(
    "button",
    { type: "button", class: "btn btn-small", "data-testid": "copy-webhook" },
    t("channels.copy"),
  );
  button.addEventListener("click", async () => {
    const ok = await copyText(channel.webhook_url);
    if (!ok) input.select();
    button.textContent = ok ? t("channels.copied") : t("channels.copy_failed");
    announce(ok ? t("channels.copied_url", { name: channel.name }) : t("channels.copy_failed"));
    setTimeout(() => {
      button.textContent = t("channels.copy");
    }, 2000);
  });
  input.addEventListener("focus", () => input.select());
  const wrap = field(t("channels.webhook_url"), input);
  wrap.classList.add("copy-field");
  const control = h("div", { class: "input-with-button" }, input, button);
  wrap.append(control);
  return wrap;
}

function testForm(channel) {
  const recipient = h("input", { type: "text", required: true, autocomplete: "off", "data-testid": "test-recipient" });
  const text = h("textarea", { rows: 3, required: true, "data-testid": "test-text" });
  text.value = t("channels.test_default_text");
  const submit = h(
    "button",
    { type: "submit", class: "btn btn-primary", "data-testid": "test-submit" },
    t("channels.test_send"),
  );
  const result = h("div", {
    class: "form-status",
    role: "status",
    "aria-live": "polite",
    "data-testid": "test-result",
  });
  const form = h(
    "form",
    { class: "test-form", "data-testid": "test-form", "data-channel": channel.name, novalidate: true },
    field(t("channels.test_recipient"), recipient, t("channels.test_recipient_hint")),
    field(t("channels.test_text"), text),
    h("div", { class: "form-actions" }, submit),
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!recipient.value.trim() || !text.value.trim()) {
      result.className = "form-status text-bad";
      result.textContent = t("channels.test_missing");
      return;
    }
    submit.disabled = true;
    result.className = "form-status";
    result.textContent = t("channels.test_sending");
    try {
      const answer = await post("channels/" + segment(channel.name) + "/test", {
        recipient: recipient.value.trim(),
        text: text.value,
      });
      result.className = "form-status text-ok";
      result.dataset.outcome = "ok";
      fill(
        result,
        t("channels.test_queued"),
        " ",
        mono(answer && answer.message_id),
        " → ",
        mono(answer && answer.topic),
      );
    } catch (error) {
      if (error.status === 401) return;
      result.className = "form-status text-bad";
      result.dataset.outcome = "error";
      result.textContent =
        error.status === 409
          ? t("channels.test_cannot_send") + (error.serverMessage ? ": " + error.serverMessage : "")
          : errorText(error);
    } finally {
      submit.disabled = false;
    }
  });
  return h(
    "details",
    { class: "test-box" },
    h("summary", { "data-testid": "test-toggle" }, t("channels.test_title")),
    form,
  );
}

function channelCard(channel) {
  const { tone, reasons } = health(channel);
  const send = channel.send || {};
  const sent = Number(send.sent) || 0;
  const failed = Number(send.failed) || 0;
  const rejection = channel.last_rejection;
  const rejectedByReason = Object.entries(channel.rejected_last_hour || {}).sort((a, b) => b[1] - a[1]);
  const headingId = "ch-" + Math.random().toString(36).slice(2, 9);
  return h(
    "article",
    { class: "card channel", "data-testid": "channel-card", "data-name": channel.name, "aria-labelledby": headingId },
    h(
      "header",
      { class: "channel-head" },
      h("h2", { id: headingId, class: "channel-name" }, mono(channel.name)),
      badge(channel.type || "?", "neutral", { "data-testid": "channel-type" }),
      statusDot(tone, healthLabel(tone), { "data-testid": "channel-health", "data-health": tone }),
    ),
    reasons.length ? h("p", { class: "channel-reasons muted" }, reasons.join(" · ")) : null,
    webhookField(channel),
    h(
      "dl",
      { class: "kv" },
      row(
        t("channels.last_verified"),
        channel.last_verified_at
          ? h("span", { "data-testid": "channel-last-verified" }, timeEl(channel.last_verified_at))
          : h("span", { class: "muted", "data-testid": "channel-last-verified" }, t("channels.never")),
      ),
      row(
        t("channels.last_rejection"),
        rejection
          ? h(
              "span",
              { class: "rejection", "data-testid": "channel-last-rejection" },
              badge(String(rejection.status ?? "?"), "bad"),
              " ",
              h("span", { class: "reason" }, rejection.reason || "—"),
              " · ",
              timeEl(rejection.at),
            )
          : h("span", { class: "muted", "data-testid": "channel-last-rejection" }, t("channels.none")),
      ),
      row(t("channels.messages_hour"), fmtNum(channel.messages_last_hour)),
      row(
        t("channels.rejected_hour"),
        rejectedByReason.length
          ? h(
              "ul",
              { class: "inline-list" },
              rejectedByReason.map(([reason, n]) =>
                h("li", null, h("span", { class: "reason" }, reason), ": ", fmtNum(n)),
              ),
            )
          : "0",
      ),
      row(
        t("channels.rate_limited"),
        h("span", { "data-testid": "channel-rate-limited" }, fmtNum(channel.rate_limited_last_hour)),
      ),
      row(
        t("channels.send_health"),
        h(
          "span",
          { "data-testid": "channel-send" },
          t("channels.send_counts", {
            sent: fmtNum(sent),
            failed: fmtNum(failed),
            retried: fmtNum(send.retried),
          }),
          sent + failed > 0 ? " (" + t("channels.failure_rate", { rate: fmtPct(failed / (sent + failed)) }) + ")" : "",
        ),
      ),
    ),
    channel.can_send_test && can("send_test") ? testForm(channel) : null,
  );
}

export function render(root) {
  let alive = true;
  const summary = h("p", { class: "muted", "data-testid": "channels-summary" });
  const refresh = h(
    "button",
    { type: "button", class: "btn btn-small", "data-testid": "channels-refresh" },
    t("common.refresh"),
  );
  root.querySelector(".page-head").append(h("div", { class: "page-tools" }, summary, refresh));
  const body = h("div", { class: "page-body" });
  root.append(body);

  function load() {
    refresh.disabled = true;
    get("channels").then(
      (data) => {
        if (!alive) return;
        refresh.disabled = false;
        const instances = (data && data.instances) || [];
        const counts = { ok: 0, warn: 0, bad: 0, idle: 0 };
        for (const channel of instances) counts[health(channel).tone] += 1;
        summary.textContent = t("channels.summary", {
          total: fmtNum(instances.length),
          ok: fmtNum(counts.ok),
          warn: fmtNum(counts.warn),
          bad: fmtNum(counts.bad),
        });
        clear(body);
        if (!instances.length) body.append(h("p", { class: "empty-state" }, t("channels.empty")));
        else
          body.append(h("div", { class: "channel-grid", "data-testid": "channel-list" }, instances.map(channelCard)));
      },
      (error) => {
        if (!alive) return;
        refresh.disabled = false;
        if (error.status !== 401) fill(body, errorBox(error, load));
      },
    );
  }
  refresh.addEventListener("click", () => {
    load();
    announce(t("common.refreshing"));
  });
  body.append(h("p", { class: "loading" }, t("app.loading")));
  load();
  return () => {
    alive = false;
  };
}
