// Draws the timeline from the JSON in #timeline-data (see sim/src/timeline/mod.rs for its shape)
// and makes it zoomable: wheel to zoom around the cursor, drag to pan, double-click to reset.
// Everything time-positioned lives in one group scaled in x only (strokes do not scale), so a
// zoom changes one transform; the axis and band labels are redrawn per view.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("timeline-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var LABEL_W = 70, AXIS_H = 20, BAND_H = 15, ROW_H = 8, LANE_PAD = 3, STRIP_H = 3;
  var MIN_SPAN = 5;
  var PALETTE = ["#f5b800", "#4e79a7", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"];
  var chart = document.getElementById("chart");
  var tip = document.getElementById("tip");
  var end = Math.max(data.end, 1);
  var view = { t0: 0, t1: end };
  // Overlapping leader terms (two leaders at once) are stacked in rows of the leader band.
  var leaderRows = data.leaders.reduce(function (n, b) { return Math.max(n, b[4] + 1); }, 1);
  var EPOCH_TOP = AXIS_H + leaderRows * BAND_H + 2;
  var svg, scaled, overlay, plotW, lanesTop, lanesBottom, laneTops = [];

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }

  function num(x) { return Math.round(x * 1000) / 1000; }

  function layout() {
    var y = EPOCH_TOP + BAND_H + 6;
    lanesTop = y;
    laneTops = data.lanes.map(function (lane) {
      var top = y;
      y += 2 * LANE_PAD + STRIP_H + lane.rows * ROW_H + 2;
      return top;
    });
    lanesBottom = y;
    return y + 4;
  }

  function laneHeight(i) { return 2 * LANE_PAD + STRIP_H + data.lanes[i].rows * ROW_H; }

  function build() {
    chart.textContent = "";
    var width = Math.max(chart.clientWidth, 600);
    plotW = width - LABEL_W - 8;
    var height = layout();
    svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height }, chart);
    var defs = el("defs", {}, svg);
    var clip = el("clipPath", { id: "plot" }, defs);
    el("rect", { x: LABEL_W, y: 0, width: plotW, height: height }, clip);
    var labels = el("g", {}, svg);
    data.lanes.forEach(function (lane, i) {
      el("rect", { class: "lane-bg" + (i % 2 ? " alt" : ""), x: 0, y: laneTops[i], width: width, height: laneHeight(i) }, labels);
      var t = el("text", { class: "lane-label", x: 6, y: laneTops[i] + laneHeight(i) / 2 + 4 }, labels);
      t.textContent = lane.name;
    });
    var bandLabel = function (text, y) {
      var t = el("text", { class: "lane-label", x: 6, y: y + BAND_H - 4 }, labels);
      t.textContent = text;
    };
    bandLabel("leader", AXIS_H);
    bandLabel("epoch", EPOCH_TOP);
    var plot = el("g", { "clip-path": "url(#plot)" }, svg);
    scaled = el("g", {}, plot);
    overlay = el("g", {}, plot);
    var parts = [];
    data.spans.forEach(function (s, i) {
      var lane = s[0], top = lane === null ? lanesTop : laneTops[lane];
      var bottom = lane === null ? lanesBottom : laneTops[lane] + laneHeight(lane);
      if (s[1] === s[2]) {
        parts.push('<line class="instant ' + s[3] + '" data-s="' + i + '" x1="' + s[1] + '" x2="' + s[1] + '" y1="' + top + '" y2="' + bottom + '"/>');
      } else if (s[3] === "drift") {
        parts.push('<rect class="span drift" data-s="' + i + '" x="' + s[1] + '" y="' + (bottom - 3) + '" width="' + (s[2] - s[1]) + '" height="3"/>');
      } else {
        parts.push('<rect class="span ' + s[3] + '" data-s="' + i + '" x="' + s[1] + '" y="' + top + '" width="' + (s[2] - s[1]) + '" height="' + (bottom - top) + '"/>');
      }
    });
    data.leaders.forEach(function (b, i) {
      var color = PALETTE[(b[2] || 0) % PALETTE.length];
      var w = Math.max(b[1] - b[0], 0.01);
      parts.push('<rect class="term" data-l="' + i + '" x="' + b[0] + '" y="' + (AXIS_H + b[4] * BAND_H) + '" width="' + w + '" height="' + BAND_H + '" fill="' + color + '"/>');
      if (b[2] !== null && laneTops[b[2]] !== undefined) {
        parts.push('<rect class="leading" data-l="' + i + '" x="' + b[0] + '" y="' + (laneTops[b[2]] + 1) + '" width="' + w + '" height="' + STRIP_H + '" fill="' + color + '"/>');
      }
    });
    data.epochs.forEach(function (b, i) {
      var w = Math.max(b[1] - b[0], 0.01);
      parts.push('<rect class="epoch ' + (i % 2 ? "odd" : "even") + '" data-e="' + i + '" x="' + b[0] + '" y="' + EPOCH_TOP + '" width="' + w + '" height="' + BAND_H + '"/>');
    });
    var marks = [];
    data.ops.forEach(function (o, i) {
      var y = laneTops[o[0]] + LANE_PAD + STRIP_H + 1 + o[1] * ROW_H;
      var w = Math.max(o[3] - o[2], 0.01);
      parts.push('<rect class="op ' + o[4] + (o[5] ? " hl" : "") + '" data-i="' + i + '" x="' + o[2] + '" y="' + y + '" width="' + w + '" height="' + (ROW_H - 2) + '"/>');
      if (o[5]) {
        marks.push('<line class="hl-mark" x1="' + o[2] + '" x2="' + o[2] + '" y1="' + AXIS_H + '" y2="' + lanesBottom + '"/>');
      }
    });
    // Highlighted ops last, so nothing covers them.
    scaled.innerHTML = parts.join("") + marks.join("");
    var hl = scaled.querySelectorAll("rect.op.hl");
    for (var h = 0; h < hl.length; h++) { scaled.appendChild(hl[h]); }
    draw();
  }

  function x(t) { return LABEL_W + (t - view.t0) / (view.t1 - view.t0) * plotW; }

  function draw() {
    var k = plotW / (view.t1 - view.t0);
    scaled.setAttribute("transform", "translate(" + num(LABEL_W - view.t0 * k) + ",0) scale(" + k + ",1)");
    overlay.textContent = "";
    var axis = el("g", { class: "axis" }, overlay);
    var span = view.t1 - view.t0, step = 1;
    var steps = [1, 2, 5];
    for (var m = 1; span / step > plotW / 90; m++) { step = steps[m % 3] * Math.pow(10, Math.floor(m / 3)); }
    var decimals = step >= 1000 ? 0 : step >= 100 ? 1 : step >= 10 ? 2 : 3;
    for (var t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      el("line", { x1: num(x(t)), x2: num(x(t)), y1: AXIS_H - 4, y2: lanesBottom }, axis).style.strokeOpacity = 0.5;
      var label = el("text", { x: num(x(t)) + 2, y: AXIS_H - 6 }, axis);
      label.textContent = (t / 1000).toFixed(decimals) + " s";
    }
    var bandText = function (b, y, text) {
      var x0 = Math.max(x(b[0]), LABEL_W), x1 = Math.min(x(b[1]), LABEL_W + plotW);
      if (x1 - x0 < 7 * text.length) { return; }
      var t = el("text", { class: "band-label", x: num(x0 + 3), y: y + BAND_H - 4 }, overlay);
      t.textContent = text;
    };
    data.leaders.forEach(function (b) { bandText(b, AXIS_H + b[4] * BAND_H, b[3]); });
    data.epochs.forEach(function (b) { bandText(b, EPOCH_TOP, b[2]); });
    data.spans.forEach(function (s) {
      if (s[3] === "heal") { bandText([s[1], view.t1], lanesBottom - BAND_H, "faults stop; liveness phase"); }
    });
  }

  function setView(t0, t1) {
    var span = Math.min(Math.max(t1 - t0, MIN_SPAN), end);
    t0 = Math.min(Math.max(t0, 0), end - span);
    view = { t0: t0, t1: t0 + span };
    draw();
  }

  function timeAt(clientX) {
    var r = svg.getBoundingClientRect();
    return view.t0 + (clientX - r.left - LABEL_W) / plotW * (view.t1 - view.t0);
  }

  function describe(target) {
    var d = target.dataset || {};
    if (d.i !== undefined) { return data.ops[+d.i][7]; }
    if (d.s !== undefined) {
      var s = data.spans[+d.s];
      return s[4] + "\n" + (s[1] / 1000).toFixed(3) + " s" + (s[2] > s[1] ? " → " + (s[2] / 1000).toFixed(3) + " s" : "");
    }
    if (d.l !== undefined) {
      var l = data.leaders[+d.l];
      return "leader " + l[3] + "\n" + (l[0] / 1000).toFixed(3) + " s → " + (l[1] / 1000).toFixed(3) + " s";
    }
    if (d.e !== undefined) {
      var e = data.epochs[+d.e];
      return "assignment epoch " + e[2].slice(1) + " (first applied " + (e[0] / 1000).toFixed(3) + " s)";
    }
    return null;
  }

  function focusOp(i) {
    var o = data.ops[i];
    var pad = Math.max(1500, 2 * (o[3] - o[2]));
    setView(o[2] - pad, o[3] + pad);
    var old = scaled.querySelectorAll("rect.op.focus");
    for (var j = 0; j < old.length; j++) { old[j].classList.remove("focus"); }
    var rect = scaled.querySelector('rect.op[data-i="' + i + '"]');
    if (rect) { rect.classList.add("focus"); }
    chart.scrollIntoView({ block: "nearest" });
  }

  function fitHighlighted() {
    var lo = Infinity, hi = -Infinity;
    data.ops.forEach(function (o) { if (o[5]) { lo = Math.min(lo, o[2]); hi = Math.max(hi, o[3]); } });
    if (lo <= hi) {
      var pad = Math.max(1000, (hi - lo) * 0.15);
      setView(lo - pad, hi + pad);
    }
  }

  build();
  if (location.hash === "#focus") { fitHighlighted(); }

  chart.addEventListener("wheel", function (e) {
    e.preventDefault();
    var at = timeAt(e.clientX), span = view.t1 - view.t0;
    var next = Math.min(Math.max(span * Math.exp(e.deltaY * 0.002), MIN_SPAN), end);
    var t0 = at - (at - view.t0) * next / span;
    setView(t0, t0 + next);
  }, { passive: false });
  var drag = null;
  chart.addEventListener("mousedown", function (e) {
    drag = { x: e.clientX, t0: view.t0, t1: view.t1 };
    chart.classList.add("dragging");
  });
  window.addEventListener("mousemove", function (e) {
    if (drag) {
      var dt = (drag.x - e.clientX) / plotW * (drag.t1 - drag.t0);
      setView(drag.t0 + dt, drag.t1 + dt);
      return;
    }
    var text = e.target && chart.contains(e.target) ? describe(e.target) : null;
    if (text === null) { tip.hidden = true; return; }
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = Math.min(e.clientY + 14, window.innerHeight - tip.offsetHeight - 4) + "px";
  });
  window.addEventListener("mouseup", function () { drag = null; chart.classList.remove("dragging"); });
  chart.addEventListener("dblclick", function () { setView(0, end); });
  document.getElementById("violations").addEventListener("click", function (e) {
    var a = e.target.closest("a[data-op]");
    if (a) { e.preventDefault(); focusOp(+a.getAttribute("data-op")); }
  });
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () { var v = view; build(); setView(v.t0, v.t1); }, 100);
  });

  document.body.setAttribute("data-ops", String(data.ops.length));
  document.body.setAttribute("data-highlighted", String(scaled.querySelectorAll("rect.op.hl").length));
  document.body.setAttribute("data-ready", "1");
})();
