// The engine page: charts drawn from the embedded figures, then tables updated in place and
// charts extended (Plotly.extendTraces) from the live "engine:<name>" topic. The figures set
// uirevision, so an operator's zoom survives the updates.
(function () {
  "use strict";

  var root = document.getElementById("engine-page");
  if (!root) return;
  var fmt = Live.fmt;
  var engineId = Number(root.dataset.id);
  var MAX_FILLS = 100;
  var MAX_POINTS = 5000;
  // Charts redraw whole: points are queued and drawn together a few times a second, which keeps
  // a busy desk machine responsive while tables still change at the update rate.
  var CHART_MS = 500;
  var queued = null;
  var chartTimer = null;
  var traces = JSON.parse(document.getElementById("plot-traces").textContent);
  var config = JSON.parse(document.getElementById("plot-config").textContent);
  var charts = {
    equity: document.getElementById("equity-chart"),
    latency: document.getElementById("latency-chart"),
    rejections: document.getElementById("rejection-chart"),
  };
  var current = { row: null, fillId: 0, equityMs: -Infinity, latencyMs: -Infinity };

  // --- charts ----------------------------------------------------------------------------------

  function pad(n, width) {
    return String(n).padStart(width || 2, "0");
  }

  function localX(iso) {
    // Plotly.js ignores a timestamp's offset: hand it wall-clock time in the operator's zone.
    var d = new Date(Date.parse(iso));
    return (
      d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3)
    );
  }

  function lastMs(isoList) {
    return isoList.length ? Date.parse(isoList[isoList.length - 1]) : -Infinity;
  }

  function drawChart(name) {
    var div = charts[name];
    var figure = JSON.parse(document.getElementById(div.dataset.figure).textContent);
    var newestMs = lastMs((figure.data[0] && figure.data[0].x) || []);
    figure.data.forEach(function (trace) {
      trace.x = (trace.x || []).map(localX);
    });
    // The window the axis spans at least (dashboard.charts.rejection_figure), in the same
    // wall-clock time as the points. No tick spacing is forced on any axis: over a span Plotly
    // did not expect, forced ticks can number in the hundreds of thousands.
    var range = figure.layout.xaxis.autorangeoptions;
    if (range && range.include) range.include = range.include.map(localX);
    Plotly.newPlot(div, figure.data, figure.layout, config);
    if (name === "equity") current.equityMs = newestMs;
    if (name === "latency") current.latencyMs = newestMs;
  }

  function draw(then) {
    // One chart a task: between them the browser handles a click (Kill) and paints, however
    // slow the machine; the live updates start once every chart is there to extend.
    var names = Object.keys(charts);
    (function next() {
      if (!names.length) return then();
      drawChart(names.shift());
      setTimeout(next, 0);
    })();
  }

  var replacing = 0; // charts still to be redrawn from a snapshot (see replaceSeries)

  function replaceSeries(snapshot) {
    queued = null; // the snapshot holds every point queued so far
    var eq = snapshot.equity;
    var t = traces.equity;
    var ex = eq.ts.map(localX);
    var update = { x: [], y: [] };
    var order = [t.equity, t.drawdown];
    update.x[order.indexOf(t.equity)] = ex;
    update.y[order.indexOf(t.equity)] = eq.equity;
    update.x[order.indexOf(t.drawdown)] = ex;
    update.y[order.indexOf(t.drawdown)] = eq.drawdown_pct;
    current.equityMs = lastMs(eq.ts);
    current.latencyMs = lastMs(snapshot.latency.ts);
    // One chart a task, as when first drawn; points arriving meanwhile wait (drawQueued) so that
    // they extend the snapshot's series, not the ones it replaces.
    var steps = [
      function () { Plotly.restyle(charts.equity, update, order); },
      function () {
        Plotly.restyle(
          charts.latency,
          { x: [snapshot.latency.ts.map(localX)], y: [snapshot.latency.value] },
          [traces.latency.latency]
        );
      },
      function () {
        Plotly.restyle(
          charts.rejections,
          { x: [snapshot.rejections.ts.map(localX)], y: [snapshot.rejections.rejection_pct] },
          [traces.rejections.rejection]
        );
      },
    ];
    replacing += 1;
    (function next() {
      steps.shift()();
      if (steps.length) setTimeout(next, 0);
      else replacing -= 1;
    })();
  }

  function newPoints(ts, columns, afterMs) {
    // Only points after the newest on the chart: an update may repeat what a snapshot brought.
    var keep = [];
    ts.forEach(function (iso, i) {
      if (Date.parse(iso) > afterMs) keep.push(i);
    });
    return {
      x: keep.map(function (i) { return localX(ts[i]); }),
      columns: columns.map(function (column) {
        return keep.map(function (i) { return column[i]; });
      }),
      lastMs: keep.length ? Date.parse(ts[keep[keep.length - 1]]) : afterMs,
    };
  }

  function emptyQueue() {
    return { ex: [], equity: [], drawdown: [], lx: [], latency: [], rejections: null };
  }

  function queueEquity(equity) {
    if (!equity || !equity.ts || !equity.ts.length) return;
    var fresh = newPoints(equity.ts, [equity.equity, equity.drawdown_pct], current.equityMs);
    if (!fresh.x.length) return;
    queued.ex.push.apply(queued.ex, fresh.x);
    queued.equity.push.apply(queued.equity, fresh.columns[0]);
    queued.drawdown.push.apply(queued.drawdown, fresh.columns[1]);
    current.equityMs = fresh.lastMs;
  }

  function queueLatency(latency) {
    if (!latency || !latency.ts || !latency.ts.length) return;
    var fresh = newPoints(latency.ts, [latency.value], current.latencyMs);
    if (!fresh.x.length) return;
    queued.lx.push.apply(queued.lx, fresh.x);
    queued.latency.push.apply(queued.latency, fresh.columns[0]);
    current.latencyMs = fresh.lastMs;
  }

  function queueCharts(update) {
    if (!queued) queued = emptyQueue();
    queueEquity(update.equity);
    queueLatency(update.latency);
    if (update.rejections && update.rejections.ts && update.rejections.ts.length) {
      queued.rejections = update.rejections;
    }
    if (!chartTimer) chartTimer = setTimeout(drawQueued, CHART_MS);
  }

  function drawQueued() {
    chartTimer = null;
    if (replacing) {
      chartTimer = setTimeout(drawQueued, CHART_MS);
      return;
    }
    var q = queued;
    queued = null;
    if (!q) return;
    if (q.ex.length) {
      var t = traces.equity;
      Plotly.extendTraces(
        charts.equity, { x: [q.ex, q.ex], y: [q.equity, q.drawdown] }, [t.equity, t.drawdown],
        MAX_POINTS
      );
    }
    if (q.lx.length) {
      Plotly.extendTraces(
        charts.latency, { x: [q.lx], y: [q.latency] }, [traces.latency.latency], MAX_POINTS
      );
    }
    if (q.rejections) mergeRejections(q.rejections);
  }

  function mergeRejections(rejections) {
    // The last minutes' buckets replace the chart's tail (the current minute keeps changing).
    var trace = charts.rejections.data[traces.rejections.rejection];
    var first = localX(rejections.ts[0]);
    var cut = trace.x.length;
    while (cut > 0 && trace.x[cut - 1] >= first) cut -= 1;
    trace.x.splice(cut);
    trace.y.splice(cut);
    Plotly.extendTraces(
      charts.rejections,
      { x: [rejections.ts.map(localX)], y: [rejections.rejection_pct] },
      [traces.rejections.rejection],
      MAX_POINTS
    );
  }

  // --- tables ----------------------------------------------------------------------------------

  function td(text, className) {
    var cell = document.createElement("td");
    if (className) cell.className = className;
    if (text instanceof Node) cell.appendChild(text);
    else cell.textContent = text;
    return cell;
  }

  function tr(cells, attrs) {
    var row = document.createElement("tr");
    Object.keys(attrs || {}).forEach(function (key) {
      row.dataset[key] = attrs[key];
    });
    cells.forEach(function (cell) {
      row.appendChild(cell);
    });
    return row;
  }

  function emptyRow(columns, text) {
    var row = tr([td(text, "muted")]);
    row.className = "empty-row";
    row.firstChild.colSpan = columns;
    return row;
  }

  function fill(tbody, rows, columns, empty) {
    tbody.replaceChildren.apply(tbody, rows.length ? rows : [emptyRow(columns, empty)]);
  }

  function badge(className, text) {
    var span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    return span;
  }

  function positionRow(pos) {
    var recon = pos.mismatch_since
      ? badge("badge mismatch", "≠ since ")
      : badge("muted", "matches");
    if (pos.mismatch_since) recon.appendChild(Live.timeElement(pos.mismatch_since));
    var row = tr([
      td(pos.symbol, "sticky-col"), td(pos.sector, "muted"), td(pos.currency, "muted"),
      td(fmt.quantity(pos.quantity), "num"), td(fmt.quantity(pos.reported_quantity), "num"),
      td(fmt.money(pos.avg_price), "num"), td(fmt.money(pos.last_price), "num"),
      td(fmt.money(pos.market_value), "num"),
      td(fmt.signed(pos.unrealized_pnl), "num " + fmt.signClass(pos.unrealized_pnl)),
      td(fmt.signed(pos.realized_pnl), "num " + fmt.signClass(pos.realized_pnl)),
      td(recon),
    ], { symbol: pos.symbol });
    if (pos.mismatch_since) row.className = "mismatch-row";
    return row;
  }

  // The totals in the account currency; null is an unknown (a currency without a rate).
  function renderPnl(pnl) {
    [["pnl-realized", pnl.realized], ["pnl-unrealized", pnl.unrealized]].forEach(function (pair) {
      var el = document.getElementById(pair[0]);
      el.textContent = pair[1] === null ? "unknown" : fmt.signed(pair[1]);
      el.className = "num " + (pair[1] === null ? "" : fmt.signClass(pair[1]));
    });
    document.getElementById("pnl-unconverted").textContent = pnl.unconverted.length
      ? "(no FX rate for " + pnl.unconverted.join(", ") + ")" : "";
  }

  function orderRow(o) {
    return tr([
      td(o.client_order_id, "mono"), td(o.symbol), td(o.side, "side-" + o.side), td(o.order_type),
      td(fmt.quantity(o.quantity), "num"), td(fmt.quantity(o.filled_quantity), "num"),
      td(fmt.money(o.limit_price), "num"), td(o.status), td(Live.timeElement(o.updated_at)),
    ], { order: o.client_order_id });
  }

  function fillRow(f) {
    var slip = f.slippage_bps;
    return tr([
      td(Live.timeElement(f.ts)), td(f.symbol), td(f.side, "side-" + f.side),
      td(fmt.quantity(f.quantity), "num"), td(fmt.money(f.price), "num"),
      td(fmt.money(f.expected_price), "num"),
      td(fmt.bps(slip), "num" + (slip > 0 ? " neg" : slip < 0 ? " pos" : "")),
    ], { fill: String(f.id) });
  }

  function logRow(log) {
    var row = tr([td(Live.timeElement(log.ts)), td(log.level, "level"), td(log.message, "wrap")]);
    row.className = "log-" + log.level;
    return row;
  }

  function commandRow(c) {
    return tr([
      td(Live.timeElement(c.created_at)), td(c.kind), td(c.issued_by),
      td(badge("status status-" + c.status, c.status)),
      td(c.shortfall ? badge("shortfall", c.shortfall) : ""),
    ], { command: c.id });
  }

  function renderPositions(positions) {
    fill(document.querySelector("#positions-table tbody"), positions.map(positionRow), 11, "No open positions.");
    document.getElementById("positions-count").textContent = String(positions.length);
  }

  function renderOrders(orders) {
    fill(document.querySelector("#orders-table tbody"), orders.map(orderRow), 9, "No working orders.");
    document.getElementById("orders-count").textContent = String(orders.length);
  }

  function replaceFills(fills) {
    fill(document.querySelector("#fills-table tbody"), fills.map(fillRow), 7, "No fills yet.");
    current.fillId = fills.length ? fills[0].id : 0;
  }

  function prependFills(fills) {
    var fresh = (fills || []).filter(function (f) {
      return f.id > current.fillId;
    });
    if (!fresh.length) return;
    var tbody = document.querySelector("#fills-table tbody");
    var empty = tbody.querySelector(".empty-row");
    if (empty) empty.remove();
    var rows = fresh.map(fillRow);
    rows.forEach(function (row) {
      row.classList.add("fresh");
    });
    tbody.prepend.apply(tbody, rows);
    while (tbody.rows.length > MAX_FILLS) tbody.deleteRow(-1);
    current.fillId = fresh[0].id;
  }

  // --- header and figures ------------------------------------------------------------------------

  function setText(el, text, className) {
    if (!el) return;
    var changed = el.textContent !== text;
    el.textContent = text;
    if (className !== undefined) el.className = className;
    if (changed) {
      el.classList.remove("changed");
      void el.offsetWidth; // restart the animation
      el.classList.add("changed");
    }
  }

  function col(name) {
    return root.querySelector('[data-col="' + name + '"]');
  }

  function renderRow(row) {
    if (!row) return;
    var conn = col("connection") && col("connection").querySelector(".conn");
    if (conn) Live.renderConnection(conn, row.connection, row.last_seen_at);
    var reported = document.getElementById("reported-state");
    if (reported) {
      setText(reported, row.reported_state || "—");
      reported.className = "state state-" + (row.reported_state || "unknown").toLowerCase();
      var desired = document.getElementById("desired-state");
      desired.textContent = "→ " + row.desired_state;
      desired.className = "state-desired state-" + row.desired_state.toLowerCase();
      desired.hidden = Live.desiredHidden(row);
      Live.renderCause(document.getElementById("state-cause").querySelector("[data-cause]"), row);
      var own = document.getElementById("engine-reason");
      own.hidden = !row.engine_reason || row.cause_by === "engine";
      own.querySelector(".cause-why").textContent = row.engine_reason || "";
    }
    setText(col("equity"), fmt.money(row.equity), "num");
    setText(col("day_pnl"), fmt.signed(row.day_pnl), "num " + fmt.signClass(row.day_pnl));
    setText(col("drawdown_pct"), fmt.drawdown(row.drawdown_pct), row.drawdown_pct ? "num neg" : "num");
    setText(col("gross_exposure"), fmt.money(row.gross_exposure, 0), "num");
    var positions = col("open_positions");
    if (positions) {
      positions.querySelector(".v").textContent = String(row.open_positions);
      var mismatch = positions.querySelector(".badge.mismatch");
      mismatch.hidden = !row.mismatches;
      mismatch.textContent = "≠ " + row.mismatches;
    }
    setText(col("working_orders"), String(row.working_orders), "num");
    var rejects = col("rejection_rate");
    setText(rejects, fmt.rate(row.rejection_rate), row.rejection_rate >= 0.05 ? "num warn" : "num");
    if (rejects) rejects.title = row.rejected_today + " of " + row.orders_today + " orders today";
    setText(col("latency_ms"), fmt.latency(row.latency_ms), "num");
    var alerts = col("firing_alerts");
    if (alerts) {
      alerts.replaceChildren(badge(row.firing_alerts ? "badge alert" : "muted", String(row.firing_alerts)));
    }
    var halted = row.desired_state === "HALTED";
    root.querySelectorAll(".when-halted").forEach(function (el) { el.hidden = !halted; });
    root.querySelectorAll(".when-not-halted").forEach(function (el) { el.hidden = halted; });
    var resume = root.querySelector('.when-not-halted [data-open-dialog="resume-dialog"]');
    if (resume) {
      resume.disabled = row.desired_state === "ACTIVE";
      if (resume.disabled) resume.title = row.name + " is already ACTIVE";
      else resume.removeAttribute("title");
    }
  }

  function stateChanged(a, b) {
    return !a || !b || a.desired_state !== b.desired_state || a.reported_state !== b.reported_state;
  }

  function older(row, than) {
    var a = Date.parse((row && row.last_seen_at) || "");
    var b = Date.parse((than && than.last_seen_at) || "");
    return !isNaN(a) && !isNaN(b) && a < b;
  }

  // --- live --------------------------------------------------------------------------------------

  function onSnapshot(snapshot) {
    current.row = snapshot.row;
    renderRow(snapshot.row);
    renderPositions(snapshot.positions);
    renderPnl(snapshot.pnl);
    renderOrders(snapshot.orders);
    replaceFills(snapshot.fills);
    fill(document.querySelector("#logs-table tbody"), snapshot.logs.map(logRow), 3, "No logs yet.");
    fill(document.querySelector("#commands-table tbody"), snapshot.commands.map(commandRow), 5, "No commands yet.");
    replaceSeries(snapshot);
  }

  function onUpdate(update) {
    if (update.topic !== "engine:" + engineId) return;
    var row = update.row;
    var stale = older(row, current.row);
    if (row && !stale) {
      // A state change brings new logs and command results, which updates do not carry.
      var refetch = current.row && stateChanged(row, current.row);
      current.row = row;
      renderRow(row);
      if (update.positions) renderPositions(update.positions);
      if (update.pnl) renderPnl(update.pnl);
      if (update.orders) renderOrders(update.orders);
      if (refetch) live.resync();
    }
    prependFills(update.fills);
    queueCharts(update);
  }

  var live = null;
  draw(function () {
    live = Live.connect({
      topics: ["engine:" + root.dataset.engine],
      snapshotUrl: root.dataset.snapshotUrl,
      onSnapshot: onSnapshot,
      onUpdate: onUpdate,
    });
    window.engineLive = live;
  });
  current.fillId = Number((document.querySelector("#fills-table tbody tr[data-fill]") || { dataset: { fill: 0 } }).dataset.fill);
})();
