/* Words for the API's enumerations, each a literal key (tests/test_console_assets.py checks that
 * every key used exists); a value the console does not know is shown as it came. */
import { h } from "./dom.js";
import { t } from "./i18n.js";

export function roleLabel(role) {
  switch (role) {
    case "admin":
      return t("role.admin");
    case "operator":
      return t("role.operator");
    case "viewer":
      return t("role.viewer");
    default:
      return role || "";
  }
}

export function viaLabel(via) {
  switch (via) {
    case "password":
      return t("via.password");
    case "oidc":
      return t("via.oidc");
    case "one-time":
      return t("via.one_time");
    default:
      return via || "";
  }
}

export function kindLabel(kind) {
  switch (kind) {
    case "inbound":
      return t("kind.inbound");
    case "processed":
      return t("kind.processed");
    case "outbound":
      return t("kind.outbound");
    case "delivery":
      return t("kind.delivery");
    case "conversation":
      return t("kind.conversation");
    default:
      return kind || "";
  }
}

export function sentimentLabel(label) {
  switch (label) {
    case "positive":
      return t("sentiment.positive");
    case "neutral":
      return t("sentiment.neutral");
    case "negative":
      return t("sentiment.negative");
    default:
      return label || "";
  }
}

export function sentimentTone(label) {
  return label === "positive" ? "ok" : label === "negative" ? "bad" : "neutral";
}

export function stageLabel(stage) {
  switch (stage) {
    case "ingress":
      return t("stage.ingress");
    case "normalize":
      return t("stage.normalize");
    case "process":
      return t("stage.process");
    case "dispatch":
      return t("stage.dispatch");
    default:
      return stage || "";
  }
}

/* gateway/dlq/replay.py's outcomes */
export function outcomeLabel(outcome) {
  switch (outcome) {
    case "replayed":
      return t("outcome.replayed");
    case "duplicate":
      return t("outcome.duplicate");
    case "would_replay":
      return t("outcome.would_replay");
    case "already_replayed":
      return t("outcome.already_replayed");
    case "still_failing":
      return t("outcome.still_failing");
    case "unsupported":
      return t("outcome.unsupported");
    case "unavailable":
      return t("outcome.unavailable");
    default:
      return outcome || "";
  }
}

export function outcomeTone(outcome) {
  if (["replayed", "duplicate", "would_replay", "ok", "success", "succeeded", "allowed"].includes(outcome)) return "ok";
  if (outcome === "already_replayed") return "warn";
  if (["still_failing", "unsupported", "unavailable", "error", "failed", "denied", "forbidden"].includes(outcome)) {
    return "bad";
  }
  return "neutral";
}

export function componentLabel(component) {
  switch (component) {
    case "worker":
      return t("lag.worker");
    case "dispatch":
      return t("lag.dispatch");
    default:
      return component || "";
  }
}

export function priorityLabel(priority) {
  switch (priority) {
    case "low":
      return t("priority.low");
    case "normal":
      return t("priority.normal");
    case "high":
      return t("priority.high");
    case "urgent":
      return t("priority.urgent");
    default:
      return priority || "";
  }
}

export function deliveryLabel(status) {
  switch (status) {
    case "accepted":
      return t("delivery.accepted");
    case "sent":
      return t("delivery.sent");
    case "delivered":
      return t("delivery.delivered");
    case "read":
      return t("delivery.read");
    case "failed":
      return t("delivery.failed");
    default:
      return status || "";
  }
}

export function conversationEventLabel(type) {
  switch (type) {
    case "opened":
      return t("event.opened");
    case "reopened":
      return t("event.reopened");
    case "first_response":
      return t("event.first_response");
    case "reply":
      return t("event.reply");
    case "sla_breached":
      return t("event.sla_breached");
    case "resolved":
      return t("event.resolved");
    case "csat_requested":
      return t("event.csat_requested");
    case "csat_received":
      return t("event.csat_received");
    case "profile_linked":
      return t("event.profile_linked");
    case "profile_merged":
      return t("event.profile_merged");
    default:
      return type || "";
  }
}

export function authorLabel(kind) {
  switch (kind) {
    case "agent":
      return t("author.agent");
    case "bot":
      return t("author.bot");
    case "automatic":
      return t("author.automatic");
    default:
      return kind || "";
  }
}

export function streamStateLabel(state) {
  switch (state) {
    case "live":
      return t("stream.live");
    case "connecting":
      return t("stream.connecting");
    case "reconnecting":
      return t("stream.reconnecting");
    case "down":
      return t("stream.down");
    case "paused":
      return t("stream.paused");
    default:
      return state || "";
  }
}

export function streamTone(state) {
  return state === "live" ? "ok" : state === "down" ? "bad" : state === "paused" ? "neutral" : "warn";
}

/* "● Live" / "● Reconnecting…": a status region, so a screen reader hears when the stream drops. */
export function streamIndicator(testid) {
  const dot = h("span", { class: "dot", "aria-hidden": "true" });
  const label = h("span", { class: "status-label" });
  const el = h("span", { class: "status live-status", role: "status", "data-testid": testid }, dot, label);
  return {
    el,
    set(state) {
      el.className = "status live-status status-" + streamTone(state);
      el.dataset.state = state;
      label.textContent = streamStateLabel(state);
    },
  };
}
