/* conveyor explorer: entry points for the browser tests and the redraw
 * benchmark, on top of explorer.js (which they drive like a user would, or
 * read back from): set a state, read the page's timeline, all-reduces,
 * critical path and solved zb-auto order, and replay every embedded
 * configuration against Python's metrics. */
(function () {
  "use strict";
  var api = window.conveyor, I = api.inner, KINDS = "FBIW", R = ConveyorReplay;
  var $ = function (id) { return document.getElementById(id); };
  function code(e) { return e.s + KINDS[e.k] + e.mb; }

  // st: {schedule, compare, P, M, view, ratio (F = 1, B = ratio) or costs
  // {unit, F, I, W, lat, bytes, ...} as typed, fixed, critical}
  api.set = function (st) {
    var ctl = I.ctl;
    if (st.schedule !== undefined) ctl.schedule.value = st.schedule;
    if (st.compare !== undefined) ctl.compare.value = st.compare;
    if (st.P !== undefined) ctl.P.value = st.P;
    if (st.M !== undefined) ctl.M.value = st.M;
    if (st.view !== undefined) $(st.view === "step" ? "view-step" : "view-fwd").checked = true;
    if (st.ratio !== undefined) {
      $("cost-F").value = 1; $("cost-I").value = st.ratio / 2; $("cost-W").value = st.ratio - st.ratio / 2;
      $("cost-lat").value = 0; $("cost-bytes").value = 0; $("cost-bw").value = "inf";
      Object.keys(I.defaults).forEach(function (k) { $(I.fields[k]).value = I.defaults[k]; });
    }
    if (st.costs) Object.keys(st.costs).forEach(function (k) { $(I.fields[k]).value = st.costs[k]; });
    if (st.fixed !== undefined) $("fixed").checked = st.fixed;
    if (st.critical !== undefined) $("critical").checked = st.critical;
    var done = api.redraw();
    I.writeHash();
    return done;
  };
  // The page's own timeline of the shown schedule: [rank, "2F5", start, end] per action.
  api.timeline = function (st) {
    if (st) api.set(st);
    var m = api.models[0];
    return m && m.name === api.state().schedule ? m.events.filter(function (e) { return e.k < 5; })
      .map(function (e) { return [e.r, code(e), e.start, e.end]; }) : null;
  };
  // Its data-parallel all-reduces: [rank, stage, start, end, ready], as Timeline.collectives.
  api.collectives = function () {
    var m = api.models[0];
    return m ? m.events.filter(function (e) { return e.k === 5; })
      .map(function (e) { return [e.r, e.s, e.start, e.end, e.ready]; }) : null;
  };
  // The critical path of the i-th schedule shown: [rank, "2F5", via] per action, first first.
  api.criticalPath = function (i) {
    var m = api.models[i || 0];
    return m ? R.criticalPath(m.events).map(function (e) { return [e.r, code(e), ["start", "rank", "data"][e.via]]; }) : null;
  };
  // The order the page solved for zb-auto: per rank, ["0F0", "0I0", ...].
  api.solvedOrder = function () {
    var m = api.models[0], st = api.state();
    if (!m || !I.spec(m.name).solver) return null;
    return I.orderOf(m.name, st, st.M).rows.map(function (row) { return row.map(code); });
  };
  // Replay every embedded configuration and compare step time and bubble with Python's.
  api.selfCheck = function () {
    var bad = [], count = 0, DATA = I.data();
    DATA.schedules.forEach(function (sc) {
      if (!sc.configs) return;
      for (var P = 1; P <= DATA.P_max; P++) for (var M = 1; M <= DATA.M_max; M++) {
        var rec = I.record(sc.name, P, M);
        if (rec.err || !rec.r) continue;
        var views = [["fwd", 2]].concat(DATA.ratios.map(function (x) { return ["step", x]; }));
        views.forEach(function (vw) {
          var costs = { unit: "stage", f: [1], i: [vw[1] / 2], w: [vw[1] - vw[1] / 2], latency: 0, bandwidth: Infinity,
            bytes: [0], dp: 1, rpn: 0, pbytes: [0], key: "check" };
          var st = { schedule: sc.name, P: P, M: M, view: vw[0], costs: costs, fixed: false };
          var o = I.orderOf(sc.name, st, M);
          st.M = o.M;
          var m = I.model(sc.name, st, o);
          count++;
          if (!m.python || m.lay.T !== m.python.T || Math.abs(m.lay.bubble - I.bubbleValue(m.python.bubble)) > 1e-9) {
            bad.push([sc.name, P, M, vw, m.lay.T, m.python && m.python.T]);
          }
        });
      }
    });
    return { checked: count, mismatches: bad.slice(0, 20), n_bad: bad.length };
  };
}());
