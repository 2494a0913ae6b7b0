/* The operator console (docs/console.md): session, header, navigation and hash routing.
 * Each page is a module under pages/ with render(root, ctx) -> cleanup. */
import { can, get, getSession, onUnauthorized, post, setSession } from "./lib/api.js";
import { announce, clear, errorBox, h, refreshAges } from "./lib/dom.js";
import { applyI18n, getLang, onLangChange, setLang, t } from "./lib/i18n.js";
import { roleLabel } from "./lib/labels.js";
import * as audit from "./pages/audit.js";
import * as channels from "./pages/channels.js";
import * as conversation from "./pages/conversation.js";
import * as dlq from "./pages/dlq.js";
import * as insights from "./pages/insights.js";
import * as login from "./pages/login.js";
import * as messages from "./pages/messages.js";
import * as overview from "./pages/overview.js";

const PAGES = {
  overview: { module: overview, title: "nav.overview" },
  channels: { module: channels, title: "nav.channels" },
  messages: { module: messages, title: "nav.messages" },
  conversation: { module: conversation, title: "conversation.title", nav: "messages" },
  dlq: { module: dlq, title: "nav.dlq" },
  insights: { module: insights, title: "nav.insights" },
  audit: { module: audit, title: "nav.audit", permission: "audit" },
};

const app = document.getElementById("app");
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const navToggle = document.getElementById("nav-toggle");
const langSelect = document.getElementById("lang-select");
const logoutButton = document.getElementById("logout");

let cleanup = null;
let expiryTimer = null;
let firstRender = true;

function teardown() {
  if (cleanup) {
    try {
      cleanup();
    } catch {
      /* a page's cleanup must not stop the next page */
    }
  }
  cleanup = null;
}

/* "#/messages/c/abc?x=1" -> {name: "conversation", id: "abc", query} */
function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const cut = raw.indexOf("?");
  const path = cut >= 0 ? raw.slice(0, cut) : raw;
  const query = new URLSearchParams(cut >= 0 ? raw.slice(cut + 1) : "");
  const parts = path.split("/").filter(Boolean);
  const name = parts[0] || "overview";
  if (name === "messages" && parts[1] === "c" && parts.length >= 3) {
    let id = parts.slice(2).join("/");
    try {
      id = decodeURIComponent(id);
    } catch {
      /* keep it as written */
    }
    return { name: "conversation", id, query };
  }
  return { name: PAGES[name] ? name : "overview", query, unknown: !PAGES[name] };
}

function markNav(active) {
  for (const link of nav.querySelectorAll("a[data-route]")) {
    if (link.dataset.route === active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function closeMenu() {
  nav.classList.remove("open");
  navToggle.setAttribute("aria-expanded", "false");
}

function route() {
  if (!getSession()) return;
  const target = parseRoute();
  if (target.unknown && location.hash && location.hash !== "#main") {
    history.replaceState(null, "", "#/overview");
  }
  const page = PAGES[target.name];
  teardown();
  clear(main);
  closeMenu();
  markNav(page.nav || target.name);
  const root = h("section", {
    class: "page page-" + target.name,
    "data-testid": "page-" + target.name,
    "aria-labelledby": "page-title",
  });
  const title = h("h1", { id: "page-title", class: "page-title", tabindex: "-1" }, t(page.title));
  root.append(h("div", { class: "page-head" }, title));
  main.append(root);
  document.title = t(page.title) + " · " + t("app.title");
  if (page.permission && !can(page.permission)) {
    root.append(
      h("div", { class: "alert alert-info", role: "status", "data-testid": "page-forbidden" }, t("error.admins_only")),
    );
  } else {
    try {
      cleanup = page.module.render(root, { id: target.id, query: target.query, title }) || null;
    } catch (error) {
      root.append(errorBox(error, route));
    }
  }
  if (!firstRender) title.focus({ preventScroll: false });
  firstRender = false;
}

function showUser(session) {
  const box = document.getElementById("user-box");
  box.hidden = !session;
  logoutButton.hidden = !session;
  nav.hidden = !session;
  navToggle.hidden = !session;
  document.getElementById("nav-audit-item").hidden = !can("audit");
  if (session) {
    document.getElementById("user-name").textContent = session.user || "";
    document.getElementById("user-role").textContent = roleLabel(session.role);
  }
}

/* At expiry the session check answers 401, and that brings the login view; a session that was
 * extended meanwhile answers with its new expiry. */
function watchExpiry(session) {
  clearTimeout(expiryTimer);
  const expires = session.expires_at ? new Date(session.expires_at).getTime() : NaN;
  if (Number.isNaN(expires)) return;
  const wait = Math.min(Math.max(expires - Date.now() + 1000, 30000), 2147483000);
  expiryTimer = setTimeout(() => {
    get("session").then(
      (fresh) => {
        setSession(fresh);
        showUser(fresh);
        watchExpiry(fresh);
      },
      () => {},
    );
  }, wait);
}

/* fromLogin: the login form was just replaced, so the page's heading takes the focus. */
function signedIn(session, fromLogin = false) {
  setSession(session);
  app.dataset.state = "ready";
  showUser(session);
  watchExpiry(session);
  firstRender = !fromLogin;
  route();
}

function showLogin(notice) {
  teardown();
  setSession(null);
  clearTimeout(expiryTimer);
  app.dataset.state = "login";
  showUser(null);
  clear(main);
  document.title = t("login.title") + " · " + t("app.title");
  const root = h("section", { class: "page page-login", "data-testid": "page-login", "aria-labelledby": "page-title" });
  main.append(root);
  messages.setUnmask(false); /* the next user starts with texts masked */
  cleanup = login.render(root, { notice, onSuccess: (session) => signedIn(session, true) }) || null;
}

function renderCurrent() {
  if (getSession()) route();
  else if (app.dataset.state === "login") showLogin();
}

function wire() {
  setLang(getLang(), { remember: false });
  langSelect.value = getLang();
  langSelect.addEventListener("change", () => setLang(langSelect.value));
  onLangChange(() => {
    langSelect.value = getLang();
    if (getSession()) document.getElementById("user-role").textContent = roleLabel(getSession().role);
    firstRender = true;
    renderCurrent();
    announce(t("app.language_changed"));
  });

  navToggle.addEventListener("click", () => {
    const open = !nav.classList.contains("open");
    nav.classList.toggle("open", open);
    navToggle.setAttribute("aria-expanded", String(open));
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && nav.classList.contains("open")) {
      closeMenu();
      navToggle.focus();
    }
  });
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    const heading = document.getElementById("page-title");
    (heading || main).focus();
  });
  logoutButton.addEventListener("click", async () => {
    logoutButton.disabled = true;
    try {
      await post("logout", {}, { quiet401: true });
    } catch {
      /* signed out either way */
    }
    logoutButton.disabled = false;
    showLogin(t("login.signed_out"));
  });
  window.addEventListener("hashchange", () => {
    if (location.hash === "#main") return;
    route();
  });
  onUnauthorized(() => {
    if (app.dataset.state !== "login") showLogin(t("login.expired"));
  });
  setInterval(() => refreshAges(main), 30000);
  applyI18n(document);
}

async function start() {
  try {
    signedIn(await get("session", null, { quiet401: true }));
  } catch (error) {
    if (error.status === 401) showLogin();
    else {
      clear(main);
      main.append(errorBox(error, start));
    }
  }
}

wire();
start();
