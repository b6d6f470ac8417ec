// eo-dataset browse: what the overview and the sample page share. Data comes from the server's JSON API
// (mode "live") or, in a static export (mode "static"), from data/*.js scripts, which also load from file://.
"use strict";

const EO = (() => {
  const mode = (window.EO_BROWSE || {}).mode === "static" ? "static" : "live";
  const waiting = new Map();

  // data/<key>.js calls eoData(key, value)
  window.eoData = (key, value) => {
    const w = waiting.get(key);
    if (w) {
      waiting.delete(key);
      w.resolve(value);
    }
  };

  function loadScript(key) {
    return new Promise((resolve, reject) => {
      waiting.set(key, { resolve, reject });
      const s = document.createElement("script");
      s.src = "data/" + key.split("/").map(encodeURIComponent).join("/") + ".js";
      s.onerror = () => {
        waiting.delete(key);
        reject(new Error("no data for " + key + " in this export"));
      };
      document.head.appendChild(s);
    });
  }

  async function fetchJSON(path) {
    const r = await fetch(path);
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.detail || r.status + " " + r.statusText);
    return body;
  }

  // key: "cube", "table" (static only) or "sample/<id>"
  function load(key) {
    if (mode === "static") return loadScript(key);
    return fetchJSON("api/" + key.split("/").map(encodeURIComponent).join("/") + ".json");
  }

  function el(tag, attrs, ...children) {
    const svg = ["svg", "path", "g", "line", "text", "title", "rect"].includes(tag);
    const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.setAttribute("class", v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function showError(err) {
    const box = document.getElementById("error");
    if (!box) return;
    box.textContent = "error: " + (err && err.message ? err.message : err);
    box.hidden = false;
  }

  // colours: viridis, sampled; availability: two colours
  const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
                   "#b5de2b", "#fde725"];
  const NONE = "#c8c8c8";
  const ABSENT = [231, 111, 81];
  const PRESENT = [42, 157, 143];

  function hex(rgb) {
    return "#" + rgb.map((v) => Math.round(v).toString(16).padStart(2, "0")).join("");
  }

  function parseHex(h) {
    return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
  }

  function ramp(t) {
    if (t === null || t === undefined || !isFinite(t)) return NONE;
    t = Math.min(1, Math.max(0, t));
    const x = t * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const a = parseHex(VIRIDIS[i]);
    const b = parseHex(VIRIDIS[i + 1]);
    return hex(a.map((v, k) => v + (b[k] - v) * (x - i)));
  }

  function availability(t) {
    if (t === null || t === undefined || !isFinite(t)) return NONE;
    return hex(ABSENT.map((v, k) => v + (PRESENT[k] - v) * t));
  }

  function dayToISO(day) {
    return day === null || day === undefined ? null : new Date(day * 86400000).toISOString().slice(0, 10);
  }

  function isoToDay(iso) {
    return Math.floor(Date.parse(iso.slice(0, 10) + "T00:00:00Z") / 86400000);
  }

  function percent(x) {
    return (100 * x).toFixed(x > 0 && x < 0.01 ? 1 : 0) + "%";
  }

  return { mode, load, el, clear, showError, ramp, availability, NONE, dayToISO, isoToDay, percent, VIRIDIS };
})();
