// The search page of `hce-serve http`. Plain browser JavaScript: no build step, no dependency, nothing fetched
// from another origin (the server's Content-Security-Policy forbids it). It only reads: GET requests and
// POST /search. Text from the index reaches the DOM through textContent and text nodes only, never as HTML.
"use strict";

(() => {
  const DEBOUNCE_MS = 200; // a pause in typing this long starts a search
  const FIELDS = ["title", "text", "metadata"];
  const SNIPPET_WORDS = 36; // words around the best-matching stretch of a hit's text
  // Lucene's English stop words (the lexical side's default): not highlighted, they match everywhere.
  const STOP = new Set(("a an and are as at be but by for if in into is it no not of on or such that the their " +
    "then there these they this to was will with").split(" "));
  const WORD = /[\p{L}\p{N}]+/gu;

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("search"), q: $("q"), k: $("k"), modes: $("modes"), modesNote: $("modes-note"),
    filters: $("filters"), filtersNote: $("filters-note"), clear: $("clear-filters"), stats: $("stats"),
    summary: $("summary"), status: $("status"), error: $("error"), hits: $("hits"),
    doc: $("doc"), docTitle: $("doc-title"), docId: $("doc-id"), docMeta: $("doc-meta"), docText: $("doc-text"),
    docError: $("doc-error"), docClose: $("doc-close"),
  };
  const state = { filters: new Map(), seq: 0, controller: null, timer: 0, opener: null, options: null };

  // ---- small helpers ---------------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function getJSON(url, init = {}) {
    const res = await fetch(url, { ...init, headers: { Accept: "application/json", ...(init.headers || {}) } });
    let body = null;
    try { body = await res.json(); } catch { /* a body that is not JSON: report the status */ }
    if (!res.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : `${res.status} ${res.statusText}`;
      throw new Error(detail);
    }
    return body;
  }

  const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : String(n));
  const show = (v) => (typeof v === "string" ? v : JSON.stringify(v));
  const showMeta = (v) => (Array.isArray(v) ? v.map(show).join(", ") : show(v));

  // ---- query terms, highlighting, snippets ----------------------------------------------------------------
  function queryTerms(q) {
    const words = (q.toLowerCase().match(WORD) || []).filter((w) => !STOP.has(w) && (w.length > 1 || /\p{N}/u.test(w)));
    return [...new Set(words)];
  }

  // A word matches a term when they are equal or one starts with the other (a cheap stand-in for stemming:
  // "proteins" and "protein" both light up), for words long enough that a prefix means something.
  function matches(word, terms) {
    const w = word.toLowerCase();
    return terms.some((t) => w === t || (t.length >= 3 && w.startsWith(t)) || (w.length >= 4 && t.startsWith(w)));
  }

  // Append `text` to `parent` as text nodes, the words that match a query term wrapped in <mark>.
  function appendHighlighted(parent, text, terms) {
    if (!terms.length) { parent.append(text); return; }
    let last = 0;
    let plain = "";
    for (const m of text.matchAll(WORD)) {
      if (!matches(m[0], terms)) continue;
      plain += text.slice(last, m.index);
      if (plain) parent.append(plain);
      plain = "";
      parent.append(el("mark", "", m[0]));
      last = m.index + m[0].length;
    }
    plain += text.slice(last);
    if (plain) parent.append(plain);
  }

  // The stretch of `text` with the most query-term words (a sliding window over words), with ellipses.
  function snippet(text, terms) {
    const flat = (text || "").replace(/\s+/g, " ").trim();
    const words = [...flat.matchAll(WORD)];
    if (words.length <= SNIPPET_WORDS) return flat;
    const hit = words.map((m) => (terms.length && matches(m[0], terms) ? 1 : 0));
    let best = 0;
    let sum = hit.slice(0, SNIPPET_WORDS).reduce((a, b) => a + b, 0);
    let bestSum = sum;
    for (let i = 1; i + SNIPPET_WORDS <= words.length; i++) {
      sum += hit[i + SNIPPET_WORDS - 1] - hit[i - 1];
      if (sum > bestSum) { bestSum = sum; best = i; }
    }
    // start a few words before the first match, so it is read in context
    const first = hit.indexOf(1, best);
    const start = Math.max(0, Math.min(best, first >= 0 ? first - 4 : best));
    const end = Math.min(words.length, start + SNIPPET_WORDS) - 1;
    const from = start === 0 ? 0 : words[start].index;
    const to = end === words.length - 1 ? flat.length : words[end].index + words[end][0].length;
    return (from > 0 ? "… " : "") + flat.slice(from, to) + (to < flat.length ? " …" : "");
  }

  // ---- search ---------------------------------------------------------------------------------------------
  const currentMode = () => (ui.form.querySelector('input[name="mode"]:checked') || {}).value || null;

  function filterObject() {
    const out = {};
    for (const [key, value] of state.filters) out[key] = value;
    return out;
  }

  function remember() {
    const p = new URLSearchParams();
    if (ui.q.value.trim()) p.set("q", ui.q.value.trim());
    p.set("k", ui.k.value);
    const mode = currentMode();
    if (mode) p.set("mode", mode);
    if (state.filters.size) p.set("filter", JSON.stringify(filterObject()));
    history.replaceState(null, "", `${location.pathname}?${p}`);
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(runSearch, DEBOUNCE_MS);
  }

  async function runSearch() {
    clearTimeout(state.timer);
    remember();
    const q = ui.q.value.trim();
    const seq = ++state.seq;
    if (state.controller) state.controller.abort(); // an answer to an older query is no longer wanted
    if (!q) {
      ui.hits.replaceChildren();
      ui.status.textContent = "";
      ui.error.hidden = true;
      return;
    }
    const body = { query: q, k: Number(ui.k.value), fields: FIELDS };
    const mode = currentMode();
    if (mode) body.mode = mode;
    if (mode === "hybrid") body.explain = true;
    if (state.filters.size) body.filter = filterObject();
    const controller = (state.controller = new AbortController());
    ui.hits.setAttribute("aria-busy", "true");
    const t0 = performance.now();
    try {
      const res = await getJSON("/search", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (seq !== state.seq) return;
      ui.error.hidden = true;
      renderHits(res.hits, q, performance.now() - t0);
    } catch (err) {
      if (err.name === "AbortError" || seq !== state.seq) return;
      ui.hits.replaceChildren();
      ui.status.textContent = "";
      ui.error.textContent = `Search failed: ${err.message}`;
      ui.error.hidden = false;
    } finally {
      if (seq === state.seq) ui.hits.removeAttribute("aria-busy");
    }
  }

  function renderHits(hits, q, ms) {
    const terms = queryTerms(q);
    const items = hits.map((h, i) => {
      const li = el("li", "hit");
      const h3 = el("h3", "hit-title");
      const a = el("a");
      a.href = `#doc=${encodeURIComponent(h.id)}`;
      a.dataset.rank = String(i + 1);
      if (h.title) appendHighlighted(a, h.title, terms);
      else a.append(el("span", "untitled", `(untitled) ${h.id}`));
      a.addEventListener("click", (ev) => { ev.preventDefault(); openDoc(h, a); });
      h3.append(a);
      li.append(h3);
      if (h.text) {
        const p = el("p", "snippet");
        appendHighlighted(p, snippet(h.text, terms), terms);
        li.append(p);
      }
      const meta = el("p", "hit-meta");
      meta.append(el("span", "score", `score ${h.score.toFixed(4)}`), el("span", "hit-id", `id ${h.id}`));
      if (h.explain) {
        const sides = ["dense", "lexical"].filter((s) => h.explain[s]).map((s) => `${s} #${h.explain[s].rank}`);
        meta.append(el("span", "explain", sides.length ? sides.join(" · ") : ""));
      }
      for (const [key, value] of Object.entries(h.metadata || {})) {
        meta.append(el("span", "chip", `${key}: ${showMeta(value)}`));
      }
      li.append(meta);
      return li;
    });
    ui.hits.replaceChildren(...items);
    const n = hits.length;
    const filters = state.filters.size ? `, ${state.filters.size} filter${state.filters.size > 1 ? "s" : ""}` : "";
    ui.status.textContent = n
      ? `${n} result${n > 1 ? "s" : ""} for “${q}”${filters} · ${Math.round(ms)} ms`
      : `No results for “${q}”${filters}.`;
  }

  // ---- the document view ----------------------------------------------------------------------------------
  function fillDoc(doc, terms) {
    ui.docTitle.replaceChildren();
    appendHighlighted(ui.docTitle, doc.title || "(untitled)", terms);
    ui.docId.textContent = doc._id ?? doc.id;
    ui.docMeta.replaceChildren();
    for (const [key, value] of Object.entries(doc.metadata || {})) {
      ui.docMeta.append(el("dt", "", key), el("dd", "", showMeta(value)));
    }
    const paragraphs = (doc.text || "").split(/\n\s*\n/).filter((t) => t.trim());
    ui.docText.replaceChildren(...paragraphs.map((t) => {
      const p = el("p");
      appendHighlighted(p, t.trim(), terms);
      return p;
    }));
  }

  async function openDoc(hit, opener) {
    state.opener = opener;
    const terms = queryTerms(ui.q.value);
    ui.docError.hidden = true;
    ui.docTitle.textContent = hit.title || "(untitled)";
    ui.docId.textContent = hit.id;
    ui.docMeta.replaceChildren();
    ui.docText.replaceChildren(el("p", "muted", "Loading the stored document…"));
    ui.doc.setAttribute("aria-busy", "true");
    if (!ui.doc.open) ui.doc.showModal();
    ui.docClose.focus();
    try {
      fillDoc(await getJSON(`/documents/${encodeURIComponent(hit.id)}`), terms);
    } catch (err) {
      fillDoc(hit, terms); // what the search returned, said to be so
      ui.docError.textContent = `Could not load the stored document (${err.message}); showing the search hit.`;
      ui.docError.hidden = false;
    } finally {
      ui.doc.removeAttribute("aria-busy");
    }
  }

  ui.docClose.addEventListener("click", () => ui.doc.close());
  ui.doc.addEventListener("click", (ev) => { if (ev.target === ui.doc) ui.doc.close(); }); // the backdrop
  ui.doc.addEventListener("close", () => { if (state.opener && state.opener.isConnected) state.opener.focus(); });

  // ---- filters --------------------------------------------------------------------------------------------
  // A typed value takes the type of a known value it spells (2021, true), else it stays text.
  function typed(text, values) {
    for (const v of values) if (show(v.value) === text || String(v.value) === text) return v.value;
    return text;
  }

  function setFilter(key, value) {
    if (value === undefined) state.filters.delete(key);
    else state.filters.set(key, value);
    ui.clear.hidden = state.filters.size === 0;
    runSearch();
  }

  function renderFilters(res) {
    const fields = res.fields || [];
    ui.filters.replaceChildren();
    if (!fields.length) {
      ui.filtersNote.textContent = "This index has no metadata to filter on.";
      return;
    }
    const notes = [];
    if (res.sampled) notes.push(`Values from a sample of ${fmt(res.documents_read)} documents.`);
    if (res.more) notes.push("Some fields are not listed.");
    ui.filtersNote.textContent = notes.join(" ");
    ui.filtersNote.hidden = !notes.length;
    fields.forEach((f, i) => {
      const id = `filter-${i}`;
      const wrap = el("div", "filter");
      const label = el("label", "", f.key);
      label.htmlFor = id;
      wrap.append(label);
      const active = state.filters.has(f.key);
      if (!f.more) {
        // an option's value is the JSON of its metadata value: "2021" the text and 2021 the number stay apart
        const select = el("select");
        select.id = id;
        select.append(new Option("Any", ""));
        for (const v of f.values) {
          const count = v.exact ? fmt(v.count) : `${fmt(v.count)}+`;
          select.append(new Option(`${show(v.value)} (${count})`, JSON.stringify(v.value)));
        }
        select.value = active ? JSON.stringify(state.filters.get(f.key)) : "";
        select.addEventListener("change", () => {
          setFilter(f.key, select.value === "" ? undefined : JSON.parse(select.value));
        });
        wrap.append(select);
      } else { // too many values for a list: free text, the known ones suggested
        const input = el("input");
        input.id = id;
        input.type = "text";
        input.autocomplete = "off";
        input.placeholder = "Any";
        input.value = active ? show(state.filters.get(f.key)) : "";
        const list = el("datalist");
        list.id = `${id}-values`;
        for (const v of f.values) list.append(new Option(show(v.value)));
        input.setAttribute("list", list.id);
        input.addEventListener("change", () => {
          const text = input.value.trim();
          setFilter(f.key, text ? typed(text, f.values) : undefined);
        });
        wrap.append(input, list);
      }
      ui.filters.append(wrap);
    });
  }

  ui.clear.addEventListener("click", () => {
    state.filters.clear();
    for (const c of ui.filters.querySelectorAll("select, input")) c.value = "";
    ui.clear.hidden = true;
    runSearch();
    ui.q.focus();
  });

  // ---- the index: options and statistics ------------------------------------------------------------------
  function applyOptions(opts, wanted) {
    state.options = opts;
    const can = new Set(opts.modes);
    const pick = can.has(wanted) ? wanted : opts.defaults.mode;
    for (const input of ui.modes.querySelectorAll("input")) {
      input.disabled = !can.has(input.value);
      input.checked = input.value === pick;
      input.parentElement.classList.toggle("disabled", input.disabled);
    }
    ui.modesNote.textContent = can.size < 3 ? "(lexical and hybrid need the index's lexical part)" : "";
    for (const opt of [...ui.k.options]) if (Number(opt.value) > opts.max_k) opt.remove();
  }

  function renderStats(s) {
    const rows = [["Documents", fmt(s.live)]];
    if (s.deleted) rows.push(["Deleted, not compacted", fmt(s.deleted)]);
    if (s.backend === "milvus") rows.push(["Backend", `Milvus, collection ${s.collection}`]);
    const kind = s.kind || s.index_type;
    if (kind) rows.push(["Vector index", s.M ? `${kind} (M ${s.M}, ef ${s.ef_search})` : kind]);
    if (s.dim) rows.push(["Dimensions", fmt(s.dim)]);
    const enc = s.encoder || {};
    if (enc.base_model) rows.push(["Encoder", enc.variant ? `${enc.base_model} (${enc.variant})` : enc.base_model]);
    if (enc.query_encoder) rows.push(["Query encoder", `${enc.query_encoder} (${enc.query_graph})`]);
    rows.push(["Lexical part", s.lexical ? `${fmt(s.lexical.terms)} terms, ${s.lexical.language}` : "none"]);
    if (s.tree) rows.push(["Corpus tree", s.tree.levels ? `${s.tree.levels} levels, ${fmt(s.tree.nodes)} nodes` : "yes"]);
    if (s.generation !== undefined) rows.push(["Generation", fmt(s.generation)]);
    if (s.pending_log_records) rows.push(["Writes not yet in a snapshot", fmt(s.pending_log_records)]);
    rows.push(["Server", s.writable ? "read-write (this page only reads)" : "read-only"]);
    ui.stats.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
    const parts = [`${fmt(s.live)} documents`, s.lexical ? "dense + lexical" : "dense"];
    if (s.backend === "milvus") parts.push("Milvus");
    ui.summary.textContent = parts.join(" · ");
  }

  // ---- keyboard ---------------------------------------------------------------------------------------------
  const hitLinks = () => [...ui.hits.querySelectorAll(".hit-title a")];

  document.addEventListener("keydown", (ev) => {
    if (ui.doc.open) return; // the dialog handles its own keys (Escape closes it)
    const links = hitLinks();
    const at = links.indexOf(document.activeElement);
    if (ev.key === "ArrowDown" && (document.activeElement === ui.q || at >= 0) && links.length) {
      ev.preventDefault();
      links[Math.min(at + 1, links.length - 1)].focus();
    } else if (ev.key === "ArrowUp" && at >= 0) {
      ev.preventDefault();
      (at === 0 ? ui.q : links[at - 1]).focus();
    } else if (ev.key === "/" && !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
      ev.preventDefault();
      ui.q.focus();
    }
  });

  // ---- start --------------------------------------------------------------------------------------------
  function fromURL() {
    const p = new URLSearchParams(location.search);
    ui.q.value = p.get("q") || "";
    if (p.get("k") && [...ui.k.options].some((o) => o.value === p.get("k"))) ui.k.value = p.get("k");
    try {
      const f = JSON.parse(p.get("filter") || "{}");
      if (f && typeof f === "object" && !Array.isArray(f)) for (const [key, v] of Object.entries(f)) state.filters.set(key, v);
    } catch { /* a hand-edited URL: no filters */ }
    ui.clear.hidden = state.filters.size === 0;
    return p.get("mode");
  }

  async function start() {
    const wantedMode = fromURL();
    ui.form.addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });
    ui.q.addEventListener("input", schedule);
    ui.k.addEventListener("change", runSearch);
    ui.modes.addEventListener("change", runSearch);
    const [opts, stats, facets] = await Promise.allSettled(
      [getJSON("/search/options"), getJSON("/stats"), getJSON("/facets")]);
    if (opts.status === "fulfilled") applyOptions(opts.value, wantedMode);
    else {
      ui.modesNote.textContent = `(search options unavailable: ${opts.reason.message})`;
      for (const input of ui.modes.querySelectorAll("input")) input.checked = input.value === "dense";
    }
    if (stats.status === "fulfilled") renderStats(stats.value);
    else ui.summary.textContent = `Index statistics unavailable: ${stats.reason.message}`;
    if (facets.status === "fulfilled") renderFilters(facets.value);
    else ui.filtersNote.textContent = `Filters unavailable: ${facets.reason.message}`;
    document.body.dataset.ready = "true"; // for tests and for anyone scripting the page
    if (ui.q.value.trim()) runSearch();
  }

  start();
})();
