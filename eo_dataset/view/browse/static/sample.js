// eo-dataset browse: one sample. Every modality drawn from the cube (one PNG pixel per cube pixel), its legend and
// provenance; the reason recorded for each missing one; the invalid-pixel overlay toggle; tokens and neighbours;
// generated modalities (--generated) beside the truth, with their provenance and crop, and the generated caption.
"use strict";

(() => {
  const { el, clear } = EO;
  const SIDE = 264; // CSS pixels per picture: every modality covers the same footprint

  function href(id) {
    return "sample.html?id=" + encodeURIComponent(id);
  }

  function days(d) {
    if (d === null || d === undefined) return "–";
    const sign = d > 0 ? "+" : d < 0 ? "−" : "±";
    return sign + Math.abs(d).toFixed(Math.abs(d) < 10 ? 1 : 0) + " days";
  }

  function fmt(x) {
    return Math.abs(x) >= 100 ? x.toFixed(0) : Number(x.toPrecision(3)).toString();
  }

  function legend(m) {
    const L = m.legend || {};
    const box = el("div", { class: "legend" });
    if (L.type === "rgb") {
      box.append(`R/G/B = ${L.bands.join("/")}, ${fmt(L.range[0])} to ${fmt(L.range[1])} ${L.units || ""}`);
    } else if (L.type === "colourbar") {
      const bar = el("span", { class: "ramp" });
      bar.style.background = `linear-gradient(to right, ${L.colours.join(", ")})`;
      box.append(`${L.band} `, fmt(L.range[0]), bar, `${fmt(L.range[1])} ${L.units || ""}`,
                 L.hillshade ? " (hillshaded)" : "");
    } else if (L.type === "classes" || L.type === "layers") {
      const list = el("ul", { class: "classes" });
      for (const item of L.items) {
        if (L.type === "classes" && !(item.share > 0)) continue;
        const s = el("span", { class: "swatch" });
        s.style.background = item.colour;
        list.appendChild(el("li", { "data-class": item.id }, s,
                            `${L.type === "classes" ? item.id + " " : ""}${item.name} (${EO.percent(item.share)})`));
      }
      box.appendChild(list);
    }
    return box;
  }

  function facts(rows) {
    return el("dl", { class: "facts" }, rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]).flat());
  }

  function card(m, s) {
    if (!m.available) {
      return el("figure", { class: "card missing", "data-modality": m.name, "data-available": "false" },
                el("div", { class: "frame empty" }, el("span", { text: "not available" })),
                el("figcaption", {}, el("h3", { text: m.name }), el("p", { class: "title", text: m.title }),
                   el("p", { class: "reason", text: m.reason })));
    }
    const picture = el("img", { class: "picture", src: m.image, width: SIDE, height: SIDE,
                                alt: `${m.name} of ${s.id}`, "data-width": m.shape[1], "data-height": m.shape[0] });
    const overlay = el("img", { class: "overlay", src: m.overlay, width: SIDE, height: SIDE,
                                alt: `pixels of ${m.name} that are not valid` });
    const when = m.static ? "static product" : m.time ? m.time.replace("T", " ").replace("Z", " UTC") : null;
    return el("figure", { class: "card", "data-modality": m.name, "data-available": "true" },
              el("div", { class: "frame" }, picture, overlay),
              el("figcaption", {},
                 el("h3", {}, m.name, el("span", { class: "what", text: m.legend && m.legend.title ?
                   " · " + m.legend.title : "" })),
                 el("p", { class: "title", text: m.title }),
                 legend(m),
                 facts([["acquired", when], ["gap to anchor", m.static ? null : days(m.gap_days)],
                        ["items", m.items.join(", ")], ["valid pixels", EO.percent(m.valid_fraction)],
                        ["grid", `${m.shape[1]} × ${m.shape[0]} px @ ${m.resolution_m} m`],
                        ["licence", m.licence]])));
  }

  function labelText(g) {
    return g.label + (g.schedule ? ` · schedule: ${g.schedule}` : "");
  }

  function generatedLabel(g) {
    return el("p", { class: "generated-label", text: labelText(g) });
  }

  function cropText(c) {
    return c.whole ? "the whole sample" : `${c.px} × ${c.px} of ${c.sample_px} base px, from row ` +
      `${c.offset_px[0]}, column ${c.offset_px[1]} (outlined)`;
  }

  // a generated modality: drawn by the truth's display spec, the generated crop outlined
  function generatedCard(g, s) {
    const head = el("h3", {}, g.modality, el("span", { class: "what", text: " · generated" }));
    if (!g.available) {
      return el("figure", { class: "card generated missing", "data-generated": g.modality, "data-available": "false" },
                el("div", { class: "frame empty" }, el("span", { text: "not generated for this sample" })),
                el("figcaption", {}, head, generatedLabel(g)));
    }
    const frame = el("div", { class: "frame" },
                     el("img", { class: "picture", src: g.image, width: SIDE, height: SIDE,
                                 alt: `generated ${g.modality} of ${s.id}`, "data-width": g.shape[1],
                                 "data-height": g.shape[0] }),
                     el("img", { class: "overlay", src: g.overlay, width: SIDE, height: SIDE,
                                 alt: `pixels of the generated ${g.modality} that are not valid` }));
    const c = g.crop;
    if (!c.whole) {
      const box = el("div", { class: "crop", title: `generated: ${cropText(c)}` });
      const pc = (v) => (SIDE * v / c.sample_px) + "px"; // over the picture, drawn SIDE px wide
      box.style.top = pc(c.offset_px[0]);
      box.style.left = pc(c.offset_px[1]);
      box.style.width = box.style.height = pc(c.px);
      frame.appendChild(box);
    }
    return el("figure", { class: "card generated", "data-generated": g.modality, "data-available": "true" }, frame,
              el("figcaption", {}, head, generatedLabel(g), legend(g),
                 facts([["generated crop", cropText(c)], ["valid pixels", EO.percent(g.valid_fraction)],
                        ["weights", g.digest ? `sha256 ${g.digest}…` : null]])));
  }

  function render(s) {
    document.title = `${s.id} · eo-dataset browse`;
    document.getElementById("title").textContent = s.id;
    document.getElementById("where").textContent =
      `Major TOM cell ${s.cell}, EPSG:${s.epsg}, origin (${s.x0.toFixed(2)}, ${s.y0.toFixed(2)}) m, centre ` +
      `lon ${s.lon.toFixed(4)} lat ${s.lat.toFixed(4)}; ` +
      (s.anchor ? `anchor (${s.anchor_modality}) ${s.anchor.replace("T", " ").replace("Z", " UTC")}`
        : "no anchor scene");
    document.getElementById("caption").textContent = s.caption || "(no caption)";
    const gc = s.generated && s.generated.caption;
    if (gc) {
      document.getElementById("generated-caption").hidden = false;
      document.getElementById("gen-caption").textContent = gc.available ? gc.text
        : "(no caption generated for this sample)";
      document.getElementById("gen-caption-label").textContent = labelText(gc);
    }
    for (const key of ["previous", "next"]) {
      const a = document.getElementById(key);
      if (s[key]) {
        a.href = href(s[key]);
        a.hidden = false;
      }
    }
    const cards = clear(document.getElementById("modalities"));
    const generated = new Map(((s.generated || {}).modalities || []).map((g) => [g.modality, g]));
    for (const m of s.modalities) {
      const g = generated.get(m.name);
      cards.appendChild(g ? el("div", { class: "pair", "data-pair": m.name }, card(m, s), generatedCard(g, s))
        : card(m, s));
    }
    if (s.tokens && s.tokens.length) {
      document.getElementById("tokens-panel").hidden = false;
      const box = clear(document.getElementById("tokens"));
      for (const t of s.tokens) {
        box.appendChild(el("figure", { class: "card" + (t.available ? "" : " missing"), "data-tokens": t.modality },
                           t.available ? el("div", { class: "frame" }, el("img", {
                             class: "tokens", src: t.image, width: SIDE, height: SIDE,
                             alt: `${t.modality} tokens of ${s.id}` }))
                             : el("div", { class: "frame empty" }, el("span", { text: "no tokens" })),
                           el("figcaption", {}, el("h3", { text: `${t.modality} tokens` }),
                              facts([["token grid", t.grid.join(" × ")], ["codebook", t.codebook_size],
                                     ["crop", t.crop_px ? t.crop_px + " base px" : null]]))));
      }
    }
    if (s.neighbours) {
      document.getElementById("neighbours-panel").hidden = false;
      const list = clear(document.getElementById("neighbours"));
      for (const nb of s.neighbours) {
        list.appendChild(el("li", {}, el("a", { href: href(nb.id), class: "neighbour", text: nb.id }),
                            ` cosine similarity ${nb.similarity.toFixed(3)}`));
      }
    }
    document.body.dataset.ready = "1";
  }

  const toggle = document.getElementById("show-invalid");
  toggle.addEventListener("change", () => document.body.classList.toggle("show-invalid", toggle.checked));
  const id = new URLSearchParams(window.location.search).get("id");
  if (!id) {
    EO.showError("no sample id: open a sample from the overview (sample.html?id=...)");
  } else {
    EO.load("sample/" + id).then(render).catch(EO.showError);
  }
})();
