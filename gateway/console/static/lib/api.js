/* The console's JSON API client (docs/console.md): every path under /console/api/, the session's
 * CSRF token on every POST, and a 401 anywhere sends the user back to the login view. */

/* This module is /console/static/lib/api.js: the API is /console/api/, wherever the console is mounted. */
export const API_BASE = new URL("../../api/", import.meta.url);
export const OIDC_LOGIN_URL = new URL("../../auth/oidc/login", import.meta.url).pathname;

export class ApiError extends Error {
  constructor(status, message) {
    super(message || "HTTP " + status);
    this.status = status; /* 0: the request did not reach the server */
    this.serverMessage = message || "";
  }
}

let session = null;
let unauthorized = () => {};

export function setSession(value) {
  session = value;
}

export function getSession() {
  return session;
}

export function can(permission) {
  return !!session && Array.isArray(session.permissions) && session.permissions.includes(permission);
}

export function onUnauthorized(handler) {
  unauthorized = handler;
}

/* A path segment: ids come from the server or from a link, and must stay one segment. */
export function segment(value) {
  return encodeURIComponent(String(value));
}

function buildUrl(path, query) {
  const url = new URL(path, API_BASE);
  if (query) {
    for (const [key, value] of Object.entries(query)) {
      if (value === undefined || value === null || value === "" || value === false) continue;
      url.searchParams.set(key, value === true ? "1" : String(value));
    }
  }
  return url;
}

export async function request(method, path, { query, body, signal, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let response;
  try {
    response = await fetch(buildUrl(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal,
    });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : "";
    if (response.status === 401 && !quiet401) {
      session = null;
      unauthorized();
    }
    throw new ApiError(response.status, message);
  }
  return data;
}

export function get(path, query, options = {}) {
  return request("GET", path, { ...options, query });
}

export function post(path, body, options = {}) {
  return request("POST", path, { ...options, body: body === undefined ? {} : body });
}

/* Server-Sent Events from GET stream: handlers.overview / handlers.message get the parsed JSON,
 * handlers.state gets "connecting" | "live" | "reconnecting" | "down". EventSource reconnects by
 * itself after a dropped connection; a refused one (401, 403, 503) closes it, and then the
 * session is checked (a 401 goes to the login view) and the stream is opened again later. */
export function openStream(query, handlers) {
  let source = null;
  let closed = false;
  let timer = null;
  let delay = 2000;
  const state = handlers.state || (() => {});

  function connect() {
    if (closed) return;
    source = new EventSource(buildUrl("stream", query));
    state("connecting");
    source.addEventListener("open", () => {
      delay = 2000;
      state("live");
    });
    for (const name of ["overview", "message"]) {
      if (!handlers[name]) continue;
      source.addEventListener(name, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        if (!closed) handlers[name](data);
      });
    }
    source.addEventListener("error", () => {
      if (closed) return;
      if (source.readyState !== EventSource.CLOSED) {
        state("reconnecting");
        return;
      }
      state("down");
      const retry = () => {
        if (closed) return;
        timer = setTimeout(connect, delay);
        delay = Math.min(delay * 2, 60000);
      };
      get("session").then(retry, (error) => {
        if (error.status !== 401) retry();
      });
    });
  }

  connect();
  return () => {
    closed = true;
    clearTimeout(timer);
    if (source) source.close();
  };
}
