/* Message gateway web chat widget. Dependency-free; embed with
 *   <script src="https://<gateway>/chat/widget.js" data-instance="<instance>" async></script>
 * Talks JSON frames over a WebSocket (REST fallback when sockets are blocked); see
 * docs/channels/webchat.md. Messages stay in a local outbox until the gateway acknowledges them
 * (after they are stored), and are re-sent after a reconnect or reload: the gateway deduplicates.
 * Choices under a reply are buttons; a click is sent as a postback frame through the same outbox. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__gatewayChatLoaded) return;
  window.__gatewayChatLoaded = true;

  var src = new URL(script.src, location.href);
  var base = src.origin + src.pathname.replace(/\/widget\.js$/, "");
  var instance = script.getAttribute("data-instance") || src.searchParams.get("instance") || "";
  var query = instance ? "?instance=" + encodeURIComponent(instance) : "";
  var storeKey = "gwchat:" + base + ":" + instance;
  var color = script.getAttribute("data-color") || "#2563eb";

  var cfg = { title: script.getAttribute("data-title") || "Chat", welcome_text: "", max_message_chars: 4000,
              max_upload_bytes: 10485760 };
  var saved = load();
  var state = { token: saved.token || null, outbox: saved.outbox || [], conversation: null };
  var ws = null, ready = false, mode = "ws", started = false, opened = false, failures = 0, inflight = {};
  var pending = [];
  /* cursor: the mailbox seq of the newest entry this page shows; a reconnect asks only for newer. */
  var pollTimer = null, cursor = null, typingSent = 0, typingTimer = null, agentTypingTimer = null, unread = 0;
  var askedAfter = null;  /* the cursor the last hello carried: null means a fresh page (history, not news) */
  var busyUntil = 0, busyShown = false;  /* a new chat refused (429): wait as told, say so once */
  var picked = {}, choiceGroups = {};  /* reply id -> the choice id picked on it / its buttons */

  function load() { try { return JSON.parse(localStorage.getItem(storeKey) || "{}"); } catch (e) { return {}; } }
  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify({ token: state.token, outbox: state.outbox })); } catch (e) {}
  }
  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  /* ---- UI (in a shadow root, so the host page's CSS cannot break it and vice versa) ---- */
  var host = el("div");
  host.id = "gateway-chat";
  document.body.appendChild(host);
  var root = host.attachShadow({ mode: "open" });
  var style = el("style");
  style.textContent = [
    ":host{all:initial;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#111}",
    ".btn{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;cursor:pointer;",
    "background:" + color + ";color:#fff;box-shadow:0 6px 20px rgba(0,0,0,.25);z-index:2147483000;",
    "display:flex;align-items:center;justify-content:center}",
    ".btn svg{width:26px;height:26px;fill:#fff}",
    ".panel{position:fixed;right:20px;bottom:88px;width:360px;max-width:calc(100vw - 40px);height:520px;",
    "max-height:calc(100vh - 120px);background:#fff;border-radius:14px;box-shadow:0 12px 40px rgba(0,0,0,.28);",
    "display:none;flex-direction:column;overflow:hidden;z-index:2147483000}",
    ".panel.open{display:flex}",
    ".head{background:" + color + ";color:#fff;padding:14px 16px;display:flex;align-items:center;gap:8px}",
    ".head b{flex:1;font-size:15px}.head small{opacity:.85;font-size:12px}",
    ".x{background:none;border:0;color:#fff;font-size:22px;cursor:pointer;line-height:1}",
    ".list{flex:1;overflow-y:auto;padding:14px;background:#f6f7f9;display:flex;flex-direction:column;gap:8px}",
    ".msg{max-width:80%;padding:8px 12px;border-radius:14px;white-space:pre-wrap;word-wrap:break-word}",
    ".in{align-self:flex-end;background:" + color + ";color:#fff;border-bottom-right-radius:4px}",
    ".out,.note{align-self:flex-start;background:#fff;border:1px solid #e3e5e8;border-bottom-left-radius:4px}",
    ".note{color:#444}",
    ".st{display:block;font-size:11px;opacity:.8;margin-top:2px;text-align:right}",
    ".out .st:empty{display:none}",
    ".who{display:block;font-size:11px;color:#6b7280;margin-bottom:2px}",
    ".badge{position:absolute;top:-2px;right:-2px;min-width:20px;height:20px;border-radius:10px;background:#dc2626;",
    "color:#fff;font-size:12px;line-height:20px;text-align:center;padding:0 5px}",
    ".badge[hidden]{display:none}",
    ".failed{background:#b91c1c}",
    ".file{display:block;text-decoration:underline;cursor:pointer;color:inherit;font-size:13px}",
    ".typing{padding:2px 16px 4px;font-size:12px;color:#666;height:22px;background:#f6f7f9}",
    ".typing [hidden]{display:none}",
    ".chips{display:flex;flex-wrap:wrap;gap:6px;padding:0 10px}",
    ".chip{background:#eef2ff;border-radius:10px;padding:2px 8px;font-size:12px;margin-top:6px}",
    ".choices{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}",
    ".choice{font:inherit;font-size:13px;background:#fff;color:" + color + ";border:1px solid " + color + ";",
    "border-radius:14px;padding:4px 12px;cursor:pointer;text-align:left}",
    ".choice:hover:not(:disabled){background:#eef2ff}",
    ".choice:focus-visible{outline:2px solid " + color + ";outline-offset:2px}",
    ".choice:disabled{cursor:default;opacity:.5}",
    ".choice[aria-pressed=true]{background:" + color + ";color:#fff;opacity:1}",
    ".foot{display:flex;gap:6px;padding:10px;border-top:1px solid #e3e5e8;align-items:flex-end}",
    "*{box-sizing:border-box}",
    "textarea{flex:1;resize:none;border:1px solid #d0d4d9;border-radius:10px;padding:8px 10px;font:inherit;",
    "height:38px;max-height:120px;outline:none}",
    "textarea:focus{border-color:" + color + "}",
    ".icon{background:none;border:0;cursor:pointer;width:32px;height:38px;padding:0;display:flex;align-items:center;",
    "justify-content:center}.icon svg{width:20px;height:20px;fill:#6b7280}.icon:hover svg{fill:" + color + "}",
    ".send{background:" + color + ";color:#fff;border:0;border-radius:10px;padding:0 14px;height:38px;cursor:pointer}",
    ".send:disabled{opacity:.5;cursor:default}"
  ].join("");
  root.appendChild(style);

  var button = el("button", "btn");
  button.setAttribute("aria-label", "Open chat");
  button.innerHTML = '<svg viewBox="0 0 24 24"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 ' +
    '2-2z"/></svg>';
  var badge = el("span", "badge", "");
  badge.hidden = true;
  badge.setAttribute("aria-label", "unread replies");
  button.appendChild(badge);
  var panel = el("div", "panel");
  panel.setAttribute("role", "dialog");
  var head = el("div", "head");
  var title = el("b", null, cfg.title);
  var status = el("small", "status", "");
  var close = el("button", "x", "\u00d7");
  close.setAttribute("aria-label", "Close chat");
  head.appendChild(title); head.appendChild(status); head.appendChild(close);
  var list = el("div", "list");
  list.setAttribute("aria-live", "polite");
  var welcome = el("div", "msg note welcome", "");
  welcome.hidden = true;
  list.appendChild(welcome);
  var typingRow = el("div", "typing");
  var typing = el("span", null, "Agent is typing\u2026");
  typing.hidden = true;
  typingRow.appendChild(typing);
  var chips = el("div", "chips");
  var foot = el("div", "foot");
  var attach = el("button", "icon attach");
  attach.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 ' +
    '6 0v10.5a1.5 1.5 0 0 1-3 0V6.5H9v9a3 3 0 0 0 6 0V5a4.5 4.5 0 0 0-9 0v11.5a6 6 0 0 0 12 0v-10z"/></svg>';
  attach.setAttribute("aria-label", "Attach a file");
  attach.type = "button";
  var fileInput = el("input");
  fileInput.type = "file"; fileInput.hidden = true;
  var input = el("textarea", "input");
  input.placeholder = "Type your message\u2026";
  input.rows = 1;
  input.maxLength = cfg.max_message_chars;
  var send = el("button", "send", "Send");
  send.type = "button";
  foot.appendChild(attach); foot.appendChild(fileInput); foot.appendChild(input); foot.appendChild(send);
  panel.appendChild(head); panel.appendChild(list); panel.appendChild(typingRow); panel.appendChild(chips);
  panel.appendChild(foot);
  root.appendChild(panel); root.appendChild(button);

  var bubbles = {};
  function scroll() { list.scrollTop = list.scrollHeight; }
  function setStatus(node, text, kind) {
    node.dataset.status = kind;
    node.querySelector(".st").textContent = text;
    node.classList.toggle("failed", kind === "failed");
  }
  function bubble(item, direction) {
    var key = item.client_id || item.id;
    if (key && bubbles[key]) return bubbles[key];
    var node = el("div", "msg " + (direction === "outbound" ? "out" : "in"));
    if (item.client_id) node.dataset.clientId = item.client_id;
    if (item.id) node.dataset.id = item.id;
    if (direction === "outbound" && item.sender && item.sender.name) node.appendChild(el("span", "who", item.sender.name));
    if (item.text) node.appendChild(el("span", "text", item.text));
    (item.attachments || []).forEach(function (a) {
      var link = el("a", "file", a.filename || "file");
      if (a.url && /^https?:\/\//i.test(a.url)) {  /* links from agents: never javascript: or data: */
        link.href = a.url; link.target = "_blank"; link.rel = "noopener noreferrer";
      } else if (a.upload_id || a.media_id) {
        link.addEventListener("click", function () { openFile(a.upload_id || a.media_id); });
      }
      node.appendChild(link);
    });
    if (direction === "outbound" && item.choices && item.choices.length) node.appendChild(choiceGroup(item));
    node.appendChild(el("span", "st", ""));
    list.appendChild(node);
    if (key) bubbles[key] = node;
    scroll();
    return node;
  }
  function note(text) { list.appendChild(el("div", "msg note", text)); scroll(); }

  /* ---- choices: buttons under a reply; a click is a postback, then the buttons are disabled ---- */
  function choiceGroup(m) {
    var group = el("div", "choices");
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", "Choose an answer");
    m.choices.forEach(function (c) {
      var b = el("button", "choice", c.title);
      b.type = "button";
      b.dataset.choiceId = c.id;
      b.setAttribute("aria-pressed", "false");
      b.addEventListener("click", function () { pick(m.id, c); });
      group.appendChild(b);
    });
    choiceGroups[m.id] = group;
    if (picked[m.id] != null) answered(m.id, picked[m.id]);
    return group;
  }
  function answered(replyId, choiceId) {
    picked[replyId] = choiceId;
    var group = choiceGroups[replyId];
    if (!group) return;
    Array.prototype.forEach.call(group.querySelectorAll("button"), function (b) {
      b.disabled = true;
      b.setAttribute("aria-pressed", String(b.dataset.choiceId === choiceId));
    });
  }
  function pick(replyId, choice) {
    if (picked[replyId] != null) return;
    answered(replyId, choice.id);
    var item = { client_id: newId(), text: choice.title, attachments: [],
                 postback: { reply_id: replyId, payload: choice.id } };
    state.outbox.push(item); save();
    setStatus(bubble(item, "inbound"), "Sending\u2026", "pending");
    input.focus();
    flush();
  }

  /* ---- transport ---- */
  function frameOf(item) {
    if (item.postback) {
      return { type: "postback", client_id: item.client_id, reply_id: item.postback.reply_id,
               payload: item.postback.payload };
    }
    return { type: "message", client_id: item.client_id, text: item.text,
             attachments: (item.attachments || []).map(function (a) { return { upload_id: a.upload_id }; }) };
  }
  function hello() {
    var v = window.GatewayChatVisitor;  /* optional: {name, email} set by the host page */
    return { token: state.token, visitor: v && (v.name || v.email) ? { name: v.name, email: v.email } : null,
             page: location.href.slice(0, 2048), after: (askedAfter = cursor) };
  }
  function start() { if (!started) { started = true; connect(); } }
  function connect() {
    if (mode !== "ws" || ws) return;
    status.textContent = "connecting\u2026";
    try { ws = new WebSocket(base.replace(/^http/, "ws") + "/ws" + query); } catch (e) { return fail(); }
    ws.onopen = function () {
      opened = true; failures = 0;
      ws.send(JSON.stringify(Object.assign({ type: "hello" }, hello())));
    };
    ws.onmessage = function (ev) { var f; try { f = JSON.parse(ev.data); } catch (e) { return; } handle(f); };
    ws.onclose = function () { ws = null; ready = false; inflight = {}; fail(); };
  }
  function fail() {
    failures += 1;
    status.textContent = busyUntil > Date.now() ? "busy" : "reconnecting\u2026";
    if (!opened && failures >= 3) { mode = "rest"; return restSession(); }
    var delay = Math.min(30000, 500 * Math.pow(2, failures)) * (0.5 + Math.random() / 2);
    setTimeout(connect, Math.max(delay, busyUntil - Date.now()));
  }
  function busy(seconds) {
    var wait = Math.max(5, Number(seconds) || 30) * 1000;
    busyUntil = Date.now() + wait;
    status.textContent = "busy";
    if (!busyShown) { busyShown = true; note("The chat is busy right now. We will try again shortly."); }
    return wait;
  }
  function handle(f) {
    if (f.type === "welcome") {
      busyShown = false;
      state.token = f.token; state.conversation = f.conversation_id; save(); ready = true;
      status.textContent = "online";
      applySettings(f.settings || {});
      (f.history || []).forEach(function (h) {
        if (h.direction === "outbound") return reply(h, askedAfter === null);
        if (h.postback && h.reply_to) answered(h.reply_to, h.postback.payload);
        var node = bubble(h, h.direction);
        node.dataset.id = h.id;
        setStatus(node, "Sent \u2713", "acked");
      });
      if (f.cursor) cursor = f.cursor;
      state.outbox.forEach(function (i) { if (bubbles[i.client_id]) list.appendChild(bubbles[i.client_id]); });
      scroll();
      flush();
    } else if (f.type === "ack") {
      acked(f.client_id, f.id);
    } else if (f.type === "error") {
      if (!f.client_id && f.code === "rate_limited") busy(f.retry_after);  /* hello refused; the socket closes */
      failed(f);
    } else if (f.type === "typing") {
      agentTyping(f.state);
    } else if (f.type === "message") {
      reply(f);
      if (f.seq) cursor = f.seq;
    }
  }
  /* An agent's reply: shown once, however often it arrives (live push, welcome after reconnect, poll). */
  function reply(m, old) {
    agentTyping(false);
    if (bubbles[m.id]) return;
    bubble(m, "outbound");
    if (!old && !panel.classList.contains("open")) { unread += 1; badge.textContent = String(unread); badge.hidden = false; }
  }
  function agentTyping(on) {
    typing.hidden = !on;
    clearTimeout(agentTypingTimer);
    if (on) agentTypingTimer = setTimeout(function () { typing.hidden = true; }, 15000);  /* a lost typing_off */
  }
  function applySettings(s) {
    Object.keys(s).forEach(function (k) { cfg[k] = s[k]; });
    title.textContent = cfg.title;
    input.maxLength = cfg.max_message_chars;
    if (cfg.welcome_text) { welcome.textContent = cfg.welcome_text; welcome.hidden = false; }
  }
  function acked(clientId, id) {
    delete inflight[clientId];
    state.outbox = state.outbox.filter(function (i) { return i.client_id !== clientId; }); save();
    var node = bubbles[clientId];
    if (node) { node.dataset.id = id; setStatus(node, "Sent \u2713", "acked"); }
  }
  function failed(f) {
    if (!f.client_id) return;
    delete inflight[f.client_id];
    var node = bubbles[f.client_id];
    if (f.code === "unavailable" || f.code === "rate_limited") {
      if (node) setStatus(node, "Retrying\u2026", "retrying");
      setTimeout(flush, (f.retry_after || 5) * 1000);
      return;
    }
    state.outbox = state.outbox.filter(function (i) { return i.client_id !== f.client_id; }); save();
    if (node) setStatus(node, "Not sent: " + (f.message || f.code), "failed");
  }
  function flush() {
    if (!ready) return;
    state.outbox.forEach(function (item) {
      if (inflight[item.client_id]) return;
      inflight[item.client_id] = true;
      if (mode === "ws" && ws) ws.send(JSON.stringify(frameOf(item)));
      else if (mode === "rest") restSend(item);
    });
  }

  /* ---- REST fallback (sockets blocked by a proxy) ---- */
  function api(method, path, body, extra) {
    var headers = { "Content-Type": "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return fetch(base + path + (path.indexOf("?") < 0 ? query : query.replace("?", "&")),
                 Object.assign({ method: method, headers: headers, body: body }, extra || {}));
  }
  function restSession() {
    api("POST", "/api/session", JSON.stringify(hello())).then(function (r) {
      if (r.status === 429) return setTimeout(restSession, busy(r.headers.get("Retry-After")));
      return r.json().then(function (f) {
        handle(f);
        if (!pollTimer) pollTimer = setInterval(poll, 5000);
      });
    }).catch(function () { setTimeout(restSession, 5000); });
  }
  function restSend(item) {
    api("POST", "/api/messages", JSON.stringify(frameOf(item))).then(function (r) {
      if (r.status === 401) { state.token = null; ready = false; inflight = {}; return restSession(); }
      return r.json().then(handle);
    }).catch(function () { delete inflight[item.client_id]; setTimeout(flush, 5000); });
  }
  function poll() {
    if (!ready) return;
    api("GET", "/api/messages" + (cursor ? "?after=" + encodeURIComponent(cursor) : ""))
      .then(function (r) { return r.json(); }).then(function (d) {
        (d.messages || []).forEach(function (m) { reply(m); });
        cursor = d.cursor || cursor;
      }).catch(function () {});
  }

  /* ---- files ---- */
  function openFile(uploadId) {
    fetch(base + "/files/" + encodeURIComponent(uploadId) + query, { headers: { Authorization: "Bearer " + state.token } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.blob(); })
      .then(function (b) { window.open(URL.createObjectURL(b), "_blank", "noopener"); })
      .catch(function () { note("This file is no longer available."); });
  }
  attach.addEventListener("click", function () { fileInput.click(); });
  fileInput.addEventListener("change", function () {
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!file) return;
    if (file.size > cfg.max_upload_bytes) { note("That file is too large to send."); return; }
    if (!state.token) { note("Still connecting, please try again in a moment."); return; }
    var chip = el("span", "chip", "Uploading " + file.name + "\u2026");
    chips.appendChild(chip);
    var form = new FormData();
    form.append("file", file, file.name);
    fetch(base + "/api/upload" + query, { method: "POST", headers: { Authorization: "Bearer " + state.token }, body: form })
      .then(function (r) { return r.json().then(function (d) { if (!r.ok) throw new Error(d.message); return d; }); })
      .then(function (d) {
        chip.textContent = d.filename;
        pending.push({ upload_id: d.upload_id, filename: d.filename });
        send.disabled = false;
      })
      .catch(function (e) { chips.removeChild(chip); note("Upload failed: " + (e.message || "try again")); });
  });

  /* ---- input ---- */
  function submit() {
    var text = input.value.trim();
    if (!text && !pending.length) return;
    var item = { client_id: newId(), text: text, attachments: pending };
    pending = []; chips.textContent = ""; input.value = "";
    state.outbox.push(item); save();
    setStatus(bubble(item, "inbound"), "Sending\u2026", "pending");
    sendTyping(false);
    flush();
  }
  function sendTyping(on) {
    if (mode !== "ws" || !ws || !ready) return;
    var now = Date.now();
    if (on && now - typingSent < 3000) return;
    typingSent = on ? now : 0;
    ws.send(JSON.stringify({ type: "typing", state: on }));
  }
  send.addEventListener("click", submit);
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); }
  });
  input.addEventListener("input", function () {
    sendTyping(true);
    clearTimeout(typingTimer);
    typingTimer = setTimeout(function () { sendTyping(false); }, 4000);
  });
  function toggle(open) {
    panel.classList.toggle("open", open);
    button.setAttribute("aria-expanded", String(open));
    if (open) { start(); input.focus(); scroll(); unread = 0; badge.hidden = true; }
  }
  button.addEventListener("click", function () { toggle(!panel.classList.contains("open")); });
  close.addEventListener("click", function () { toggle(false); });

  /* Unsent messages from an earlier page: show them and connect at once, so they are delivered. */
  state.outbox.forEach(function (item) {
    if (item.postback) picked[item.postback.reply_id] = item.postback.payload;
    setStatus(bubble(item, "inbound"), "Sending\u2026", "pending");
  });
  if (state.token || state.outbox.length) start();

  window.GatewayChat = {
    open: function () { toggle(true); },
    close: function () { toggle(false); },
    state: function () { return { conversation_id: state.conversation, ready: ready, mode: mode,
                                  unacked: state.outbox.length, cursor: cursor, unread: unread }; }
  };
})();
