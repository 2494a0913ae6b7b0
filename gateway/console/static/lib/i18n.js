/* The console's languages: every string is in lib/strings.js (en and zh-CN, the same keys).
 * The language comes from localStorage, else navigator.languages; <html lang> follows it. */
import { STRINGS } from "./strings.js";

export const LANGUAGES = [
  { code: "en", label: "English" },
  { code: "zh-CN", label: "简体中文" },
];
const STORAGE_KEY = "gateway-console.lang";
const listeners = [];

function stored() {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

function detect() {
  const saved = stored();
  if (saved && STRINGS[saved]) return saved;
  const wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
  for (const tag of wanted) {
    if (/^zh\b/i.test(tag || "")) return "zh-CN";
    if (/^en\b/i.test(tag || "")) return "en";
  }
  return "en";
}

let lang = detect();

export function getLang() {
  return lang;
}

/* The string of a key in the current language, its {name} placeholders filled in from vars. */
export function t(key, vars) {
  let text = STRINGS[lang][key];
  if (text === undefined) text = STRINGS.en[key];
  if (text === undefined) text = key;
  if (vars) text = text.replace(/\{(\w+)\}/g, (match, name) => (name in vars ? String(vars[name]) : match));
  return text;
}

/* Static markup names its strings: data-i18n (text), data-i18n-aria-label, -placeholder, -title. */
export function applyI18n(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.getAttribute("data-i18n"));
  for (const attr of ["aria-label", "placeholder", "title"]) {
    for (const el of root.querySelectorAll("[data-i18n-" + attr + "]")) {
      el.setAttribute(attr, t(el.getAttribute("data-i18n-" + attr)));
    }
  }
}

export function setLang(code, { remember = true } = {}) {
  if (!STRINGS[code]) return;
  lang = code;
  if (remember) {
    try {
      localStorage.setItem(STORAGE_KEY, code);
    } catch {
      /* private mode: the choice lasts for this page only */
    }
  }
  document.documentElement.lang = code;
  applyI18n(document);
  for (const listener of listeners) listener(code);
}

export function onLangChange(listener) {
  listeners.push(listener);
}
