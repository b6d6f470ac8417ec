// eo-dataset browse: the overview. Filters -> query -> counts, co-availability, map, sample list.
// Live: the server answers api/query.json (and aggregates large cubes). Static export: localQuery() below does the
// same over data/table.js (eo_dataset/view/browse/index.py is the reference for what a filter means).
"use strict";

(() => {
  const { el, clear } = EO;
  const MAP_W = 720;
  let cube = null;
  let table = null; // static mode only
  let page = 0;
  let seq = 0;

  // -- filters -> URL parameters ------------------------------------------------------------------------------
  function params() {
    const p = {};
    const has = [];
    const lacks = [];
    for (const m of cube.modalities) {
      const v = document.getElementById("f-has-" + m.name).value;
      if (v === "present") has.push(m.name);
      if (v === "absent") lacks.push(m.name);
    }
    if (has.length) p.has = has.join(",");
    if (lacks.length) p.lacks = lacks.join(",");
    const vmin = document.getElementById("f-valid-min").value;
    const vmax = document.getElementById("f-valid-max").value;
    if (vmin !== "" || vmax !== "") {
      p.valid = document.getElementById("f-valid").value;
      if (vmin !== "") p.valid_min = vmin;
      if (vmax !== "") p.valid_max = vmax;
    }
    for (const [id, key] of [["f-date-from", "date_from"], ["f-date-to", "date_to"], ["f-text", "text"],
                             ["f-id", "id"]]) {
      const v = document.getElementById(id).value.trim();
      if (v !== "") p[key] = v;
    }
    p.colour = document.getElementById("colour").value;
    p.page = String(page);
    return p;
  }

  async function query(p) {
    if (EO.mode === "live") {
      const r = await fetch("api/query.json?" + new URLSearchParams(p).toString());
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.detail || r.statusText);
      return body;
    }
    if (!table) table = await EO.load("table");
    return localQuery(p);
  }

  // The filters of index.py's CubeIndex.match, over the exported table (footprints only: exports are small).
  function localQuery(p) {
    const mods = cube.modalities.map((m) => m.name);
    const known = (m) => {
      if (!mods.includes(m)) throw new Error("no modality '" + m + "' in the cube; it has " + mods.join(", "));
      return m;
    };
    const split = (s) => (s ? s.split(",").map((x) => x.trim()).filter((x) => x) : []).map(known);
    const has = split(p.has);
    const lacks = split(p.lacks);
    const num = (s) => (s === undefined || s === "" ? null : Number(s));
    const vmin = num(p.valid_min);
    const vmax = num(p.valid_max);
    const from = p.date_from ? EO.isoToDay(p.date_from) : null;
    const to = p.date_to ? EO.isoToDay(p.date_to) : null;
    const text = (p.text || "").trim().toLowerCase();
    const idText = (p.id || "").trim().toLowerCase();
    const valid = vmin !== null || vmax !== null ? table.valid[known(p.valid || cube.anchor || mods[0])] : null;
    const keep = [];
    for (let i = 0; i < table.ids.length; i++) {
      if (has.some((m) => !table.available[m][i])) continue;
      if (lacks.some((m) => table.available[m][i])) continue;
      if (valid && vmin !== null && !(valid[i] >= vmin)) continue;
      if (valid && vmax !== null && !(valid[i] <= vmax)) continue;
      if (from !== null || to !== null) {
        const d = table.anchor[i];
        if (d === null) continue;
        if (from !== null && Math.floor(d) < from) continue;
        if (to !== null && Math.floor(d) > to) continue;
      }
      if (text && !table.captions[i].toLowerCase().includes(text)) continue;
      if (idText && !table.ids[i].toLowerCase().includes(idText)) continue;
      keep.push(i);
    }
    const [what, m] = (p.colour || "available:" + (cube.anchor || mods[0])).split(":");
    const values = what === "date" ? table.anchor : what === "valid" ? table.valid[known(m)]
      : table.available[known(m)];
    const co = mods.map((a) => mods.map((b) => keep.filter((i) => table.available[a][i] &&
                                                                table.available[b][i]).length));
    const perPage = 50;
    const pages = Math.max(1, Math.ceil(keep.length / perPage));
    const pg = Math.min(Number(p.page || 0), pages - 1);
    return {
      total: table.ids.length, matched: keep.length,
      counts: Object.fromEntries(mods.map((mm, k) => [mm, co[k][k]])),
      co: { modalities: mods, counts: co }, colour: what === "date" ? "date" : what + ":" + m,
      map: { level: "sample", features: keep.map((i) => ({ id: table.ids[i], ring: table.rings[i], n: 1,
                                                             value: values[i] === null ? null : Number(values[i]) })) },
      page: pg, pages, per_page: perPage,
      samples: keep.slice(pg * perPage, (pg + 1) * perPage).map((i) => ({
        id: table.ids[i], anchor: EO.dayToISO(table.anchor[i]),
        available: mods.filter((mm) => table.available[mm][i]), caption: table.captions[i] })),
    };
  }

  // -- drawing ------------------------------------------------------------------------------------------------
  function sampleHref(id) {
    return "sample.html?id=" + encodeURIComponent(id);
  }

  function colourOf(kind, value) {
    if (kind === "date") {
      const [a, b] = cube.dates.map((d) => (d ? EO.isoToDay(d) : null));
      if (value === null || a === null) return EO.NONE;
      return EO.ramp(b > a ? (Math.floor(value) - a) / (b - a) : 0.5);
    }
    return kind.startsWith("available") ? EO.availability(value) : EO.ramp(value);
  }

  function niceStep(span) {
    const steps = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 45, 90];
    return steps.find((s) => span / s <= 8) || 90;
  }

  function drawMap(answer) {
    const [w0, s0, e0, n0] = cube.bbox;
    const padX = Math.max((e0 - w0) * 0.08, 0.01);
    const padY = Math.max((n0 - s0) * 0.08, 0.01);
    const w = w0 - padX, e = e0 + padX, s = Math.max(-90, s0 - padY), n = Math.min(90, n0 + padY);
    const kx = Math.cos(((s + n) / 2) * Math.PI / 180);
    const scale = MAP_W / ((e - w) * kx);
    const H = Math.max(120, Math.round((n - s) * scale));
    const x = (lon) => (lon - w) * kx * scale;
    const y = (lat) => (n - lat) * scale;
    const svg = el("svg", { id: "map-svg", viewBox: `0 0 ${MAP_W} ${H}`, width: MAP_W, height: H,
                            role: "img", "aria-label": "sample footprints" });
    svg.appendChild(el("rect", { x: 0, y: 0, width: MAP_W, height: H, class: "sea" }));
    const grat = el("g", { class: "graticule" });
    const step = niceStep(Math.max(e - w, n - s));
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    for (let lon = Math.ceil(w / step) * step; lon <= e; lon += step) {
      grat.appendChild(el("line", { x1: x(lon), x2: x(lon), y1: 0, y2: H }));
      grat.appendChild(el("text", { x: x(lon) + 2, y: H - 4, text: lon.toFixed(digits) + "°" }));
    }
    for (let lat = Math.ceil(s / step) * step; lat <= n; lat += step) {
      grat.appendChild(el("line", { x1: 0, x2: MAP_W, y1: y(lat), y2: y(lat) }));
      grat.appendChild(el("text", { x: 2, y: y(lat) - 2, text: lat.toFixed(digits) + "°" }));
    }
    svg.appendChild(grat);
    const level = answer.map.level;
    const shapes = el("g", { class: "features" });
    for (const f of answer.map.features) {
      const d = "M" + f.ring.map(([lo, la]) => x(lo).toFixed(1) + "," + y(la).toFixed(1)).join("L") + "Z";
      const label = level === "sample" ? f.id : `${level} ${f.id}: ${f.n} samples`;
      const path = el("path", { d, class: level === "sample" ? "footprint" : "aggregate", "data-id": f.id,
                                fill: colourOf(answer.colour, f.value) }, el("title", { text: label }));
      if (level === "sample") path.addEventListener("click", () => { window.location.href = sampleHref(f.id); });
      shapes.appendChild(path);
    }
    svg.appendChild(shapes);
    clear(document.getElementById("map")).appendChild(svg);
    const note = level === "sample" ? `${answer.map.features.length} footprints`
      : `${answer.matched} samples in ${answer.map.features.length} ` +
        (level === "cell" ? "Major TOM cells" : `${answer.map.step_deg}° bins`) +
        ` (more than ${cube.max_points} samples match: aggregated)`;
    document.getElementById("map-note").textContent = note;
    drawLegend(answer.colour, level);
  }

  function drawLegend(kind, level) {
    const box = clear(document.getElementById("map-legend"));
    const swatch = (colour, text) => {
      const s = el("span", { class: "swatch" });
      s.style.background = colour;
      return el("span", { class: "legend-item" }, s, text);
    };
    if (kind.startsWith("available:")) {
      const m = kind.split(":")[1];
      box.append(swatch(EO.availability(1), `${m} available`), swatch(EO.availability(0), `${m} missing`));
      if (level !== "sample") box.append(" (mixed: share of samples with it)");
    } else {
      const bar = el("span", { class: "ramp" });
      bar.style.background = `linear-gradient(to right, ${EO.VIRIDIS.join(", ")})`;
      const [lo, hi] = kind === "date" ? cube.dates : ["0%", "100%"];
      box.append(kind === "date" ? "anchor date " : `valid fraction of ${kind.split(":")[1]} `, lo || "",
                 bar, hi || "", swatch(EO.NONE, "none"));
    }
  }

  function drawCounts(answer) {
    document.getElementById("matched").textContent = `${answer.matched} of ${answer.total} samples match`;
    document.getElementById("matched").dataset.matched = answer.matched;
    for (const m of cube.modalities) {
      const k = answer.counts[m.name];
      const cell = document.getElementById("count-" + m.name);
      cell.textContent = String(k);
      cell.dataset.count = k;
      const bar = document.getElementById("bar-" + m.name);
      bar.style.width = (answer.matched ? (100 * k) / answer.matched : 0) + "%";
      bar.title = answer.matched ? EO.percent(k / answer.matched) : "";
    }
    const co = clear(document.getElementById("co"));
    const mods = answer.co.modalities;
    co.appendChild(el("thead", {}, el("tr", {}, el("th", { text: "" }), mods.map((m) => el("th", { text: m })))));
    const body = el("tbody");
    const max = Math.max(1, answer.matched);
    mods.forEach((a, i) => {
      body.appendChild(el("tr", {}, el("th", { text: a }), mods.map((b, j) => {
        const td = el("td", { id: `co-${a}-${b}`, "data-count": answer.co.counts[i][j],
                              title: `${a} and ${b}: ${answer.co.counts[i][j]} samples`,
                              text: String(answer.co.counts[i][j]) });
        td.style.background = `rgba(42, 157, 143, ${(0.85 * answer.co.counts[i][j]) / max})`;
        return td;
      })));
    });
    co.appendChild(body);
  }

  function drawList(answer) {
    const tbody = clear(document.getElementById("sample-rows"));
    for (const s of answer.samples) {
      const dots = cube.modalities.map((m) => el("span", { class: "dot" + (s.available.includes(m.name) ? " on" : ""),
                                                           title: m.name + (s.available.includes(m.name) ? ""
                                                             : " missing") }));
      tbody.appendChild(el("tr", {}, el("td", {}, el("a", { href: sampleHref(s.id), class: "sample-link",
                                                            text: s.id })),
                           el("td", { text: s.anchor ? s.anchor.slice(0, 10) : "–" }), el("td", {}, dots),
                           el("td", { class: "caption", title: s.caption, text: s.caption })));
    }
    page = answer.page;
    document.getElementById("page-info").textContent = `page ${answer.page + 1} of ${answer.pages}`;
    document.getElementById("prev-page").disabled = answer.page <= 0;
    document.getElementById("next-page").disabled = answer.page >= answer.pages - 1;
  }

  async function refresh() {
    const mine = ++seq;
    try {
      const answer = await query(params());
      if (mine !== seq) return; // a newer query is under way
      document.getElementById("error").hidden = true;
      drawCounts(answer);
      drawMap(answer);
      drawList(answer);
      document.body.dataset.ready = String(mine);
    } catch (err) {
      EO.showError(err);
    }
  }

  // -- set-up -------------------------------------------------------------------------------------------------
  function setup() {
    document.getElementById("title").textContent = `${cube.name}: ${cube.title}`;
    document.getElementById("subtitle").textContent =
      `${cube.n} samples, recipe ${cube.recipe || "?"} (${cube.recipe_hash || "?"}), built by eo-dataset ` +
      `${cube.built_by || "?"}; anchor ${cube.anchor || "none"}` +
      (cube.dates[0] ? `, anchor dates ${cube.dates[0]} to ${cube.dates[1]}` : "") +
      (EO.mode === "static" ? " (static export)" : "");
    const rows = clear(document.getElementById("avail-rows"));
    for (const m of cube.modalities) {
      const select = el("select", { id: "f-has-" + m.name, "aria-label": m.name + " filter" },
                        el("option", { value: "any", text: "any" }), el("option", { value: "present", text: "present" }),
                        el("option", { value: "absent", text: "absent" }));
      select.addEventListener("change", restart);
      const bar = el("span", { class: "bar", id: "bar-" + m.name });
      rows.appendChild(el("tr", { "data-modality": m.name },
                          el("th", { title: m.title, text: m.name }), el("td", {}, select),
                          el("td", { class: "num", id: "count-" + m.name }),
                          el("td", { class: "barcell" }, bar),
                          el("td", { class: "num", text: `${m.count} / ${cube.n}` }),
                          el("td", { class: "grid", text: `${m.shape[1]} px @ ${m.resolution_m} m` })));
    }
    const valid = document.getElementById("f-valid");
    const colour = document.getElementById("colour");
    for (const m of cube.modalities) {
      valid.appendChild(el("option", { value: m.name, text: m.name, selected: m.name === cube.anchor }));
      colour.appendChild(el("option", { value: "available:" + m.name, text: m.name + " available",
                                        selected: m.name === cube.anchor }));
    }
    for (const m of cube.modalities) colour.appendChild(el("option", { value: "valid:" + m.name,
                                                                       text: m.name + " valid fraction" }));
    colour.appendChild(el("option", { value: "date", text: "anchor date" }));
    if (cube.dates[0]) {
      document.getElementById("f-date-from").placeholder = cube.dates[0];
      document.getElementById("f-date-to").placeholder = cube.dates[1];
    }
    for (const id of ["f-valid", "f-valid-min", "f-valid-max", "f-date-from", "f-date-to", "f-text", "f-id"]) {
      document.getElementById(id).addEventListener("input", restart);
    }
    colour.addEventListener("change", refresh);
    document.getElementById("filters").addEventListener("reset", () => setTimeout(restart, 0));
    document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
    document.getElementById("prev-page").addEventListener("click", () => { page -= 1; refresh(); });
    document.getElementById("next-page").addEventListener("click", () => { page += 1; refresh(); });
  }

  function restart() {
    page = 0;
    refresh();
  }

  EO.load("cube").then((c) => {
    cube = c;
    setup();
    return refresh();
  }).catch(EO.showError);
})();
