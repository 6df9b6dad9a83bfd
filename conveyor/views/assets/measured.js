/* conveyor explorer: measured runs. A measured timeline is drawn above its
 * simulation with the measured per-stage costs. Its idle time comes split by
 * Python (conveyor/views/idle.py) into waiting on a peer (the bubble, red)
 * and transfer in flight (blue); the numbers above the chart are those areas.
 * Clicking an idle cell names the message the rank waited for, who sent it
 * and when. Several recorded steps of one run show the spread per rank
 * (median and worst) and name the straggler; a measured M sweep (from
 * `conveyor demo`) is drawn as small multiples, and the explorer's M slider
 * moves through its runs. */
var ConveyorMeasured = (function () {
  "use strict";
  var D = ConveyorDraw, C = ConveyorCharts, R = ConveyorReplay, KINDS = "FBIW";
  var $ = function (id) { return document.getElementById(id); };

  function parseEvents(list) {
    var out = [];
    list.forEach(function (ev) {
      var m = /^(\d+)([A-Z_]+)(\d+)$/.exec(ev[1]);
      if (!m) return;
      var k = KINDS.indexOf(m[2]);
      out.push({ r: ev[0], s: +m[1], k: k >= 0 ? k : 4, kind: m[2], mb: +m[3], start: ev[2], end: ev[3] });
    });
    return out;
  }
  function pct(x) { return (100 * x).toFixed(1) + "%"; }
  function bubbleValue(code) {
    if (typeof code === "number") return code;
    var nd = code.split("/").map(Number);
    return nd[0] / nd[1];
  }
  function modelOf(ms, part) {
    var m = { P: ms.P, S: ms.S, placement: ms.placement, events: parseEvents(ms[part].events) };
    m.lay = R.layout(m);
    m.pieces = ms[part].pieces || null;
    return m;
  }
  function unitOf(ms) { return ms.unit === "s" ? [1000, "ms"] : [1, ms.unit]; }
  function width(el) { return Math.max(300, Math.floor(el.clientWidth || 900)); }
  function t(x, ms) { var u = unitOf(ms); return +(x * u[0]).toPrecision(4) + " " + u[1]; }
  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;"); }

  var shown = null;  // {ms, figure (its cells: .hits), model, pick}
  function drawOne(canvasId, m, title, T, ms, pick) {
    var u = unitOf(ms), canvas = $(canvasId), w = width(canvas.parentNode);
    var fig = { width: w, T: T, scale: u[0], unitLabel: u[1],
      panels: [{ model: m, lay: m.lay, title: title, pieces: m.pieces, highlight: pick ? { pick: pick } : null }] };
    var out = C.figure(D.canvasPainter(canvas, w, C.figureHeight(fig)), fig);
    canvas.setAttribute("aria-label", title);
    return C.drawnFigure(fig, out);
  }

  // The measured run and its simulation. They share a time axis unless their
  // step times differ by more than 3x: then each gets its own scale.
  function drawDetail(ms, pick) {
    var meas = modelOf(ms, "measured"), sim = modelOf(ms, "simulated"), u = unitOf(ms), me = ms.measured;
    var ratio = Math.max(meas.lay.T, sim.lay.T) / Math.max(1e-300, Math.min(meas.lay.T, sim.lay.T));
    var own = ratio > 3;
    $("scale-note").hidden = !own;
    $("scale-note").textContent = own ? "The measured step is " + ratio.toFixed(1) + "× the simulated one, so each " +
      "chart has its own time scale (read the axes)." : "";
    var T = Math.max(meas.lay.T, sim.lay.T);
    var title = "measured: step " + t(me.T, ms) + ", bubble (waiting on a peer) " + pct(me.wait) +
      ", transfer in flight " + pct(me.transfer);
    var a = drawOne("canvas-measured", meas, title, own ? meas.lay.T : T, ms, pick);
    var b = drawOne("canvas-measured-sim", sim, "simulated: step " + t(ms.simulated.T, ms) + ", bubble " +
      pct(bubbleValue(ms.simulated.bubble)), own ? sim.lay.T : T, ms);
    Object.keys(b.drawn).forEach(function (k) { a.drawn[k] = true; });
    $("legend-measured").innerHTML = D.legendHtml(a.drawn);
    $("bubble-measured").textContent = pct(me.wait);
    $("transfer-measured").textContent = pct(me.transfer);
    $("idle-measured").textContent = pct(me.idle);
    $("step-measured").textContent = t(me.T, ms);
    $("bubble-measured-sim").textContent = pct(bubbleValue(ms.simulated.bubble));
    $("step-measured-sim").textContent = t(ms.simulated.T, ms);
    $("measured-head").textContent = "measured (" + ms.file + ")";
    if (ms.note) { $("measured-note").hidden = false; $("measured-note").textContent = "Note: " + ms.note + "."; }
    shown = { ms: ms, figure: a, model: meas, pick: pick };
  }

  // What a measured idle piece [r, t0, t1, kind, message] was: the message the
  // rank waited for, who sent it and when it arrived.
  function explainPiece(ms, piece) {
    var me = ms.measured, r = piece[0], head = "<b>rank " + r + ", " + (piece[3] ? "transfer in flight" :
      "waiting on a peer (bubble)") + " from " + t(piece[1], ms) + " to " + t(piece[2], ms) + "</b> (" +
      t(piece[2] - piece[1], ms) + "): ";
    if (piece[4] < 0) {
      return head + (piece[3] ? "sending a message." : "no message was awaited then: the rank had no work " +
        "(before its first action, after its last, or between two of its own actions).");
    }
    var msg = me.messages[piece[4]], recv = msg[0], sender = msg[3];
    var what = /RECV_F/.test(recv) ? "the input of its next forward" : "the gradient for its next backward";
    if (msg[2] === null) return head + "it waited in " + esc(recv) + " for " + what + "; the run recorded no matching send.";
    var late = msg[4] > msg[6] ? " — " + t(msg[4] - msg[6], ms) + " after rank " + r + " began to wait" : "";
    // what the sender computed just before: the action whose output the message carries
    var m = /^(\d+)SEND_([FB])(\d+)$/.exec(msg[2]), made = null;
    if (m) parseEvents(me.events).forEach(function (e) {
      if (e.r === sender && e.s === +m[1] && e.mb === +m[3] && (m[2] === "F" ? e.k === 0 : e.k === 1 || e.k === 2)) made = e;
    });
    var after = made ? " after computing " + made.s + KINDS[made.k] + made.mb + " (ended " + t(made.end, ms) + ")" : "";
    return head + "it waited in " + esc(recv) + " for " + what + " from <b>rank " + sender + "</b>, which sent it (" +
      esc(msg[2]) + ") at " + t(msg[4], ms) + after + late + "; it arrived at " + t(msg[7], ms) + ", " +
      t(Math.max(0, msg[7] - Math.max(msg[4], msg[6])), ms) + " in flight. The late message: " + esc(msg[2]) +
      " from rank " + sender + ".";
  }

  function bindClicks() {
    var canvas = $("canvas-measured");
    function pickAt(x, y) {
      var hits = shown ? shown.figure.hits : [];
      for (var i = hits.length - 1; i >= 0; i--) {
        var h = hits[i];
        if (h.idle && x >= h.x && x < h.x + h.w && y >= h.y && y < h.y + h.h) return h.idle;
      }
      return null;
    }
    function pick(piece) {
      var box = $("explain-measured");
      box.hidden = !piece;
      box.innerHTML = piece ? explainPiece(shown.ms, piece) : "";
      drawDetail(shown.ms, piece ? piece.slice(0, 3) : null);
    }
    canvas.addEventListener("click", function (ev) {
      var box = canvas.getBoundingClientRect();
      pick(pickAt(ev.clientX - box.left, ev.clientY - box.top));
    });
    $("measured-chart").addEventListener("keydown", function (ev) {
      if (ev.key !== "." && ev.key !== ",") return;
      ev.preventDefault();
      var list = shown.ms.measured.pieces.filter(function (p) { return p[2] - p[1] > 0; })
        .slice().sort(function (a, b) { return a[1] - b[1] || a[0] - b[0]; });
      var i = -1;
      if (shown.pick) list.forEach(function (p, k) { if (p[0] === shown.pick[0] && p[1] === shown.pick[1]) i = k; });
      pick(list[(i + (ev.key === "." ? 1 : -1) + list.length) % list.length]);
    });
    return pick;
  }

  // ---- several steps: the spread per rank, the straggler ---------------------
  function drawSteps(sp, api) {
    $("steps").hidden = false;
    var u = unitOf(sp), tt = function (x) { return t(x, sp); }, hi = 0;
    sp.busy.concat(sp.wait).forEach(function (x) { hi = Math.max(hi, x[1]); });
    var bar = function (x) {
      return '<span class="bar" style="width:' + (80 * x[0] / hi).toFixed(1) + 'px"></span><span class="bar worst" style="width:' +
        (80 * (x[1] - x[0]) / hi).toFixed(1) + 'px"></span> ' + tt(x[0]) + " / " + tt(x[1]);
    };
    $("spread").innerHTML = '<tr><th scope="col">rank</th><th scope="col">compute per step: median / worst</th>' +
      '<th scope="col">waiting on a peer per step: median / worst</th></tr>' + sp.busy.map(function (b, r) {
        var mark = sp.straggler && sp.straggler.rank === r ? " (straggler)" : "";
        return "<tr><th scope=\"row\">" + r + mark + "</th><td>" + bar(b) + "</td><td>" + bar(sp.wait[r]) + "</td></tr>";
      }).join("");
    var s = sp.straggler;
    $("straggler").textContent = sp.runs.length + " recorded steps: step time median " + tt(sp.step[0]) + ", worst " +
      tt(sp.step[1]) + "." + (s ? " Straggler: rank " + s.rank + ", computing " + tt(s.busy) + " per step (median), " +
      (s.ratio ? s.ratio.toFixed(2) + "× the median of the other ranks (" + tt(s.others) + ")" : "") +
      "; the other ranks wait for it." : "");
    var pick = $("step-pick");
    pick.max = sp.runs.length - 1;
    pick.value = sp.median_step;
    function select(i) {
      $("step-pick-out").textContent = "step " + (i + 1) + " of " + sp.runs.length + " (" + sp.files[i] + ")" +
        (i === sp.median_step ? ", the median step" : "");
      $("explain-measured").hidden = true;
      drawDetail(sp.runs[i]);
    }
    pick.addEventListener("input", function () { select(+pick.value); });
    api.redrawMeasured = function () { select(+pick.value); };
    select(sp.median_step);
    void u;
  }

  function sweepGrid(sw, selected) {
    var grid = $("sweep-grid"), T = 0;
    var models = sw.runs.map(function (ms) { var m = modelOf(ms, "measured"); T = Math.max(T, m.lay.T); return m; });
    if (!grid.children.length) {
      sw.runs.forEach(function (ms, i) {
        var cell = document.createElement("figure");
        cell.className = "sweep-cell";
        cell.innerHTML = '<figcaption></figcaption><canvas role="img"></canvas>';
        cell.addEventListener("click", function () { $("sweep-M").value = i; select(sw, i); });
        grid.appendChild(cell);
      });
    }
    var u = unitOf(sw.runs[0]), cw = Math.max(280, Math.min(440, Math.floor((grid.clientWidth || 900) / 2) - 12));
    sw.runs.forEach(function (ms, i) {
      var cell = grid.children[i], m = models[i], row = sw.rows[i] || {};
      cell.classList.toggle("selected", i === selected);
      var head = "M = " + ms.M + ": measured bubble " + pct(ms.measured.wait) +
        (row.formula !== undefined ? " (formula " + pct(row.formula) + ")" : "");
      cell.firstChild.textContent = head;
      var fig = { width: cw, T: T, scale: u[0], unitLabel: u[1],
        panels: [{ model: m, lay: m.lay, pieces: m.pieces, title: "step " + +(m.lay.T * u[0]).toPrecision(4) + " " + u[1] }] };
      var canvas = cell.lastChild;
      C.figure(D.canvasPainter(canvas, cw, C.figureHeight(fig)), fig);
      canvas.setAttribute("aria-label", head + ", step " + +(m.lay.T * u[0]).toPrecision(4) + " " + u[1]);
    });
  }

  var active = null;
  function select(sw, i) {
    active = i;
    $("sweep-M-out").textContent = sw.runs[i].M;
    sweepGrid(sw, i);
    $("explain-measured").hidden = true;
    drawDetail(sw.runs[i]);
    $("measured-title").textContent = "Measured sweep: " + sw.schedule + ", P = " + sw.P + " (stages/ranks), M = " +
      sw.runs.map(function (r) { return r.M; }).join(", ") + " (" + sw.file + ")";
  }

  function init(DATA, api) {
    $("measured").hidden = false;
    var pick = bindClicks();
    api.measuredShown = function () { return shown; };
    api.explainMeasured = function (piece) { pick(piece); return $("explain-measured").textContent; };
    // the measured chart as SVG, drawn by the same code (for tests and downloads)
    api.measuredSvg = function () {
      var m = shown.model, u = unitOf(shown.ms), w = width($("canvas-measured").parentNode);
      var fig = { width: w, T: m.lay.T, scale: u[0], unitLabel: u[1], panels: [{ model: m, lay: m.lay, title: "measured", pieces: m.pieces }] };
      var p = D.svgPainter(w, C.figureHeight(fig), "measured timeline");
      shown.geometry = { plotW: C.figure(p, fig).plotW };
      return p.finish();
    };
    if (DATA.steps) {
      var sp = DATA.steps;
      $("measured-title").textContent = "Measured run, " + sp.runs.length + " steps: " + sp.schedule + ", P = " + sp.P +
        ", M = " + sp.M;
      drawSteps(sp, api);
      return;
    }
    var sw = DATA.sweep;
    if (!sw) {
      var ms = DATA.measured;
      $("measured-title").textContent = "Measured run: " + ms.schedule + ", P = " + ms.P + ", M = " + ms.M + " (" + ms.file + ")";
      api.redrawMeasured = function () { drawDetail(ms, shown && shown.pick); };
      drawDetail(ms);
      return;
    }
    $("sweep").hidden = false;
    $("sweep-M").max = sw.runs.length - 1;
    // measured points on the bubble-vs-M curve, where the explorer shows the sweep's schedule and P
    api.sweepPointsFor = function (st) {
      if (st.schedule !== sw.schedule || st.P !== sw.P) return [];
      return sw.runs.map(function (r) { return [r.M, r.measured.wait]; });
    };
    api.sweepSelected = function () { return sw.runs[active].M; };
    $("sweep-M").addEventListener("input", function () { select(sw, +$("sweep-M").value); });
    // The explorer's M slider moves through the measured runs: the run with the nearest M.
    api.onExplorer = function (st) {
      if (st.schedule !== sw.schedule || st.P !== sw.P) return;
      var best = 0;
      sw.runs.forEach(function (r, i) { if (Math.abs(r.M - st.M) < Math.abs(sw.runs[best].M - st.M)) best = i; });
      if (best !== active) { $("sweep-M").value = best; select(sw, best); }
    };
    api.redrawMeasured = function () { select(sw, active); };
    select(sw, sw.runs.length - 1);
    $("sweep-M").value = sw.runs.length - 1;
  }

  return { init: init, parseEvents: parseEvents };
}());
