/* conveyor explorer: controls and drawing. It draws what conveyor's Python engine
 * produced; nothing here knows any schedule. Embedded mode: the page holds every
 * rank's action order and Python's metrics; replay.js decodes the order and
 * replays it under the chosen costs to place the cells. A browser test checks
 * those times equal Python's simulate(), and selfCheck() compares every step
 * time with Python's. Served mode (conveyor viz --serve): Python simulates on
 * request and the page only draws. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("conveyor-data").textContent);
  var KINDS = "FBIW";
  var $ = function (id) { return document.getElementById(id); };
  var R = ConveyorReplay, stagesByRank = R.stagesByRank, layout = R.layout;

  // ---- models: what one Gantt needs ----------------------------------------
  var schedByName = {};
  DATA.schedules.forEach(function (sc) { schedByName[sc.name] = sc; });
  // Decoded orders of recently shown configurations (schedule|P|M), oldest first;
  // bounded so that sweeping every configuration does not keep them all.
  var decoded = new Map();

  function record(st) { return schedByName[st.schedule].configs[st.P - 1][st.M - 1]; }

  function embeddedModel(st) {
    var rec = record(st), id = st.schedule + "|" + st.P + "|" + st.M;
    if (rec.err) return { refused: rec.err };
    var placement = rec.pl || Array.from({ length: st.P }, function (_, r) { return r; });
    var rows = decoded.get(id);
    if (!rows) {
      var byRank = stagesByRank(placement, st.P);
      rows = rec.o.map(function (code, r) { return R.decodeRow(code, byRank[r], DATA.alphabet); });
      decoded.set(id, rows);
      if (decoded.size > 64) decoded.delete(decoded.keys().next().value);
    }
    var fwd = st.view === "fwd";
    // the forward-only view is Schedule.without_backward(): the F actions, same order
    if (fwd) rows = rows.map(function (row) { return row.filter(function (x) { return x.k === 0; }); });
    var ratio = DATA.ratios[st.ratio];
    var events = R.replay(rows, placement, R.slotCosts(ratio, placement.length));
    var py = fwd ? rec.fw : rec.r[st.ratio];
    return {
      P: st.P, S: placement.length, M: rec.M || st.M, placement: placement, events: events,
      unit: "slot", slot: 1, python: { T: py[0], bubble: py[1], formula: rec.fb,
        peaks: fwd ? null : rec.pk, rankPeaks: fwd ? null : (rec.pr || null) }
    };
  }

  function parseEvents(list) {
    var out = [];
    list.forEach(function (ev) {
      var m = /^(\d+)([A-Z_]+)(\d+)$/.exec(ev[1]);
      var k = m ? KINDS.indexOf(m[2]) : -1;
      if (k >= 0) out.push({ r: ev[0], s: +m[1], k: k, mb: +m[3], start: ev[2], end: ev[3] });
    });
    return out;
  }

  var served = 0;
  function servedModel(st) {
    var ticket = ++served;
    var q = "schedule=" + encodeURIComponent(st.schedule) + "&P=" + st.P + "&M=" + st.M +
      "&view=" + st.view + "&ratio=" + DATA.ratios[st.ratio];
    return fetch("api/timeline?" + q).then(function (res) {
      return res.json().then(function (body) {
        if (!res.ok) throw new Error(body.error || res.statusText);
        if (ticket !== served) return null;  // a newer request superseded this one
        return { P: body.P, S: body.S, M: body.M, placement: body.placement, unit: "slot",
          slot: 1, events: parseEvents(body.events), python: body.python };
      });
    });
  }

  // ---- drawing --------------------------------------------------------------
  function hue(mb) { return (mb * 137.508) % 360; }
  function strong(mb) { return "hsl(" + hue(mb).toFixed(1) + ",62%,47%)"; }
  function tint(mb) { return "hsl(" + hue(mb).toFixed(1) + ",62%,86%)"; }
  var nSvg = 0;

  function niceStep(span, target) {
    var raw = span / target, p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= raw) return steps[i] * p;
    return 10 * p;
  }

  // opts: width, T (time span to fit, >= model's), scale (display factor), unitLabel,
  // slot (draw the bubble as one cell per slot) or not (one shaded rect per gap)
  function gantt(model, lay, opts) {
    var P = model.P, S = model.S, v = S / P, byRank = stagesByRank(model.placement, P);
    var left = v > 1 ? 112 : 72, right = 10, top = 4, axis = 24;
    var rowH = P <= 8 ? 30 : Math.max(13, Math.floor(330 / P));
    var W = opts.width, plotW = W - left - right, T = opts.T || 1, sx = plotW / T;
    var H = top + P * rowH + axis, id = "p" + (nSvg++), out = [];
    out.push('<svg xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' + H +
      '" viewBox="0 0 ' + W + " " + H + '"><defs><pattern id="' + id +
      '" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">' +
      '<rect width="5" height="5" fill="#fff"/><rect width="2.2" height="5" fill="#9aa3b2"/></pattern></defs>');
    var step = niceStep(T * opts.scale, 12), x, r;
    for (var tick = 0; tick <= T * opts.scale + 1e-9; tick += step) {
      x = left + (tick / opts.scale) * sx;
      out.push('<line class="grid" x1="' + x + '" x2="' + x + '" y1="' + top + '" y2="' + (top + P * rowH) +
        '"/><text class="tick" x="' + x + '" y="' + (H - 8) + '" text-anchor="middle">' +
        +(tick.toPrecision(6)) + "</text>");
    }
    out.push('<text class="tick" x="6" y="' + (H - 8) + '">time (' + opts.unitLabel + ")</text>");
    for (r = 0; r < P; r++) {
      var y = top + r * rowH + rowH / 2 + 4;
      var label = v > 1 ? "rank " + r + " (s " + byRank[r].join(",") + ")" : "stage " + byRank[r][0];
      out.push('<text class="row" x="6" y="' + y + '">' + label + "</text>");
    }
    var pad = rowH > 16 ? 3 : 1, h = rowH - 2 * pad, idle = 0;
    lay.gaps.forEach(function (g) {
      var y = top + g[0] * rowH + pad, a = g[1] - lay.t0, b = g[2] - lay.t0;
      if (!opts.slot) {
        out.push('<rect class="idle" x="' + (left + a * sx) + '" y="' + y + '" width="' + ((b - a) * sx) +
          '" height="' + h + '"/>');
        return;
      }
      var n = Math.ceil((b - a) / opts.slot - 1e-9);
      for (var c = 0; c < n; c++) {
        var x0 = a + c * opts.slot, x1 = Math.min(b, x0 + opts.slot);
        out.push('<rect class="bubble" x="' + (left + x0 * sx) + '" y="' + y + '" width="' +
          ((x1 - x0) * sx) + '" height="' + h + '"/>');
        idle++;
      }
    });
    model.events.forEach(function (e) {
      var x = left + (e.start - lay.t0) * sx, w = Math.max((e.end - e.start) * sx - 1, 0.5);
      var y = top + e.r * rowH + pad, kind = KINDS[e.k], attrs;
      if (kind === "F") attrs = 'fill="' + strong(e.mb) + '"';
      else if (kind === "W") attrs = 'fill="url(#' + id + ')" stroke="' + strong(e.mb) + '"';
      else attrs = 'fill="' + tint(e.mb) + '" stroke="' + strong(e.mb) + '"' +
        (kind === "I" ? ' stroke-dasharray="3 2"' : "");
      out.push('<rect class="cell ' + kind + '" x="' + x + '" y="' + y + '" width="' + w + '" height="' + h +
        '" ' + attrs + "><title>" + e.s + kind + e.mb + " on rank " + e.r + ": " +
        +(e.start * opts.scale).toPrecision(6) + "–" + +(e.end * opts.scale).toPrecision(6) + " " +
        opts.unitLabel + "</title></rect>");
      if (v > 1) {  // which of the rank's chunks: a band whose darkness grows with the chunk
        var c = byRank[e.r].indexOf(e.s);
        if (c > 0) out.push('<rect x="' + x + '" y="' + y + '" width="' + w + '" height="3" fill="#1d2330" ' +
          'fill-opacity="' + (0.35 + 0.5 * c / (v - 1)).toFixed(2) + '"/>');
      }
      if (w >= 15 && h >= 11) {
        out.push('<text class="lab' + (kind === "F" ? "" : " dark") + '" x="' + (x + w / 2) + '" y="' +
          (y + h / 2 + 3.5) + '">' + e.mb + "</text>");
      }
    });
    out.push("</svg>");
    return { svg: out.join(""), idle: idle };
  }

  function legend() {
    var sw = function (inner) { return '<svg width="22" height="14">' + inner + "</svg>"; };
    var box = function (attrs) { return '<rect x="1" y="1" width="20" height="12" ' + attrs + "/>"; };
    var hatch = '<defs><pattern id="legend-hatch" width="5" height="5" patternUnits="userSpaceOnUse" ' +
      'patternTransform="rotate(45)"><rect width="5" height="5" fill="#fff"/>' +
      '<rect width="2.2" height="5" fill="#9aa3b2"/></pattern></defs>';
    $("legend").innerHTML = [
      sw(box('fill="' + strong(2) + '"')) + "F forward (colour and number: micro-batch)",
      sw(box('fill="' + tint(2) + '" stroke="' + strong(2) + '"')) + "B backward",
      sw(box('fill="' + tint(2) + '" stroke="' + strong(2) + '" stroke-dasharray="3 2"')) +
        "I input-gradient backward",
      sw(hatch + box('fill="url(#legend-hatch)" stroke="' + strong(2) + '"')) + "W weight-gradient backward",
      sw(box('fill="#8a93a3" fill-opacity="0.16" stroke="#8a93a3"')) + "bubble: idle, one cell per slot (F time)",
      sw(box('fill="' + strong(2) + '"') + '<rect x="1" y="1" width="20" height="3" fill="#1d2330" ' +
        'fill-opacity="0.6"/>') + "top band: the rank's later chunk (several stages per rank)"
    ].map(function (x) { return "<span>" + x + "</span>"; }).join("");
  }

  // ---- numbers ---------------------------------------------------------------
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

  // ---- the explorer ------------------------------------------------------------
  var api = window.conveyor = { lastRedrawMs: null, idleCells: null };
  var ctl = { schedule: $("schedule"), P: $("P"), M: $("M"), ratio: $("ratio") };

  function state() {
    return { schedule: ctl.schedule.value, P: +ctl.P.value, M: +ctl.M.value,
      view: $("view-step").checked ? "step" : "fwd", ratio: +ctl.ratio.value };
  }

  function refused(message, t0) {
    // the generator does not build this P and M: say why instead of drawing
    ["bubble-formula", "bubble-sim", "step-time", "idle-slots", "peak"].forEach(function (k) {
      $(k).textContent = "–";
    });
    $("gantt").innerHTML = '<p class="refused">' + message.replace(/&/g, "&amp;").replace(/</g, "&lt;") +
      "</p>";
    $("check").hidden = true;
    api.idleCells = 0;
    api.lastRedrawMs = performance.now() - t0;
  }

  function show(model, st, t0) {
    if (!model) return;
    if (model.refused) return refused(model.refused, t0);
    var lay = layout(model), width = Math.max(640, $("gantt").clientWidth || 1000);
    var g = gantt(model, lay, { width: width, T: lay.T, scale: 1, unitLabel: "slots", slot: model.slot });
    $("gantt").innerHTML = g.svg;
    var py = model.python, sc = schedByName[st.schedule] || { formula: null, summary: "" };
    $("formula-text").textContent = sc.formula ? sc.formula : "";
    $("bubble-formula").textContent = bubbleText(py.formula);
    $("bubble-sim").textContent = bubbleText(py.bubble);
    $("step-time").textContent = num(py.T) + " slots";
    $("idle-slots").textContent = String(g.idle);
    if (!py.peaks) $("peak").textContent = "none: a forward-only pass keeps nothing for a backward";
    else {
      var txt = py.peaks.map(function (n, s) { return "s" + s + ": " + n; }).join(" · ");
      if (py.rankPeaks) txt += " (per rank: " + py.rankPeaks.join(", ") + ")";
      $("peak").textContent = txt;
    }
    var note = model.M !== st.M ? " " + st.schedule + " runs one batch, so M = " + model.M + "." : "";
    $("summary").textContent = (sc.summary || "") + "." + note;
    // One source of truth: the drawn times must agree with Python's numbers.
    var bad = Math.abs(lay.T - py.T) > 1e-9 * Math.max(1, py.T) ||
      Math.abs(lay.bubble - bubbleValue(py.bubble)) > 1e-9;
    $("check").hidden = !bad;
    $("check").textContent = bad ? "The drawn timeline (step " + lay.T + ") disagrees with the Python " +
      "engine (step " + py.T + "); please report this." : "";
    api.idleCells = g.idle;
    void $("gantt").offsetHeight;  // force style and layout so the timing includes them
    api.lastRedrawMs = performance.now() - t0;
    $("redraw-ms").textContent = api.lastRedrawMs.toFixed(1) + " ms";
  }

  function redraw() {
    var t0 = performance.now(), st = state();
    $("P-out").textContent = st.P;
    $("M-out").textContent = st.M;
    $("ratio-out").textContent = "B = " + DATA.ratios[st.ratio] + " × F";
    ctl.ratio.disabled = st.view === "fwd";
    if (DATA.mode === "serve") {
      return servedModel(st).then(function (m) { show(m, st, t0); }, function (err) {
        refused("server: " + err.message, t0);
      });
    }
    show(embeddedModel(st), st, t0);
    return Promise.resolve();
  }

  function init() {
    DATA.schedules.forEach(function (sc) {
      var o = document.createElement("option");
      o.value = o.textContent = sc.name;
      ctl.schedule.appendChild(o);
    });
    ctl.P.max = DATA.P_max;
    ctl.M.max = DATA.M_max;
    ctl.ratio.max = DATA.ratios.length - 1;
    var init = DATA.initial || {};
    ctl.schedule.value = schedByName[init.schedule] ? init.schedule : DATA.schedules[0].name;
    ctl.P.value = Math.min(init.P || 4, DATA.P_max);
    ctl.M.value = Math.min(init.M || 8, DATA.M_max);
    var ri = DATA.ratios.indexOf(init.ratio === undefined ? 2 : init.ratio);
    ctl.ratio.value = ri < 0 ? 0 : ri;
    (init.view === "step" ? $("view-step") : $("view-fwd")).checked = true;
    $("source-note").textContent = DATA.mode === "serve" ? "simulated by the Python server on request"
      : "orders and metrics embedded by conveyor viz, replayed in the page";
    ["schedule", "P", "M", "ratio"].forEach(function (k) { ctl[k].addEventListener("input", redraw); });
    $("view-fwd").addEventListener("change", redraw);
    $("view-step").addEventListener("change", redraw);
    legend();
    if (DATA.measured) showMeasured(DATA.measured);
    window.addEventListener("resize", function () { redraw(); });
    return redraw();
  }

  function showMeasured(ms) {
    $("measured").hidden = false;
    $("measured-title").textContent = "Measured run: " + ms.schedule + ", P = " + ms.P + ", M = " + ms.M +
      " (" + ms.file + ")";
    var scale = ms.unit === "s" ? 1000 : 1, unit = ms.unit === "s" ? "ms" : ms.unit;
    var width = Math.max(640, $("gantt-measured").clientWidth || 1000);
    var parts = [["measured", "gantt-measured", "bubble-measured", "step-measured"],
      ["simulated", "gantt-measured-sim", "bubble-measured-sim", "step-measured-sim"]];
    var T = Math.max(ms.measured.T, ms.simulated.T);  // one time scale so the rows compare
    parts.forEach(function (p) {
      var src = ms[p[0]];
      var model = { P: ms.P, S: ms.S, placement: ms.placement, events: parseEvents(src.events) };
      var lay = layout(model);
      $(p[1]).innerHTML = gantt(model, lay, { width: width, T: T, scale: scale, unitLabel: unit, slot: 0 }).svg;
      $(p[2]).textContent = bubbleText(src.bubble);
      $(p[3]).textContent = num(src.T * scale) + " " + unit;
    });
  }

  // ---- hooks for tests and benchmarks --------------------------------------------
  api.state = state;
  api.redraw = redraw;
  api.set = function (st) {
    if (st.schedule !== undefined) ctl.schedule.value = st.schedule;
    if (st.P !== undefined) ctl.P.value = st.P;
    if (st.M !== undefined) ctl.M.value = st.M;
    if (st.ratio !== undefined) ctl.ratio.value = DATA.ratios.indexOf(st.ratio);
    if (st.view !== undefined) $(st.view === "step" ? "view-step" : "view-fwd").checked = true;
    return redraw();
  };
  // The page's own timeline for a configuration: [rank, "2F5", start, end] per action.
  // st.ratio is a value from DATA.ratios, as in api.set.
  api.timeline = function (st) {
    var ri = DATA.ratios.indexOf(st.ratio);
    if (ri < 0) throw new Error("ratio " + st.ratio + " is not one of " + DATA.ratios);
    st = Object.assign({}, st, { ratio: ri });
    return embeddedModel(st).events.map(function (e) {
      return [e.r, e.s + KINDS[e.k] + e.mb, e.start, e.end];
    });
  };
  // Replay every embedded configuration and compare step time and bubble with Python's.
  api.selfCheck = function () {
    var bad = [], count = 0;
    DATA.schedules.forEach(function (sc) {
      for (var P = 1; P <= DATA.P_max; P++) for (var M = 1; M <= DATA.M_max; M++) {
        var views = [["fwd", 0]];
        for (var i = 0; i < DATA.ratios.length; i++) views.push(["step", i]);
        views.forEach(function (vw) {
          var st = { schedule: sc.name, P: P, M: M, view: vw[0], ratio: vw[1] };
          var m = embeddedModel(st);
          if (m.refused) return;
          var lay = layout(m);
          count++;
          if (lay.T !== m.python.T || Math.abs(lay.bubble - bubbleValue(m.python.bubble)) > 1e-9) {
            bad.push([st, lay.T, m.python.T]);
          }
        });
      }
    });
    return { checked: count, mismatches: bad.slice(0, 20), n_bad: bad.length };
  };
  api.ready = init();
}());
