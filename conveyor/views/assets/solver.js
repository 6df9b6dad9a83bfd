/* zb-auto, solved in the page for the typed costs: a port of
 * conveyor/schedule/auto.py (zb_auto, the registered default: one stage per
 * rank, cap = P micro-batches in flight) with the held-back shapes of
 * conveyor/schedule/zerobubble.py (held_back) and the list scheduler of
 * conveyor/schedule/listsched.py. Same candidates in the same order, the same
 * arithmetic and the same tie rules, so the same order comes out; a browser
 * test compares it with the Python solver under random costs.
 * Rows are lists of {s, k (0 F, 1 B, 2 I, 3 W), mb}, as replay.js takes them. */
var ConveyorSolver = (function () {
  "use strict";
  var F = 0, B = 1, I = 2, W = 3, EPS = 1e-12;

  // zerobubble.held_back for one stage per rank.
  function heldBack(P, M, warm, defer) {
    var rows = [];
    for (var r = 0; r < P; r++) {
      var w = Math.min(M, warm[r]), d = defer[r], row = [], ni = 0, nw = 0, mb, k;
      for (mb = 0; mb < w; mb++) row.push({ s: r, k: F, mb: mb });
      for (k = 0; k < M - w; k++) {
        row.push({ s: r, k: F, mb: w + k }, { s: r, k: I, mb: ni++ });
        if (k >= d) row.push({ s: r, k: W, mb: nw++ });
      }
      while (ni < M) {
        row.push({ s: r, k: I, mb: ni++ });
        if (ni - nw > d) row.push({ s: r, k: W, mb: nw++ });
      }
      for (mb = nw; mb < M; mb++) row.push({ s: r, k: W, mb: mb });
      rows.push(row);
    }
    return rows;
  }

  // A binary heap of [time, seq, rank, version], smallest (time, seq) first,
  // as Python's heapq orders those tuples (seq is unique, so no ties remain).
  function Heap() { this.a = []; }
  function less(x, y) { return x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]); }
  Heap.prototype.push = function (x) {
    var a = this.a, i = a.length;
    a.push(x);
    while (i > 0) {
      var p = (i - 1) >> 1;
      if (!less(a[i], a[p])) break;
      var t = a[i]; a[i] = a[p]; a[p] = t; i = p;
    }
  };
  Heap.prototype.pop = function () {
    var a = this.a, top = a[0], end = a.pop();
    if (a.length) {
      a[0] = end;
      for (var i = 0; ;) {
        var l = 2 * i + 1, r = l + 1, m = i;
        if (l < a.length && less(a[l], a[m])) m = l;
        if (r < a.length && less(a[r], a[m])) m = r;
        if (m === i) break;
        var t = a[i]; a[i] = a[m]; a[m] = t; i = m;
      }
    }
    return top;
  };

  // listsched.list_schedule: per-rank orders, or null where Python raises Stalled.
  // dur: [F, B, I, W] per stage; link: per cut; policy: {split, cap (per rank),
  // lateFirst, wFirstAt (per rank or null), reserve}.
  function listSchedule(P, M, placement, dur, link, policy) {
    var S = placement.length, r, s, mb;
    var stages = [];
    for (r = 0; r < P; r++) stages.push([]);
    for (s = 0; s < S; s++) stages[placement[s]].push(s);
    if (policy.lateFirst) stages = stages.map(function (x) { return x.slice().reverse(); });
    var nxtF = new Array(S).fill(0), nxtB = new Array(S).fill(0), pendW = [], fReady = [], bReady = [];
    for (s = 0; s < S; s++) { pendW.push([]); fReady.push(new Array(M).fill(null)); bReady.push(new Array(M).fill(null)); }
    for (mb = 0; mb < M; mb++) fReady[0][mb] = 0;
    var held = new Array(P).fill(0), committed = new Array(P).fill(0), first = [], kk = [], rows = [], left = [];
    for (r = 0; r < P; r++) {
      first.push(stages[r].length ? Math.min.apply(null, stages[r]) : -1);
      kk.push(stages[r].length);
      rows.push([]);
      left.push(stages[r].length * M * (policy.split ? 3 : 2));
    }
    var version = new Array(P).fill(0), heap = new Heap(), seq = P, decisions = 0;
    var retried = {}, sleeping = {};
    for (r = 0; r < P; r++) if (left[r]) heap.push([0, r, r, 0]);
    function push(q, when) { version[q]++; heap.push([when, seq++, q, version[q]]); }
    function wake(q, when) {
      if (when < (q in sleeping ? sleeping[q] : -1)) { sleeping[q] = when; push(q, when); }
    }
    while (heap.a.length) {
      var top = heap.pop(), t = top[0];
      r = top[2];
      if (top[3] !== version[r]) continue;
      delete sleeping[r];
      var room = policy.reserve ? policy.cap[r] - committed[r] >= kk[r] : held[r] < policy.cap[r];
      var choice = choose(r, t, stages[r], policy, held[r], room, first[r], nxtF, nxtB, pendW, fReady, bReady, M);
      if (choice === null) {
        // another rank deciding at this same time may hand r an input: look again after it, once
        if (heap.a.length && heap.a[0][0] <= t && retried[r] !== t + "|" + decisions) {
          retried[r] = t + "|" + decisions;
          push(r, t);
          continue;
        }
        var wakeAt = Infinity, any = false;
        inputTimes(stages[r], nxtF, nxtB, fReady, bReady, M).forEach(function (x) {
          if (x > t) { any = true; if (x < wakeAt) wakeAt = x; }
        });
        if (any) push(r, wakeAt);
        sleeping[r] = wakeAt;
        continue;
      }
      decisions++;
      s = choice[0];
      var kind = choice[1];
      if (kind === F) {
        mb = nxtF[s]++;
        held[r]++;
        if (s === first[r]) committed[r] += kk[r];
      } else if (kind === W) {
        mb = pendW[s].shift();
        held[r]--; committed[r]--;
      } else {
        mb = nxtB[s]++;
        if (kind === I) pendW[s].push(mb); else { held[r]--; committed[r]--; }
      }
      var end = t + dur[kind][s], arrive;
      rows[r].push({ s: s, k: kind, mb: mb });
      if (kind === F) {
        if (s + 1 < S) {
          fReady[s + 1][mb] = arrive = end + (placement[s + 1] !== r ? link[s] : 0);
          wake(placement[s + 1], arrive);
        } else bReady[s][mb] = end;  // the loss gradient is there once F is
      } else if (kind !== W && s > 0) {
        bReady[s - 1][mb] = arrive = end + (placement[s - 1] !== r ? link[s - 1] : 0);
        wake(placement[s - 1], arrive);
      }
      left[r]--;
      if (left[r]) push(r, end);
    }
    for (r = 0; r < P; r++) if (left[r]) return null;
    return rows;
  }

  function choose(r, t, stages, policy, held, room, first, nxtF, nxtB, pendW, fReady, bReady, M) {
    var back = policy.split ? I : B, i, s, mb;
    for (i = 0; i < stages.length; i++) {  // a backward first: it frees memory and feeds the rank before
      s = stages[i]; mb = nxtB[s];
      if (mb < nxtF[s] && bReady[s][mb] !== null && bReady[s][mb] <= t + EPS) return [s, back];
    }
    if (policy.split && policy.wFirstAt !== null && held >= policy.wFirstAt[r]) {
      for (i = stages.length - 1; i >= 0; i--) if (pendW[stages[i]].length) return [stages[i], W];
    }
    for (i = 0; i < stages.length; i++) {
      s = stages[i]; mb = nxtF[s];
      if (mb < M && fReady[s][mb] !== null && fReady[s][mb] <= t + EPS &&
          (s === first || !policy.reserve ? room : true)) return [s, F];
    }
    if (policy.split) {
      for (i = stages.length - 1; i >= 0; i--) if (pendW[stages[i]].length) return [stages[i], W];
    }
    return null;
  }

  function inputTimes(stages, nxtF, nxtB, fReady, bReady, M) {
    var out = [];
    stages.forEach(function (s) {
      var mb = nxtB[s];
      if (mb < nxtF[s] && bReady[s][mb] !== null) out.push(bReady[s][mb]);
      mb = nxtF[s];
      if (mb < M && fReady[s][mb] !== null) out.push(fReady[s][mb]);
    });
    return out;
  }

  // auto._policies for one stage per rank (no V): most promising first.
  function policies(P, cap) {
    var out = [], rep = function (x) { return new Array(P).fill(x); };
    [null, cap - 1, cap - 2].forEach(function (wAt) {
      if (wAt === null || wAt >= 1) {
        out.push({ split: true, cap: rep(cap), lateFirst: true, wFirstAt: wAt === null ? null : rep(wAt),
          reserve: true, name: "list cap=" + cap + " w_at=" + wAt });
      }
    });
    [cap - 1, cap - 2].forEach(function (c) {
      if (c >= 1) out.push({ split: true, cap: rep(c), lateFirst: true, wFirstAt: null, reserve: true,
        name: "list cap=" + c });
    });
    return out;
  }

  // auto.zb_auto(P, M, costs=table's costs): the shortest candidate under the
  // costs (the first wins ties within 1e-9). table: {dur, link} as
  // ConveyorReplay.costTable gives it for S = P stages; cap defaults to P.
  // Returns {rows, placement, candidate, T}.
  function zbAuto(P, M, table, cap) {
    cap = cap || P;
    var placement = [], best = null, r;
    for (r = 0; r < P; r++) placement.push(r);
    function consider(rows, name) {
      var events;
      try { events = ConveyorReplay.replay(rows, placement, table); }
      catch (e) { return; }  // stuck: Python skips the candidate too
      var T = 0;
      for (var j = 0; j < events.length; j++) if (events[j].end > T) T = events[j].end;
      if (best === null || T < best.T - 1e-9) best = { rows: rows, T: T, candidate: name };
    }
    for (var k = 1; k <= 3; k++) {
      var warm = [], defer = [];
      for (r = 0; r < P; r++) {
        warm.push(Math.min(cap - 1, k * (P - 1 - r)));
        defer.push(Math.min(cap - 1 - warm[r], k * r));
      }
      consider(heldBack(P, M, warm, defer), "held-back k=" + k);
    }
    policies(P, cap).forEach(function (pol) {
      var rows = listSchedule(P, M, placement, table.dur, table.link, pol);
      if (rows) consider(rows, pol.name);
    });
    if (best === null) throw new Error("zb-auto found no order for P=" + P + ", M=" + M + " under cap=" + cap);
    best.placement = placement;
    return best;
  }

  return { zbAuto: zbAuto, listSchedule: listSchedule, heldBack: heldBack };
}());
