/* conveyor explorer: measured runs. A measured timeline is drawn above its
 * simulation with the measured per-stage costs; SEND/RECV time is drawn as
 * communication (blue hatching), never as bubble. A measured M sweep (from
 * `conveyor demo`) is drawn as small multiples, one measured chart per M on
 * one time axis with its bubble above; the explorer's M slider moves through
 * the measured runs. */
var ConveyorMeasured = (function () {
  "use strict";
  var D = ConveyorDraw, R = ConveyorReplay, KINDS = "FBIW";
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
    return m;
  }
  function unitOf(ms) { return ms.unit === "s" ? [1000, "ms"] : [1, ms.unit]; }
  function width(el) { return Math.max(300, Math.floor(el.clientWidth || 900)); }

  function drawOne(canvasId, m, title, T, ms) {
    var u = unitOf(ms), canvas = $(canvasId), w = width(canvas.parentNode);
    var fig = { width: w, T: T, scale: u[0], unitLabel: u[1], panels: [{ model: m, lay: m.lay, title: title }] };
    var drawn = D.figure(D.canvasPainter(canvas, w, D.figureHeight(fig)), fig);
    canvas.setAttribute("aria-label", title + "; communication " + pct(m.lay.comm) + " of rank-time");
    return drawn;
  }

  // The measured run and its simulation. They share a time axis unless their
  // step times differ by more than 3x: then each gets its own scale.
  function drawDetail(ms) {
    var meas = modelOf(ms, "measured"), sim = modelOf(ms, "simulated"), u = unitOf(ms);
    var ratio = Math.max(meas.lay.T, sim.lay.T) / Math.max(1e-300, Math.min(meas.lay.T, sim.lay.T));
    var own = ratio > 3;
    $("scale-note").hidden = !own;
    $("scale-note").textContent = own ? "The measured step is " + ratio.toFixed(1) + "× the simulated one, so each " +
      "chart has its own time scale (read the axes)." : "";
    var T = Math.max(meas.lay.T, sim.lay.T);
    var drawn = drawOne("canvas-measured", meas, "measured: step " + +(meas.lay.T * u[0]).toPrecision(4) + " " + u[1] +
      ", bubble " + pct(bubbleValue(ms.measured.bubble)), own ? meas.lay.T : T, ms);
    var drawn2 = drawOne("canvas-measured-sim", sim, "simulated: step " + +(sim.lay.T * u[0]).toPrecision(4) + " " + u[1] +
      ", bubble " + pct(bubbleValue(ms.simulated.bubble)), own ? sim.lay.T : T, ms);
    Object.keys(drawn2).forEach(function (k) { drawn[k] = true; });
    $("legend-measured").innerHTML = D.legendHtml(drawn);
    $("bubble-measured").textContent = pct(bubbleValue(ms.measured.bubble));
    $("comm-measured").textContent = pct(meas.lay.comm);
    $("step-measured").textContent = +(ms.measured.T * u[0]).toPrecision(6) + " " + u[1];
    $("bubble-measured-sim").textContent = pct(bubbleValue(ms.simulated.bubble));
    $("step-measured-sim").textContent = +(ms.simulated.T * u[0]).toPrecision(6) + " " + u[1];
    $("measured-head").textContent = "measured (" + ms.file + ")";
    if (ms.note) { $("measured-note").hidden = false; $("measured-note").textContent = "Note: " + ms.note + "."; }
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
      var head = "M = " + ms.M + ": measured bubble " + pct(bubbleValue(ms.measured.bubble)) +
        (row.formula !== undefined ? " (formula " + pct(row.formula) + ")" : "");
      cell.firstChild.textContent = head;
      var fig = { width: cw, T: T, scale: u[0], unitLabel: u[1],
        panels: [{ model: m, lay: m.lay, title: "step " + +(m.lay.T * u[0]).toPrecision(4) + " " + u[1] }] };
      var canvas = cell.lastChild;
      D.figure(D.canvasPainter(canvas, cw, D.figureHeight(fig)), fig);
      canvas.setAttribute("aria-label", head + ", step " + +(m.lay.T * u[0]).toPrecision(4) + " " + u[1]);
    });
  }

  var active = null;
  function select(sw, i) {
    active = i;
    $("sweep-M-out").textContent = sw.runs[i].M;
    sweepGrid(sw, i);
    drawDetail(sw.runs[i]);
    $("measured-title").textContent = "Measured sweep: " + sw.schedule + ", P = " + sw.P + " (stages/ranks), M = " +
      sw.runs.map(function (r) { return r.M; }).join(", ") + " (" + sw.file + ")";
  }

  function init(DATA, api) {
    $("measured").hidden = false;
    var sw = DATA.sweep;
    if (!sw) {
      var ms = DATA.measured;
      $("measured-title").textContent = "Measured run: " + ms.schedule + ", P = " + ms.P + ", M = " + ms.M + " (" + ms.file + ")";
      api.redrawMeasured = function () { drawDetail(ms); };
      drawDetail(ms);
      return;
    }
    $("sweep").hidden = false;
    $("sweep-M").max = sw.runs.length - 1;
    // measured points on the bubble-vs-M curve, where the explorer shows the sweep's schedule and P
    api.sweepPointsFor = function (st) {
      if (st.schedule !== sw.schedule || st.P !== sw.P) return [];
      return sw.runs.map(function (r) { return [r.M, bubbleValue(r.measured.bubble)]; });
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
