/* Sign-in: username and password (POST login), and single sign-on when login-options offers it. */
import { get, OIDC_LOGIN_URL, post } from "../lib/api.js";
import { append, errorText, field, h } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

export function render(root, { notice, onSuccess }) {
  let alive = true;
  const status = h("div", { class: "form-status", role: "alert", "data-testid": "login-error", hidden: true });
  const info = notice
    ? h("p", { class: "alert alert-info", role: "status", "data-testid": "login-notice" }, notice)
    : null;
  const username = h("input", {
    type: "text",
    name: "username",
    autocomplete: "username",
    autocapitalize: "none",
    spellcheck: "false",
    required: true,
    "data-testid": "login-username",
  });
  const password = h("input", {
    type: "password",
    name: "password",
    autocomplete: "current-password",
    required: true,
    "data-testid": "login-password",
  });
  const submit = h(
    "button",
    { type: "submit", class: "btn btn-primary btn-block", "data-testid": "login-submit" },
    t("login.submit"),
  );
  const form = h(
    "form",
    { class: "login-form", "data-testid": "login-form", novalidate: true },
    field(t("login.username"), username),
    field(t("login.password"), password),
    status,
    submit,
  );
  const sso = h("div", { class: "login-sso", hidden: true });
  const card = h(
    "div",
    { class: "login-card card" },
    h("div", { class: "login-brand" }, h("span", { class: "brand-mark", "aria-hidden": "true" })),
    h("h1", { id: "page-title", class: "page-title", tabindex: "-1" }, t("login.title")),
    h("p", { class: "muted" }, t("login.intro")),
    info,
    form,
    sso,
  );
  root.append(card);

  function showError(text) {
    status.textContent = text;
    status.hidden = !text;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!username.value.trim() || !password.value) {
      showError(t("login.missing"));
      (username.value.trim() ? password : username).focus();
      return;
    }
    showError("");
    submit.disabled = true;
    submit.textContent = t("login.signing_in");
    try {
      const session = await post(
        "login",
        { username: username.value.trim(), password: password.value },
        {
          quiet401: true,
        },
      );
      if (!alive) return;
      password.value = "";
      onSuccess(session);
    } catch (error) {
      if (!alive) return;
      if (error.status === 401) showError(t("login.invalid"));
      else if (error.status === 429) showError(t("login.too_many"));
      else showError(errorText(error));
      password.value = "";
      password.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = t("login.submit");
    }
  });

  get("login-options", null, { quiet401: true }).then(
    (options) => {
      if (!alive || !options) return;
      if (options.password === false) form.hidden = true;
      if (options.oidc) {
        sso.hidden = false;
        append(sso, [
          form.hidden ? null : h("p", { class: "divider" }, h("span", null, t("login.or"))),
          h(
            "a",
            { class: "btn btn-secondary btn-block", href: OIDC_LOGIN_URL, "data-testid": "login-oidc" },
            options.oidc.label || t("login.sso"),
          ),
        ]);
      }
    },
    () => {
      /* without the options the password form stays: it is what most deployments use */
    },
  );

  setTimeout(() => {
    if (alive && !form.hidden) username.focus();
  }, 0);
  return () => {
    alive = false;
  };
}
