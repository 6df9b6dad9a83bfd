/* conveyor explorer: the bubble-vs-M curve beside the chart, for every
 * schedule shown, under the typed costs. The point at the chart's M comes
 * with the redraw; the others (a replay each, or a zb-auto solve) wait until
 * the slider has rested for 250 ms and then come a few at a time, in 8 ms
 * slices, so a drag never waits for them. Points are kept per (schedule, P,
 * view, costs), so moving M again costs nothing. */
var ConveyorCurve = (function () {
  "use strict";
  var R = ConveyorReplay, K = ConveyorCosts, C = ConveyorCharts, D = ConveyorDraw;

  function bubbleValue(code) {
    if (typeof code === "number") return code;
    var nd = code.split("/").map(Number);
    return nd[0] / nd[1];
  }

  // ctx: {data, spec(name), orderOf(name, st, M, passing), model(name, st, order, light),
  //       api, canvas, width(), lastRedrawAt()}
  function create(ctx) {
    var DATA = ctx.data, curves = new Map(), job = null, last = null;

    function entry(name, st) {
      var key = [name, st.P, st.view, st.fixed ? 1 : 0, st.costs.key].join("|"), e = curves.get(key);
      if (!e) {
        var sc = ctx.spec(name), formula = [];
        if (sc.configs) for (var M = 1; M <= DATA.M_max; M++) {
          var rec = sc.configs[st.P - 1][M - 1];
          if (rec && !rec.err && rec.fb) formula.push([M, bubbleValue(rec.fb)]);
        }
        e = { name: name, formula: formula, points: [], next: 1, done: false, st: st };
        curves.set(key, e);
        if (curves.size > 24) curves.delete(curves.keys().next().value);
      }
      return e;
    }

    // The bubble of one point: the replay's end and the work the costs give
    // (busy time does not depend on the order); with data parallelism, the chart's way.
    function bubbleOf(name, st, o) {
      if (st.costs.dp > 1 && st.view === "step") return ctx.model(name, st, o, true).lay.bubble;
      var rows = o.rows, S = o.placement.length;
      if (st.view === "fwd") rows = rows.map(function (row) { return row.filter(function (x) { return x.k === 0; }); });
      var scale = st.fixed ? 1 / o.M : st.M / o.M, c = K.forSchedule(st.costs, S, st.P), table = R.costTable(c, S, scale);
      if (st.costs.rpn > 0) table.link = R.nodeLinks(st.costs, o.placement, table.bytes);
      var T = R.replay(rows, o.placement, table, true), busy = 0;
      rows.forEach(function (row) { row.forEach(function (x) { busy += table.dur[x.k][x.s]; }); });
      return T > 0 ? 1 - busy / (st.P * T) : 0;
    }

    function work(e, budgetMs) {
      var t0 = performance.now();
      while (e.next <= DATA.M_max && performance.now() - t0 < budgetMs) {
        var M = e.next++, st = Object.assign({}, e.st, { M: M });
        try {
          var o = DATA.mode === "serve" && !ctx.spec(e.name).solver ? null : ctx.orderOf(e.name, st, M, true);
          if (o && !o.refused) e.points.push([M, bubbleOf(e.name, st, o)]);
        } catch (err) { if (!(err instanceof K.CostError)) throw err; e.next = DATA.M_max + 1; }
      }
      e.done = e.next > DATA.M_max;
    }

    function data(width) {
      var st = last.st, api = ctx.api;
      return { width: width, P: st.P, Mmax: DATA.M_max, M: st.M,
        series: last.entries.map(function (e, i) {
          return { name: e.name, formula: e.formula, points: e.points, pending: !e.done, mark: last.marks[i],
            measured: api.sweepPointsFor ? api.sweepPointsFor(Object.assign({}, st, { schedule: e.name })) : [] };
        }) };
    }
    function draw() {
      var w = Math.min(420, Math.max(260, ctx.width() - 8)), c = data(w);
      C.bubbleCurve(D.canvasPainter(ctx.canvas, w, C.curveHeight(c)), c);
    }

    function step() {
      job = null;
      var open = last.entries.filter(function (e) { return !e.done; });
      if (!open.length) return;
      var rest = performance.now() - ctx.lastRedrawAt();
      if (rest < 250) { job = setTimeout(step, 250 - rest); return; }
      work(open[0], 8);
      draw();
      job = setTimeout(step, 0);
    }

    return {
      // the schedules drawn at st, with their bubbles at st.M
      show: function (st, models) {
        var entries = models.map(function (m) { return entry(m.name, st); });
        last = { st: st, entries: entries, marks: models.map(function (m) { return [st.M, m.lay.bubble]; }) };
        draw();
        if (entries.some(function (e) { return !e.done; }) && !job) job = setTimeout(step, 250);
      },
      // every point now (a download holds the whole curve), as chart data of this width
      complete: function (width) {
        if (!last) return null;
        last.entries.forEach(function (e) { if (!e.done) work(e, Infinity); });
        return data(width);
      }
    };
  }

  return { create: create };
}());
