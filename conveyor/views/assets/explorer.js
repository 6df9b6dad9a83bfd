/* conveyor explorer: controls, state and the main chart. It draws what
 * conveyor's Python engine produced; nothing here knows any schedule.
 * Embedded mode: the page holds every rank's action order and Python's metrics
 * for the offered B/F ratios; replay.js replays the order under any costs the
 * user types. A browser test checks those times equal Python's simulate(),
 * and selfCheck() compares every embedded step time with Python's. Served mode
 * (conveyor viz --serve): Python sends the order on request. The whole state
 * lives in the URL hash. */
(function () {
  "use strict";
  var KINDS = "FBIW", R = ConveyorReplay, D = ConveyorDraw;
  var $ = function (id) { return document.getElementById(id); };
  var DATA, schedByName = {};

  // The embedded data: gzipped JSON in base64 (conveyor/views/page.py), unpacked
  // in the page with the browser's own DecompressionStream; nothing is fetched.
  function loadData() {
    var bin = atob(document.getElementById("conveyor-data").textContent.trim());
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(JSON.parse);
  }
  var decoded = new Map();  // recently decoded orders (schedule|P|M), bounded

  // ---- costs ------------------------------------------------------------------
  function parseList(text, what) {
    var parts = String(text).split(",").map(function (x) { return x.trim(); }).filter(Boolean);
    if (!parts.length) throw new Error(what + " is empty: give a number, e.g. 1");
    return parts.map(function (x) {
      var v = /^inf(inity)?$/i.test(x) ? Infinity : Number(x);
      if (!(v >= 0) || (v === Infinity && !/bandwidth$/.test(what))) throw new Error(what + " " + JSON.stringify(x) + " is not a number >= 0");
      return v;
    });
  }
  function readCosts() {
    var c = { f: parseList($("cost-F").value, "F"), i: parseList($("cost-I").value, "I"),
      w: parseList($("cost-W").value, "W"), bytes: parseList($("cost-bytes").value, "activation bytes") };
    c.latency = parseList($("cost-lat").value, "link latency")[0];
    c.bandwidth = parseList($("cost-bw").value, "bandwidth")[0];
    if (!(c.bandwidth > 0)) throw new Error("bandwidth must be > 0 (inf: free links)");
    // data parallelism (conveyor.sim.dp): replicas, ranks per node, links between nodes
    c.dp = parseList($("cost-dp").value, "dp")[0];
    c.rpn = parseList($("cost-rpn").value, "ranks per node")[0];
    if (!(c.dp >= 1 && c.dp <= 1024 && c.dp % 1 === 0)) throw new Error("dp must be a whole number from 1 to 1024");
    if (c.rpn % 1 !== 0) throw new Error("ranks per node must be a whole number (0: one node)");
    c.ilat = parseList($("cost-ilat").value, "inter-node latency")[0];
    c.ibw = parseList($("cost-ibw").value, "inter-node bandwidth")[0];
    if (!(c.ibw > 0)) throw new Error("inter-node bandwidth must be > 0 (inf: free)");
    c.pbytes = parseList($("cost-pbytes").value, "parameter bytes");
    c.overlap = $("cost-ar").value !== "after";
    return c;
  }
  // the B/F ratio these costs equal, when they are the simple kind Python embedded
  function simpleRatio(c, scale) {
    if (scale !== 1 || c.latency !== 0 || c.dp > 1 || c.rpn > 0 || c.f.length !== 1 || c.f[0] !== 1 || c.i.length !== 1 ||
        c.w.length !== 1 || (c.bytes.some(function (x) { return x; }) && c.bandwidth !== Infinity)) return -1;
    var ratio = c.i[0] + c.w[0];
    return c.i[0] === ratio / 2 && c.w[0] === ratio - ratio / 2 ? DATA.ratios.indexOf(ratio) : -1;
  }

  // ---- models ---------------------------------------------------------------------
  function record(name, P, M) { return schedByName[name].configs[P - 1][M - 1]; }

  function orderOf(name, P, M) {
    var rec = record(name, P, M), id = name + "|" + P + "|" + M;
    if (rec.err) return { refused: rec.err };
    var placement = rec.pl || Array.from({ length: P }, function (_, r) { return r; });
    var rows = decoded.get(id);
    if (!rows) {
      var byRank = R.stagesByRank(placement, P);
      rows = rec.o.map(function (code, r) { return R.decodeRow(code, byRank[r], DATA.alphabet); });
      decoded.set(id, rows);
      if (decoded.size > 64) decoded.delete(decoded.keys().next().value);
    }
    // The micro-batches the order really runs (naive: 1 whatever M is asked);
    // records are shared between M values that give the same order.
    var runs = 0;
    rows.forEach(function (row) { row.forEach(function (x) { if (x.mb + 1 > runs) runs = x.mb + 1; }); });
    return { rows: rows, placement: placement, M: runs || M, rec: rec };
  }

  // One schedule under the state's costs: events, layout, memory, metrics.
  function model(name, st, order) {
    if (order.refused) return order;
    var fwd = st.view === "fwd", rows = order.rows;
    if (fwd) rows = rows.map(function (row) { return row.filter(function (x) { return x.k === 0; }); });
    // The same global batch: a schedule that runs fewer micro-batches (naive: one)
    // gets proportionally bigger ones; with a fixed batch each costs 1/M of it.
    var scale = st.fixed ? 1 / order.M : st.M / order.M;
    var S = order.placement.length, table = R.costTable(st.costs, S, scale);
    if (st.costs.rpn > 0) table.link = R.nodeLinks(st.costs, order.placement, table.bytes);
    var events = R.replay(rows, order.placement, table);
    // Replicas are identical: one is replayed and each rank's all-reduces added.
    if (!fwd && st.costs.dp > 1) events = R.allreduce(events, order.placement, st.costs).concat(events);
    var m = { name: name, P: st.P, S: S, M: order.M, placement: order.placement, events: events,
      scale: scale, table: table };
    m.lay = R.layout(m);
    m.memory = R.memory(events, st.P, fwd);
    var ri = simpleRatio(st.costs, scale), rec = order.rec;
    if (rec) m.python = { T: fwd ? rec.fw[0] : ri >= 0 ? rec.r[ri][0] : null,
      bubble: fwd ? rec.fw[1] : ri >= 0 ? rec.r[ri][1] : null, formula: rec.fb,
      peaks: fwd ? null : rec.pk, rankPeaks: fwd ? null : (rec.pr || null) };
    if (fwd && (st.costs.f.length > 1 || st.costs.f[0] !== 1 || scale !== 1 || st.costs.latency)) {
      m.python.T = m.python.bubble = null;  // Python embedded F = 1 only
    }
    return m;
  }

  var served = 0;
  function servedOrder(name, st, ticket) {
    var q = "schedule=" + encodeURIComponent(name) + "&P=" + st.P + "&M=" + st.M + "&view=step&ratio=2";
    return fetch("api/timeline?" + q).then(function (res) {
      return res.json().then(function (body) {
        if (!res.ok) return { refused: "server: " + (body.error || res.statusText) };
        if (ticket !== served) return null;  // a newer redraw superseded this one
        var rows = [];
        for (var r = 0; r < body.P; r++) rows.push([]);
        body.events.slice().sort(function (a, b) { return a[2] - b[2]; }).forEach(function (ev) {
          var m = /^(\d+)([FBIW])(\d+)$/.exec(ev[1]);
          if (m) rows[ev[0]].push({ s: +m[1], k: KINDS.indexOf(m[2]), mb: +m[3] });
        });
        return { rows: rows, placement: body.placement, M: body.M,
          rec: { fb: body.python.formula, fw: [null, null], r: [], pk: body.python.peaks, pr: body.python.rankPeaks } };
      });
    });
  }

  // ---- state and the URL hash ----------------------------------------------------
  var ctl = { schedule: $("schedule"), compare: $("compare"), P: $("P"), M: $("M") };
  var COST_FIELDS = { F: "cost-F", I: "cost-I", W: "cost-W", lat: "cost-lat", bytes: "cost-bytes", bw: "cost-bw",
    dp: "cost-dp", rpn: "cost-rpn", ilat: "cost-ilat", ibw: "cost-ibw", pb: "cost-pbytes", ar: "cost-ar" };
  // fields left out of the URL while they hold these defaults (no data parallelism)
  var DP_DEFAULTS = { dp: "1", rpn: "0", ilat: "0", ibw: "inf", pb: "0", ar: "overlap" };
  var lastCosts = null;

  function state() {
    var costs;
    try { costs = readCosts(); $("cost-error").hidden = true; lastCosts = costs; }
    catch (e) { $("cost-error").hidden = false; $("cost-error").textContent = e.message + "; keeping the last valid costs"; costs = lastCosts; }
    costs = costs || { f: [1], i: [1], w: [1], latency: 0, bandwidth: Infinity, bytes: [0], dp: 1, rpn: 0 };
    return { schedule: ctl.schedule.value, compare: ctl.compare.value, P: +ctl.P.value, M: +ctl.M.value,
      view: $("view-step").checked ? "step" : "fwd", costs: costs, fixed: $("fixed").checked,
      memory: $("memory").checked };
  }
  function toHash() {
    var q = ["s=" + encodeURIComponent(ctl.schedule.value), "P=" + ctl.P.value, "M=" + ctl.M.value,
      "v=" + ($("view-step").checked ? "step" : "fwd")];
    if (ctl.compare.value) q.push("c=" + encodeURIComponent(ctl.compare.value));
    Object.keys(COST_FIELDS).forEach(function (k) {
      var value = $(COST_FIELDS[k]).value.replace(/\s+/g, "");
      if (DP_DEFAULTS[k] !== value) q.push(k + "=" + encodeURIComponent(value));
    });
    if ($("fixed").checked) q.push("fix=1");
    if (!$("memory").checked) q.push("mem=0");
    return "#" + q.join("&");
  }
  function fromHash(hash) {
    var q = {};
    hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) q[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1));
    });
    if (schedByName[q.s]) ctl.schedule.value = q.s;
    if (q.c === "" || schedByName[q.c]) ctl.compare.value = q.c;
    if (+q.P >= 1 && +q.P <= DATA.P_max) ctl.P.value = q.P;
    if (+q.M >= 1 && +q.M <= DATA.M_max) ctl.M.value = q.M;
    if (q.v === "step" || q.v === "fwd") $(q.v === "step" ? "view-step" : "view-fwd").checked = true;
    Object.keys(COST_FIELDS).forEach(function (k) { if (q[k] !== undefined) $(COST_FIELDS[k]).value = q[k]; });
    if (q.fix !== undefined) $("fixed").checked = q.fix === "1";
    if (q.mem !== undefined) $("memory").checked = q.mem !== "0";
  }

  // ---- numbers ---------------------------------------------------------------------
  function pct(x) { return (100 * x).toFixed(1) + "%"; }
  function bubbleText(code) {
    if (code === null || code === undefined) return "no closed form";
    if (typeof code === "number") return pct(code);
    var nd = code.split("/").map(Number);
    return (nd[0] === 0 ? "0" : code) + " = " + pct(nd[0] / nd[1]);
  }
  function bubbleValue(code) {
    if (typeof code === "number") return code;
    var nd = code.split("/").map(Number);
    return nd[0] / nd[1];
  }
  function num(x) { return +(+x).toPrecision(6); }
  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;"); }

  // The simulated bubble: Python's exact fraction where Python embedded this
  // configuration (and the replay agrees), else the page's own replay.
  function simBubble(m) {
    return m.python && m.python.bubble !== null ? bubbleText(m.python.bubble) : pct(m.lay.bubble);
  }

  function infoHtml(sc) {
    var skip = { name: 1, configs: 1, summary: 1 };
    var extra = Object.keys(sc).filter(function (k) {
      var v = sc[k];
      return !skip[k] && v !== null && v !== "" && !(typeof v === "object" && !Object.keys(v).length);
    });
    return "<b>" + esc(sc.name) + "</b>: " + esc(sc.summary || "") + (extra.length ? " · " + extra.map(function (k) {
      var v = sc[k];
      if (typeof v === "object") v = Array.isArray(v) ? v.join(", ") : Object.keys(v).map(function (x) { return x + " " + v[x]; }).join(", ");
      return '<span class="k">' + esc(k.replace(/_/g, " ")) + "</span> " + esc(v);
    }).join(" · ") : "");
  }

  // Peak activations per rank in micro-batches of data (naive's one micro-batch
  // holds all M), or with a fixed batch as the share of the batch.
  function peaksOf(m, st) {
    var unitsPerMb = st.fixed ? 1 / m.M : st.M / m.M;
    return m.memory.map(function (x) { return num(x.peak * unitsPerMb); });
  }

  function statsRow(m, st) {
    var fixedNote = m.M !== st.M ? " (fixed: the whole batch at once)" : "";
    var peaks = peaksOf(m, st);
    var bytes = Math.max.apply(null, st.costs.bytes);
    return "<tr><th scope=\"row\">" + esc(m.name) + "</th><td>" + m.M + fixedNote + "</td><td class=\"b\">" +
      simBubble(m) + "</td><td>" + (m.python ? bubbleText(m.python.formula) : "") + "</td><td>" + num(m.lay.T) +
      "</td><td>" + num(m.lay.T / (st.fixed ? 1 : st.M)) + "</td><td>" + (st.view === "fwd" ? "none (forward only)" :
      peaks.join(" · ") + (bytes ? " (× " + bytes + " B = " + num(Math.max.apply(null, peaks) * bytes) + " B max)" : "")) + "</td></tr>";
  }

  // ---- the explorer -------------------------------------------------------------------
  var api = window.conveyor = { lastRedrawMs: null, models: [] };
  var current = null;  // the last drawn figure, for downloads

  function figureOf(models, st, width) {
    var T = 0;
    models.forEach(function (m) { T = Math.max(T, m.lay.T); });
    if (st.fixed) models.forEach(function (m) { T = Math.max(T, fixedAxis(m.name, st)); });
    return { width: width, T: T, scale: 1, unitLabel: st.fixed ? "one stage's F on the whole batch = 1" : "F = " + st.costs.f.join(",") + " per micro-batch",
      panels: models.map(function (m) {
        return { model: m, lay: m.lay, memory: st.memory && st.view === "step" ? m.memory : null,
          title: m.name + " · step " + num(m.lay.T) + " · bubble " + simBubble(m) };
      }) };
  }
  // The fixed axis spans the schedule's step at M = 1 (the longest, with a fixed batch).
  function fixedAxis(name, st) {
    var o = orderOf(name, st.P, 1);
    if (o.refused) return 0;
    return model(name, Object.assign({}, st, { M: 1 }), o).lay.T;
  }

  function curve(st, m) {
    var sc = schedByName[st.schedule], formula = [], sim = [], ri = DATA.ratios.indexOf(2);
    if (ri < 0) ri = 0;
    for (var M = 1; M <= DATA.M_max; M++) {
      var rec = sc.configs ? sc.configs[st.P - 1][M - 1] : null;
      if (!rec || rec.err) continue;
      if (rec.fb) formula.push([M, bubbleValue(rec.fb)]);
      var py = st.view === "fwd" ? rec.fw : rec.r[ri];
      if (py) sim.push([M, bubbleValue(py[1])]);
    }
    var box = $("curve-canvas").parentNode, w = Math.min(300, Math.max(220, box.clientWidth || 260));
    var c = { width: w, height: 170, P: st.P, formula: formula, sim: sim, Mmax: DATA.M_max,
      measured: api.sweepPointsFor ? api.sweepPointsFor(st) : [], mark: m ? [st.M, m.lay.bubble] : null };
    D.bubbleCurve(D.canvasPainter($("curve-canvas"), c.width, c.height), c);
  }

  function show(orders, st, t0) {
    var models = [], refusedText = [];
    orders.forEach(function (o, i) {
      if (!o) return;
      var name = i ? st.compare : st.schedule;
      if (o.refused) { refusedText.push(name + ": " + o.refused); return; }
      try { models.push(model(name, st, o)); }
      catch (e) {  // e.g. per-stage costs whose count does not match this schedule's stages
        refusedText.push(name + ": " + e.message + " stages; give one value, or one per stage");
      }
    });
    api.models = models;
    var sc = schedByName[st.schedule];
    $("summary").innerHTML = [sc].concat(st.compare ? [schedByName[st.compare]] : []).map(function (s) {
      return "<p>" + infoHtml(s) + "</p>"; }).join("") + refusedText.map(function (t) {
      return '<p class="refused">' + esc(t) + "</p>"; }).join("");
    var m0 = models[0] && models[0].name === st.schedule ? models[0] : null;
    $("M-out").textContent = m0 && m0.M !== st.M ? "1 (fixed: " + st.schedule + " runs the batch as one)" : st.M;
    $("stats").innerHTML = '<tr><th scope="col">schedule</th><th scope="col">M run</th><th scope="col">bubble (simulated)</th>' +
      '<th scope="col">bubble (formula)</th><th scope="col">step time</th><th scope="col">' +
      (st.fixed ? "step time (whole batch)" : "step time per micro-batch of data (÷ M)") +
      '</th><th scope="col">peak activations per rank (' + (st.fixed ? "share of the batch" : "micro-batches of data") +
      (models.some(function (m) { return m.S > m.P; }) ? "; one per stage held, with several stages per rank" : "") +
      ")</th></tr>" +
      models.map(function (m) { return statsRow(m, st); }).join("");
    var width = Math.max(300, Math.floor($("gantt").clientWidth || 900));
    var canvas = $("gantt-canvas");
    if (models.length) {
      var fig = figureOf(models, st, width);
      var drawn = D.figure(D.canvasPainter(canvas, width, D.figureHeight(fig)), fig);
      current = { fig: fig, drawn: drawn };
      $("legend").innerHTML = D.legendHtml(drawn);
    } else {
      D.canvasPainter(canvas, width, 1);
      current = null;
      $("legend").innerHTML = "";
    }
    var text = models.map(function (m) {
      return m.name + " with P = " + st.P + " ranks and M = " + m.M + " micro-batches: step time " + num(m.lay.T) +
        ", bubble " + pct(m.lay.bubble) + ", idle rank-time " + num(m.lay.bubble * m.lay.T * st.P) +
        (st.view === "step" ? ", peak activations per rank " + peaksOf(m, st).join(", ") +
          (st.fixed ? " (share of the batch)" : " (micro-batches of data)") : "");
    }).join(". ");
    canvas.setAttribute("aria-label", "pipeline timeline: " + (text || "nothing to draw"));
    $("chart-summary").textContent = text ? text + "." : "";
    // One source of truth: where Python embedded this configuration, the replay must agree.
    var bad = models.filter(function (m) {
      return m.python && m.python.T !== null && (Math.abs(m.lay.T - m.python.T) > 1e-9 * Math.max(1, m.python.T) ||
        Math.abs(m.lay.bubble - bubbleValue(m.python.bubble)) > 1e-9);
    });
    $("check").hidden = !bad.length;
    $("check").textContent = bad.length ? "The drawn timeline of " + bad[0].name + " (step " + bad[0].lay.T +
      ") disagrees with the Python engine (step " + bad[0].python.T + "); please report this." : "";
    curve(st, m0);
    if (api.onExplorer) api.onExplorer(st);
    void canvas.offsetHeight;  // force layout so the timing includes it
    api.lastRedrawMs = performance.now() - t0;
    $("redraw-ms").textContent = api.lastRedrawMs.toFixed(1) + " ms";
  }

  function redraw() {
    var t0 = performance.now(), st = state();
    $("P-out").textContent = st.P;
    $("M-out").textContent = st.M;
    ["cost-I", "cost-W"].forEach(function (id) { $(id).disabled = st.view === "fwd"; });
    $("cost-B").textContent = st.view === "fwd" ? "(forward only: F and links)" : "B = I + W";
    if (history.replaceState) history.replaceState(null, "", toHash());
    var names = [st.schedule].concat(st.compare ? [st.compare] : []);
    if (DATA.mode === "serve") {
      var ticket = ++served;
      return Promise.all(names.map(function (n) { return servedOrder(n, st, ticket); })).then(function (os) {
        if (ticket === served) show(os, st, t0);
      }, function (err) { show([{ refused: "server: " + err.message }], st, t0); });
    }
    show(names.map(function (n) { return orderOf(n, st.P, st.M); }), st, t0);
    return Promise.resolve();
  }

  // ---- downloads ------------------------------------------------------------------------
  function save(blob, name) {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  function fileStem() { var st = state(); return "conveyor-" + st.schedule + (st.compare ? "-vs-" + st.compare : "") + "-P" + st.P + "-M" + st.M; }
  api.svgText = function () {
    if (!current) return null;
    var p = D.svgPainter(current.fig.width, D.figureHeight(current.fig), $("gantt-canvas").getAttribute("aria-label"));
    D.figure(p, current.fig);
    return p.finish();
  };

  function init(data) {
    DATA = data;
    DATA.schedules.forEach(function (sc) { schedByName[sc.name] = sc; });
    DATA.schedules.forEach(function (sc) {
      [ctl.schedule, ctl.compare].forEach(function (sel) {
        var o = document.createElement("option");
        o.value = o.textContent = sc.name;
        sel.appendChild(o);
      });
    });
    ctl.P.max = DATA.P_max;
    ctl.M.max = DATA.M_max;
    var ini = DATA.initial || {};
    ctl.schedule.value = schedByName[ini.schedule] ? ini.schedule : DATA.schedules[0].name;
    ctl.P.value = Math.min(ini.P || 4, DATA.P_max);
    ctl.M.value = Math.min(ini.M || 8, DATA.M_max);
    var ratio = ini.ratio === undefined ? 2 : ini.ratio;
    $("cost-I").value = ratio / 2;
    $("cost-W").value = ratio - ratio / 2;
    (ini.view === "step" ? $("view-step") : $("view-fwd")).checked = true;
    if (location.hash.length > 1) fromHash(location.hash);
    $("source-note").textContent = DATA.mode === "serve" ? "orders from the Python server, replayed in the page"
      : "orders and metrics embedded by conveyor viz, replayed in the page";
    $("controls").addEventListener("input", redraw);
    window.addEventListener("hashchange", function () { fromHash(location.hash); redraw(); });
    $("gantt").addEventListener("keydown", function (ev) {
      var step = { ArrowRight: ["M", 1], ArrowLeft: ["M", -1], ArrowUp: ["P", 1], ArrowDown: ["P", -1] }[ev.key];
      if (!step) return;
      ev.preventDefault();
      var el = ctl[step[0]];
      el.value = Math.max(+el.min, Math.min(+el.max, +el.value + step[1]));
      redraw();
    });
    $("download-svg").addEventListener("click", function () {
      save(new Blob([api.svgText()], { type: "image/svg+xml" }), fileStem() + ".svg");
    });
    $("download-png").addEventListener("click", function () {
      $("gantt-canvas").toBlob(function (b) { save(b, fileStem() + ".png"); }, "image/png");
    });
    var pending = 0;
    window.addEventListener("resize", function () {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(function () { redraw(); if (api.redrawMeasured) api.redrawMeasured(); });
    });
    if (DATA.measured || DATA.sweep) ConveyorMeasured.init(DATA, api);
    return redraw();
  }

  // ---- hooks for tests and benchmarks ----------------------------------------------
  api.state = state;
  api.redraw = redraw;
  api.hash = toHash;
  // st: {schedule, compare, P, M, view, ratio (F = 1, B = ratio) or costs {F, I, W, lat, bytes, bw} as typed, fixed}
  api.set = function (st) {
    if (st.schedule !== undefined) ctl.schedule.value = st.schedule;
    if (st.compare !== undefined) ctl.compare.value = st.compare;
    if (st.P !== undefined) ctl.P.value = st.P;
    if (st.M !== undefined) ctl.M.value = st.M;
    if (st.view !== undefined) $(st.view === "step" ? "view-step" : "view-fwd").checked = true;
    if (st.ratio !== undefined) {
      $("cost-F").value = 1; $("cost-I").value = st.ratio / 2; $("cost-W").value = st.ratio - st.ratio / 2;
      $("cost-lat").value = 0; $("cost-bytes").value = 0; $("cost-bw").value = "inf";
      Object.keys(DP_DEFAULTS).forEach(function (k) { $(COST_FIELDS[k]).value = DP_DEFAULTS[k]; });
    }
    if (st.costs) Object.keys(st.costs).forEach(function (k) { $(COST_FIELDS[k]).value = st.costs[k]; });
    if (st.fixed !== undefined) $("fixed").checked = st.fixed;
    return redraw();
  };
  // The page's own timeline of the shown schedule: [rank, "2F5", start, end] per action.
  api.timeline = function (st) {
    if (st) api.set(st);
    var m = api.models[0];
    return m ? m.events.filter(function (e) { return e.k < 5; })
      .map(function (e) { return [e.r, e.s + KINDS[e.k] + e.mb, e.start, e.end]; }) : null;
  };
  // Its data-parallel all-reduces: [rank, stage, start, end, ready], as Timeline.collectives.
  api.collectives = function () {
    var m = api.models[0];
    return m ? m.events.filter(function (e) { return e.k === 5; })
      .map(function (e) { return [e.r, e.s, e.start, e.end, e.ready]; }) : null;
  };
  // Replay every embedded configuration and compare step time and bubble with Python's.
  api.selfCheck = function () {
    var bad = [], count = 0;
    DATA.schedules.forEach(function (sc) {
      for (var P = 1; P <= DATA.P_max; P++) for (var M = 1; M <= DATA.M_max; M++) {
        var o = orderOf(sc.name, P, M);
        if (o.refused) continue;
        var views = [["fwd", 2]].concat(DATA.ratios.map(function (x) { return ["step", x]; }));
        views.forEach(function (vw) {
          var costs = { f: [1], i: [vw[1] / 2], w: [vw[1] - vw[1] / 2], latency: 0, bandwidth: Infinity, bytes: [0], dp: 1, rpn: 0 };
          var st = { schedule: sc.name, P: P, M: o.M, view: vw[0], costs: costs, fixed: false };
          var m = model(sc.name, st, o);
          count++;
          if (m.lay.T !== m.python.T || Math.abs(m.lay.bubble - bubbleValue(m.python.bubble)) > 1e-9) {
            bad.push([sc.name, P, M, vw, m.lay.T, m.python.T]);
          }
        });
      }
    });
    return { checked: count, mismatches: bad.slice(0, 20), n_bad: bad.length };
  };
  api.ready = loadData().then(init);
}());
