/* conveyor explorer: controls, state and the main chart. It draws what
 * conveyor's Python engine produced; nothing here knows any schedule.
 * Embedded mode: the page holds every rank's action order and Python's metrics
 * at B = 2F for M = powers of two; replay.js replays the order under any
 * costs the user types (costs.js gives each stage its share of the model).
 * zb-auto, whose order depends on the costs, is re-solved here for the typed
 * costs (solver.js). A browser test checks the replay equals Python's
 * simulate(), the solver Python's zb_auto, and selfCheck() compares every
 * embedded step time with Python's. Served mode (conveyor viz --serve): Python
 * sends the order on request. The whole state lives in the URL hash. */
(function () {
  "use strict";
  var KINDS = "FBIW", R = ConveyorReplay, D = ConveyorDraw, C = ConveyorCharts, K = ConveyorCosts;
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
  var decoded = new Map();  // recently decoded or solved orders, bounded
  function remember(id, value) {
    decoded.set(id, value);
    if (decoded.size > 96) decoded.delete(decoded.keys().next().value);
    return value;
  }

  // ---- costs ------------------------------------------------------------------
  var COST_FIELDS = { unit: "cost-unit", F: "cost-F", I: "cost-I", W: "cost-W", lat: "cost-lat", bytes: "cost-bytes",
    bw: "cost-bw", mem: "cost-mem", dp: "cost-dp", rpn: "cost-rpn", ilat: "cost-ilat", ibw: "cost-ibw",
    pb: "cost-pbytes", ar: "cost-ar" };
  // fields left out of the URL while they hold these defaults
  var DEFAULTS = { unit: "model", mem: "0", dp: "1", rpn: "0", ilat: "0", ibw: "inf", pb: "0", ar: "overlap" };
  function readCosts() {
    var p = K.parseList, err = K.CostError;
    var c = { unit: $("cost-unit").value, f: p($("cost-F").value, "F", "cost-F"), i: p($("cost-I").value, "I", "cost-I"),
      w: p($("cost-W").value, "W", "cost-W"), bytes: p($("cost-bytes").value, "activation bytes", "cost-bytes") };
    c.latency = p($("cost-lat").value, "link latency", "cost-lat")[0];
    c.bandwidth = p($("cost-bw").value, "bandwidth", "cost-bw", true)[0];
    if (!(c.bandwidth > 0)) throw new err("bandwidth must be > 0 (inf: free links)", "cost-bw");
    c.mem = p($("cost-mem").value, "activations held", "cost-mem")[0];
    // data parallelism (conveyor.sim.dp): replicas, ranks per node, links between nodes
    c.dp = p($("cost-dp").value, "dp", "cost-dp")[0];
    c.rpn = p($("cost-rpn").value, "ranks per node", "cost-rpn")[0];
    if (!(c.dp >= 1 && c.dp <= 1024 && c.dp % 1 === 0)) throw new err("dp must be a whole number from 1 to 1024", "cost-dp");
    if (c.rpn % 1 !== 0) throw new err("ranks per node must be a whole number (0: one node)", "cost-rpn");
    c.ilat = p($("cost-ilat").value, "inter-node latency", "cost-ilat")[0];
    c.ibw = p($("cost-ibw").value, "inter-node bandwidth", "cost-ibw", true)[0];
    if (!(c.ibw > 0)) throw new err("inter-node bandwidth must be > 0 (inf: free)", "cost-ibw");
    c.pbytes = p($("cost-pbytes").value, "parameter bytes", "cost-pbytes");
    c.overlap = $("cost-ar").value !== "after";
    c.key = Object.keys(COST_FIELDS).map(function (k) { return $(COST_FIELDS[k]).value.replace(/\s+/g, ""); }).join("|");
    return c;
  }
  function markField(field) {
    Object.keys(COST_FIELDS).forEach(function (k) {
      var el = $(COST_FIELDS[k]), bad = COST_FIELDS[k] === field;
      el.classList.toggle("invalid", bad);
      if (bad) el.setAttribute("aria-invalid", "true"); else el.removeAttribute("aria-invalid");
    });
  }
  // The B/F ratio of a resolved cost table, when it is the simple kind Python
  // embedded (F = 1, I = W = ratio/2 on every stage, free links, one replica).
  function simpleRatio(table, c, scale) {
    if (scale !== 1 || c.dp > 1 || c.rpn > 0 || table.link.some(function (x) { return x !== 0; })) return -1;
    var f = table.dur[0], i = table.dur[2], w = table.dur[3], ratio = i[0] + w[0];
    for (var s = 0; s < f.length; s++) {
      if (f[s] !== 1 || i[s] !== ratio / 2 || w[s] !== ratio - ratio / 2) return -1;
    }
    return DATA.ratios.indexOf(ratio);
  }

  // ---- orders -------------------------------------------------------------------
  function record(name, P, M) { return schedByName[name].configs[P - 1][M - 1]; }
  function identity(P) { return Array.from({ length: P }, function (_, r) { return r; }); }

  // passing: decoded for the curve, not kept (it would push the chart's orders out)
  function orderOf(name, st, M, passing) {
    var P = st.P, sc = schedByName[name];
    if (sc.solver) return solvedOrder(name, st, M, passing);
    var rec = record(name, P, M), id = name + "|" + P + "|" + M;
    if (rec.err) return { refused: rec.err };
    var placement = rec.pl || identity(P), rows = decoded.get(id);
    if (!rows) {
      var byRank = R.stagesByRank(placement, P);
      rows = rec.o.map(function (code, r) { return R.decodeRow(code, byRank[r], DATA.alphabet); });
      if (!passing) remember(id, rows);
    }
    // The micro-batches the order really runs (naive: 1 whatever M is asked);
    // records are shared between M values that give the same order.
    var runs = 0;
    rows.forEach(function (row) { row.forEach(function (x) { if (x.mb + 1 > runs) runs = x.mb + 1; }); });
    return { rows: rows, placement: placement, M: runs || M, rec: rec };
  }

  // zb-auto: the order solved for the typed costs (solver.js), one stage per rank.
  function solvedOrder(name, st, M, passing) {
    var P = st.P, id = name + "|" + P + "|" + M + "|" + st.costs.key + "|" + (st.fixed ? "x" : "");
    var hit = decoded.get(id);
    if (hit) return hit;
    var c = K.forSchedule(st.costs, P, P), scale = st.fixed ? 1 / M : 1;
    var best = ConveyorSolver.zbAuto(P, M, R.costTable(c, P, scale));
    var out = { rows: best.rows, placement: best.placement, M: M, rec: null, candidate: best.candidate };
    return passing ? out : remember(id, out);
  }

  // One schedule under the state's costs: events, layout, memory, metrics.
  // Throws a CostError when the typed costs do not fit its stages.
  function model(name, st, order, light) {
    if (order.refused) return order;
    var fwd = st.view === "fwd", rows = order.rows;
    if (fwd) rows = rows.map(function (row) { return row.filter(function (x) { return x.k === 0; }); });
    // The same global batch: a schedule that runs fewer micro-batches (naive: one)
    // gets proportionally bigger ones; with a fixed batch each costs 1/M of it.
    var scale = st.fixed ? 1 / order.M : st.M / order.M;
    var S = order.placement.length, c = K.forSchedule(st.costs, S, st.P, schedByName[name].rounds),
      table = R.costTable(c, S, scale);
    if (st.costs.rpn > 0) table.link = R.nodeLinks(st.costs, order.placement, table.bytes);
    var events = R.replay(rows, order.placement, table);
    // Replicas are identical: one is replayed and each rank's all-reduces added.
    if (!fwd && st.costs.dp > 1) events = R.allreduce(events, order.placement, c).concat(events);
    var m = { name: name, P: st.P, S: S, M: order.M, placement: order.placement, events: events,
      scale: scale, table: table, costs: c, candidate: order.candidate };
    m.lay = R.layout(m);
    if (light) return m;
    var weight = c.weight.map(function (x) { return x * (st.fixed ? 1 / order.M : st.M / order.M); });
    m.memory = R.memory(events, st.P, fwd, weight);
    m.exact = R.exactBubble(events, st.P, m.lay.T);
    var rec = order.rec, ri = simpleRatio(table, st.costs, scale);
    if (rec) {
      var py = fwd ? rec.fw : ri >= 0 && rec.r ? rec.r[ri] : null;
      if (fwd && (table.dur[0].some(function (x) { return x !== 1; }) || table.link.some(function (x) { return x; }))) py = null;
      m.python = { T: py ? py[0] : null, bubble: py ? py[1] : null, formula: rec.fb };
    }
    return m;
  }

  var served = 0;
  function servedOrder(name, st, ticket) {
    if (schedByName[name].solver) return Promise.resolve(solvedOrder(name, st, st.M));
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
        return { rows: rows, placement: body.placement, M: body.M, rec: { fb: body.python.formula } };
      });
    });
  }

  // ---- state and the URL hash ----------------------------------------------------
  var ctl = { schedule: $("schedule"), compare: $("compare"), P: $("P"), M: $("M") };
  var lastCosts = null;

  function state() {
    var costs, error = null;
    try { costs = readCosts(); lastCosts = costs; markField(null); }
    catch (e) {
      if (!(e instanceof K.CostError)) throw e;
      error = e; markField(e.field); costs = lastCosts;
    }
    costs = costs || { unit: "model", f: [1], i: [1], w: [1], latency: 0, bandwidth: Infinity, bytes: [0], mem: 0,
      dp: 1, rpn: 0, pbytes: [0], key: "default" };
    return { schedule: ctl.schedule.value, compare: ctl.compare.value, P: +ctl.P.value, M: +ctl.M.value,
      view: $("view-step").checked ? "step" : "fwd", costs: costs, costError: error, fixed: $("fixed").checked,
      memory: $("memory").checked, critical: $("critical").checked };
  }
  function toHash() {
    var q = ["s=" + encodeURIComponent(ctl.schedule.value), "P=" + ctl.P.value, "M=" + ctl.M.value,
      "v=" + ($("view-step").checked ? "step" : "fwd")];
    if (ctl.compare.value) q.push("c=" + encodeURIComponent(ctl.compare.value));
    Object.keys(COST_FIELDS).forEach(function (k) {
      var value = $(COST_FIELDS[k]).value.replace(/\s+/g, "");
      if (DEFAULTS[k] !== value) q.push(k + "=" + encodeURIComponent(value));
    });
    if ($("fixed").checked) q.push("fix=1");
    if (!$("memory").checked) q.push("mem=0");
    if ($("critical").checked) q.push("cp=1");
    return "#" + q.join("&");
  }
  function fromHash(hash) {
    var q = {};
    hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) q[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1));
    });
    // The hash is the whole state: what toHash leaves out is at its default.
    if (schedByName[q.s]) ctl.schedule.value = q.s;
    ctl.compare.value = schedByName[q.c] ? q.c : "";
    Object.keys(DEFAULTS).forEach(function (k) { if (q[k] === undefined) $(COST_FIELDS[k]).value = DEFAULTS[k]; });
    if (+q.P >= 1 && +q.P <= DATA.P_max) ctl.P.value = q.P;
    if (+q.M >= 1 && +q.M <= DATA.M_max) ctl.M.value = q.M;
    if (q.v === "step" || q.v === "fwd") $(q.v === "step" ? "view-step" : "view-fwd").checked = true;
    Object.keys(COST_FIELDS).forEach(function (k) { if (q[k] !== undefined) $(COST_FIELDS[k]).value = q[k]; });
    $("fixed").checked = q.fix === "1";
    $("memory").checked = q.mem !== "0";
    $("critical").checked = q.cp === "1";
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
  // The simulated bubble: the exact fraction where the costs are small binary
  // fractions (the page's own, equal to Python's where Python embedded it).
  function simBubble(m) {
    return m.exact ? bubbleText(m.exact[0] + "/" + m.exact[1]) : pct(m.lay.bubble);
  }
  function bytesText(x) {
    var u = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (x >= 1000 && i < u.length - 1) { x /= 1000; i++; }
    return num(x.toPrecision(4)) + " " + u[i];
  }

  function infoHtml(sc) {
    var skip = { name: 1, configs: 1, summary: 1, solver: 1 };
    var extra = Object.keys(sc).filter(function (k) {
      var v = sc[k];
      return !skip[k] && v !== null && v !== "" && !(typeof v === "object" && !Object.keys(v).length);
    });
    return "<b>" + esc(sc.name) + "</b>: " + esc(sc.summary || "") + (sc.solver ? " · <span class=\"k\">solved in this " +
      "page for the costs typed</span>" : "") + (extra.length ? " · " + extra.map(function (k) {
      var v = sc[k];
      if (typeof v === "object") v = Array.isArray(v) ? v.join(", ") : Object.keys(v).map(function (x) { return x + " " + v[x]; }).join(", ");
      return '<span class="k">' + esc(k.replace(/_/g, " ")) + "</span> " + esc(v);
    }).join(" · ") : "");
  }
  // what a list of per-stage values reads as: "0.5 ×8" or "1, 2, 1, 1"
  function listText(xs) {
    return xs.every(function (x) { return x === xs[0]; }) ? num(xs[0]) + " ×" + xs.length : xs.map(num).join(", ");
  }

  function peaksOf(m) { return m.memory.map(function (x) { return num(x.peak); }); }

  function statsRow(m, st) {
    var fixedNote = m.M !== st.M ? " (fixed: the whole batch at once)" : "", rounds = schedByName[m.name].rounds;
    if (rounds) fixedNote = " lanes · " + num(m.M * rounds / m.lay.T) + " tokens per time unit";
    var peaks = peaksOf(m), mem = st.costs.mem;
    return "<tr><th scope=\"row\">" + esc(m.name) + "</th><td>" + m.M + fixedNote + "</td><td class=\"b\">" +
      simBubble(m) + "</td><td>" + (m.python ? bubbleText(m.python.formula) : m.candidate ? "solved: " + esc(m.candidate) : "") +
      "</td><td>" + num(m.lay.T) + "</td><td>" + num(m.lay.T / (st.fixed ? 1 : st.M)) + "</td><td>" +
      (st.view === "fwd" ? "none (forward only)" : peaks.join(" · ") + (mem ? " (max " +
        bytesText(Math.max.apply(null, peaks) * mem) + ")" : "")) + "</td><td>F " + listText(m.costs.f) +
      (st.view === "step" ? "; I " + listText(m.costs.i) + "; W " + listText(m.costs.w) : "") + "</td></tr>";
  }

  // ---- the explorer -------------------------------------------------------------------
  var api = window.conveyor = { lastRedrawMs: null, models: [] };
  var current = null;  // the last drawn figure: downloads, clicks, explanations

  function figureOf(models, st, width) {
    var T = 0;
    models.forEach(function (m) { T = Math.max(T, m.lay.T); });
    if (st.fixed) models.forEach(function (m) { T = Math.max(T, fixedAxis(m.name, st)); });
    var unit = st.costs.unit === "stage" ? "F = " + st.costs.f.join(",") + " per stage" :
      st.costs.unit === "layer" ? "per-layer costs" : "F = " + st.costs.f.join(",") + " per P-th of the model";
    return { width: width, T: T, scale: 1, unitLabel: st.fixed ? "one P-th's F on the whole batch = 1" : unit + ", per micro-batch",
      panels: models.map(function (m, i) {
        return { model: m, lay: m.lay, memory: st.memory && st.view === "step" ? m.memory : null,
          highlight: api.highlightFor ? api.highlightFor(m, i, st) : null,
          title: m.name + " · step " + num(m.lay.T) + " · bubble " + simBubble(m) };
      }) };
  }
  // The fixed axis spans the schedule's step at M = 1 (the longest, with a fixed batch).
  function fixedAxis(name, st) {
    var o = orderOf(name, st, 1);
    if (o.refused) return 0;
    return model(name, Object.assign({}, st, { M: 1 }), o, true).lay.T;
  }

  var legendKeys = null, curveWidth = 300, shownHtml = {};
  // innerHTML only when it changes: parsing it again costs as much as drawing
  function setHtml(id, html) {
    if (shownHtml[id] !== html) { shownHtml[id] = html; $(id).innerHTML = html; }
  }
  function show(orders, st, t0) {
    var models = [], refusedText = [], costError = st.costError, failed = false;
    for (var i = 0; i < orders.length && !failed; i++) {
      var o = orders[i], name = i ? st.compare : st.schedule;
      if (!o) continue;
      if (o.refused) { refusedText.push(name + ": " + o.refused); continue; }
      try {
        if (o.costError) throw o.costError;
        models.push(model(name, st, o));
      } catch (e) {  // costs whose count does not fit this schedule's stages
        if (!(e instanceof K.CostError)) throw e;
        costError = e;
        failed = true;
        markField(e.field);
        if (e.message.indexOf(name + ": ") !== 0) e.message = name + ": " + e.message;
      }
    }
    $("cost-error").hidden = !costError;
    if (costError) {
      $("cost-error").textContent = costError.message + (current ? "; the chart keeps the last valid costs" : "");
      if (failed && current) return finish(st, t0);  // keep the last valid chart
    }
    api.models = models;
    // Sizes are read before anything on the page changes (one layout, not several).
    var width = Math.max(300, Math.floor($("gantt").clientWidth || 900)), canvas = $("gantt-canvas");
    curveWidth = $("curve-canvas").parentNode.clientWidth || 300;
    var sc = schedByName[st.schedule];
    setHtml("summary", [sc].concat(st.compare ? [schedByName[st.compare]] : []).map(function (s) {
      return "<p>" + infoHtml(s) + "</p>"; }).join("") + refusedText.map(function (t) {
      return '<p class="refused">' + esc(t) + "</p>"; }).join(""));
    var m0 = models[0] && models[0].name === st.schedule ? models[0] : null;
    $("M-out").textContent = m0 && m0.M !== st.M ? "1 (fixed: " + st.schedule + " runs the batch as one)" : st.M;
    setHtml("stats", '<tr><th scope="col">schedule</th><th scope="col">M run</th><th scope="col">bubble (simulated)</th>' +
      '<th scope="col">bubble (formula)</th><th scope="col">step time</th><th scope="col">' +
      (st.fixed ? "step time (whole batch)" : "step time per micro-batch of data (÷ M)") +
      '</th><th scope="col">peak activations per rank (micro-batch-equivalents' + (st.costs.mem ? ", bytes" : "") +
      ')</th><th scope="col">costs per stage</th></tr>' + models.map(function (m) { return statsRow(m, st); }).join(""));
    if (api.onModels) api.onModels(models, st);
    if (models.length) {
      var fig = figureOf(models, st, width);
      var drawn = C.figure(D.canvasPainter(canvas, width, C.figureHeight(fig)), fig);
      current = C.drawnFigure(fig, drawn, { st: st });
      var keys = Object.keys(drawn.drawn).sort().join();
      if (keys !== legendKeys) { legendKeys = keys; $("legend").innerHTML = D.legendHtml(drawn.drawn); }
    } else {
      D.canvasPainter(canvas, width, 1);
      current = null;
      legendKeys = "";
      $("legend").innerHTML = "";
    }
    var text = models.map(function (m) {
      return m.name + " with P = " + st.P + " ranks and M = " + m.M + " micro-batches: step time " + num(m.lay.T) +
        ", bubble " + pct(m.lay.bubble) + ", idle rank-time " + num(m.lay.bubble * m.lay.T * st.P) +
        (st.view === "step" ? ", peak activations per rank " + peaksOf(m).join(", ") + " (micro-batch-equivalents)" : "");
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
    curve(st, models);
    if (api.onExplorer) api.onExplorer(st);
    return finish(st, t0);
  }
  function finish(st, t0) {
    void $("gantt-canvas").offsetHeight;  // force layout so the timing includes it
    api.lastRedrawMs = performance.now() - t0;
    $("redraw-ms").textContent = api.lastRedrawMs.toFixed(1) + " ms";
  }

  // ---- bubble against M (curve.js), for every schedule shown
  var bubbleCurve = null;
  function curve(st, models) { bubbleCurve.show(st, models); }

  var hashTimer = 0, lastRedrawAt = 0;
  function writeHash() {
    clearTimeout(hashTimer);
    if (history.replaceState) history.replaceState(null, "", toHash());
  }
  function redraw() {
    var t0 = lastRedrawAt = performance.now(), st = state();
    $("P-out").textContent = st.P;
    $("M-out").textContent = st.M;
    ["cost-I", "cost-W"].forEach(function (id) { $(id).disabled = st.view === "fwd"; });
    $("cost-B").textContent = st.view === "fwd" ? "(forward only: F and links)" : "B = I + W";
    $("cost-hint").textContent = { model: "one value, or one per P-th of the model in depth order (1,1,2,1 at P = 4); " +
      "a schedule with v chunks per rank gives each chunk 1/v of its P-th", layer: "one value per layer (L values, L a " +
      "multiple of every schedule's stages); each stage sums its layers", stage: "one value, or one per stage of each " +
      "schedule: a V schedule's 2P stages then model a model twice as big" }[st.costs.unit] || "";
    // The address bar follows the state, at most a few times a second: writing
    // it costs as much as a redraw.
    clearTimeout(hashTimer);
    hashTimer = setTimeout(writeHash, 150);
    var names = [st.schedule].concat(st.compare ? [st.compare] : []);
    if (DATA.mode === "serve") {
      var ticket = ++served;
      return Promise.all(names.map(function (n) { return servedOrder(n, st, ticket); })).then(function (os) {
        if (ticket === served) show(os, st, t0);
      }, function (err) { show([{ refused: "server: " + err.message }], st, t0); });
    }
    show(names.map(function (n) {
      try { return orderOf(n, st, st.M); }
      catch (e) { if (e instanceof K.CostError) return { costError: e }; throw e; }
    }), st, t0);
    return Promise.resolve();
  }

  // ---- downloads: the chart, its legend and the curve, on white ----------------------
  function save(blob, name) {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  function fileStem() { var st = state(); return "conveyor-" + st.schedule + (st.compare ? "-vs-" + st.compare : "") + "-P" + st.P + "-M" + st.M; }
  function exportSpec() {
    return { fig: current.fig, legend: D.legendItems(current.drawn),
      curve: bubbleCurve.complete(Math.min(420, current.fig.width)) };
  }
  api.svgText = function () {
    if (!current) return null;
    var ex = exportSpec(), probe = D.svgPainter(1, 1, ""), lay = C.exportLayout(probe, ex);
    var p = D.svgPainter(ex.fig.width, lay.height, $("gantt-canvas").getAttribute("aria-label"));
    C.exportFigure(p, ex, lay);
    return p.finish();
  };
  api.pngCanvas = function () {
    if (!current) return null;
    var ex = exportSpec(), canvas = document.createElement("canvas"), dpr = window.devicePixelRatio || 1;
    var lay = C.exportLayout(D.canvasPainter(canvas, 1, 1, dpr), ex);
    C.exportFigure(D.canvasPainter(canvas, ex.fig.width, lay.height, dpr), ex, lay);
    return canvas;
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
      : "orders and metrics embedded by conveyor viz, replayed in the page; zb-auto solved in the page";
    $("controls").addEventListener("input", redraw);
    $("cost-controls").addEventListener("input", redraw);
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
      api.pngCanvas().toBlob(function (b) { save(b, fileStem() + ".png"); }, "image/png");
    });
    var pending = 0;
    window.addEventListener("resize", function () {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(function () { redraw(); if (api.redrawMeasured) api.redrawMeasured(); });
    });
    bubbleCurve = ConveyorCurve.create({ data: DATA, spec: function (n) { return schedByName[n]; }, orderOf: orderOf,
      model: model, api: api, canvas: $("curve-canvas"), width: function () { return curveWidth; },
      lastRedrawAt: function () { return lastRedrawAt; } });
    if (window.ConveyorExplain) ConveyorExplain.init(api);
    if (DATA.measured || DATA.sweep || DATA.steps) ConveyorMeasured.init(DATA, api);
    return redraw();
  }

  // ---- for the other scripts (explain.js, measured.js) and hooks.js ------------------
  api.state = state;
  api.redraw = redraw;
  api.hash = toHash;
  api.current = function () { return current; };
  api.num = num;
  // the inside, for hooks.js (the tests' and benchmark's entry points)
  api.inner = { ctl: ctl, fields: COST_FIELDS, defaults: DEFAULTS, writeHash: writeHash, orderOf: orderOf,
    model: model, record: record, bubbleValue: bubbleValue, data: function () { return DATA; },
    spec: function (name) { return schedByName[name]; } };
  api.ready = loadData().then(init);
}());
