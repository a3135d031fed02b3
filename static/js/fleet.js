// The fleet overview: rows and totals updated in place from the live "fleet" topic.
(function () {
  "use strict";

  var table = document.getElementById("fleet-table");
  if (!table) return;
  var fmt = Live.fmt;
  var rows = {}; // engine id -> the newest FleetRow seen
  var askedAbout = {}; // engines not on the page, already checked against a snapshot
  var complete = false; // rows holds every engine of the table (after the first snapshot)
  var mode = table.dataset.mode;
  var tag = table.dataset.tag;

  function setCell(cell, text, classes) {
    if (!cell) return;
    var changed = cell.textContent !== text;
    cell.textContent = text;
    if (classes !== undefined) cell.className = classes;
    if (changed) flash(cell);
  }

  function flash(cell) {
    cell.classList.remove("changed");
    void cell.offsetWidth; // restart the animation
    cell.classList.add("changed");
  }

  function cell(tr, name) {
    return tr.querySelector('[data-col="' + name + '"]');
  }

  function renderCount(td, count, mismatches) {
    var badge = td.querySelector(".badge.mismatch");
    var value = td.querySelector(".v");
    if (value.textContent !== String(count)) flash(td);
    value.textContent = String(count);
    badge.hidden = !mismatches;
    badge.textContent = "≠ " + mismatches;
  }

  var STAGE_LABELS = {backtest: "Backtest", paper: "Paper", shadow: "Shadow",
                      small_capital: "Small capital", full: "Full production"};
  // The badges' short names (desk.stage_short): the name column stays narrow on a phone.
  var STAGE_SHORT = {backtest: "Backtest", paper: "Paper", shadow: "Shadow",
                     small_capital: "Small cap", full: "Full"};

  function renderStage(tr, row) {
    // A promotion shows at once; whether the new stage is ready for the next is the page's to say.
    var badge = tr.querySelector(".stage-badge");
    if (!badge || !row.stage || badge.dataset.stage === row.stage) return;
    badge.dataset.stage = row.stage;
    badge.className = "stage-badge stage-" + row.stage;
    badge.textContent = STAGE_SHORT[row.stage] || row.stage;
    badge.title = "Stage: " + (STAGE_LABELS[row.stage] || row.stage) + " (changed since the page was drawn)";
    flash(badge.parentNode);
  }

  function renderRow(tr, row) {
    Live.renderConnection(cell(tr, "connection").querySelector(".conn"), row.connection, row.last_seen_at);
    renderStage(tr, row);

    var state = cell(tr, "state");
    var reported = state.querySelector(".state");
    var reportedText = row.reported_state || "—";
    if (reported.textContent !== reportedText) flash(state);
    reported.textContent = reportedText;
    reported.className = "state state-" + (row.reported_state || "unknown").toLowerCase();
    var desired = state.querySelector(".state-desired");
    desired.textContent = "→ " + row.desired_state;
    desired.className = "state-desired state-" + row.desired_state.toLowerCase();
    desired.hidden = Live.desiredHidden(row);
    Live.renderCause(state.querySelector("[data-cause]"), row);
    tr.className = "engine-row state-row-" + row.desired_state.toLowerCase();

    setCell(cell(tr, "equity"), fmt.money(row.equity), "num");
    setCell(cell(tr, "day_pnl"), fmt.signed(row.day_pnl), "num " + fmt.signClass(row.day_pnl));
    var drawdown = fmt.drawdown(row.drawdown_pct);
    setCell(cell(tr, "drawdown_pct"), drawdown, drawdown !== "0.00%" ? "num neg" : "num");
    setCell(cell(tr, "gross_exposure"), fmt.money(row.gross_exposure, 0), "num");
    renderCount(cell(tr, "open_positions"), row.open_positions, row.mismatches);
    setCell(cell(tr, "working_orders"), String(row.working_orders), "num");
    var rejects = cell(tr, "rejection_rate");
    setCell(rejects, fmt.rate(row.rejection_rate), row.rejection_rate >= 0.05 ? "num warn" : "num");
    rejects.title = row.rejected_today + " of " + row.orders_today + " orders today";
    setCell(cell(tr, "latency_ms"), fmt.latency(row.latency_ms), "num");
    renderAlerts(cell(tr, "firing_alerts"), row.firing_alerts);
    renderActions(tr, row);
  }

  function renderAlerts(td, count) {
    if (!td) return;
    var span = document.createElement("span");
    span.className = count ? "badge alert" : "muted";
    span.textContent = String(count);
    if (td.textContent !== String(count)) flash(td);
    td.replaceChildren(span);
  }

  function renderActions(tr, row) {
    var halted = row.desired_state === "HALTED";
    var whenHalted = tr.querySelector(".when-halted");
    var whenNot = tr.querySelector(".when-not-halted");
    if (whenHalted) whenHalted.hidden = !halted;
    if (whenNot) whenNot.hidden = halted;
    // Pause or Resume, as the desired state calls for: the row keeps one line.
    var pause = whenNot && whenNot.querySelector('[data-open-dialog="pause-dialog"]');
    var resume = whenNot && whenNot.querySelector('[data-open-dialog="resume-dialog"]');
    if (pause) pause.hidden = row.desired_state !== "ACTIVE";
    if (resume) resume.hidden = row.desired_state === "ACTIVE";
  }

  function renderTotals(totals) {
    var foot = document.getElementById("fleet-totals");
    foot.querySelector(".v-online").textContent = String(totals.online);
    foot.querySelector(".v-engines").textContent = String(totals.engines);
    var byState = foot.querySelector('[data-total="by_state"]');
    byState.replaceChildren();
    Object.keys(totals.by_state).forEach(function (state, i) {
      if (i) byState.appendChild(document.createTextNode(" · "));
      var span = document.createElement("span");
      span.className = "state state-" + state.toLowerCase();
      span.textContent = totals.by_state[state] + " " + state;
      byState.appendChild(span);
    });
    setCell(foot.querySelector('[data-total="equity"]'), fmt.money(totals.equity), "num");
    setCell(
      foot.querySelector('[data-total="day_pnl"]'),
      fmt.signed(totals.day_pnl),
      "num " + fmt.signClass(totals.day_pnl)
    );
    setCell(foot.querySelector('[data-total="gross_exposure"]'), fmt.money(totals.gross_exposure, 0), "num");
    renderCount(foot.querySelector('[data-total="open_positions"]'), totals.open_positions, totals.mismatches);
    setCell(foot.querySelector('[data-total="working_orders"]'), String(totals.working_orders), "num");
    setCell(foot.querySelector('[data-total="firing_alerts"]'), String(totals.firing_alerts || 0), "num");
  }

  function computeTotals() {
    // The same sums as dashboard.overview.fleet_totals, over the engines on this page.
    var totals = {
      engines: 0, online: 0, equity: 0, day_pnl: 0, gross_exposure: 0, open_positions: 0,
      working_orders: 0, mismatches: 0, firing_alerts: 0, by_state: {},
    };
    table.querySelectorAll("tbody tr[data-id]").forEach(function (tr) {
      var row = rows[tr.dataset.id];
      if (!row) return;
      totals.engines += 1;
      totals.online += row.connection === "online" ? 1 : 0;
      totals.equity += row.equity || 0;
      totals.day_pnl += row.day_pnl;
      totals.gross_exposure += row.gross_exposure;
      totals.open_positions += row.open_positions;
      totals.working_orders += row.working_orders;
      totals.mismatches += row.mismatches;
      totals.firing_alerts += row.firing_alerts || 0;
      var state = row.reported_state || "UNKNOWN";
      totals.by_state[state] = (totals.by_state[state] || 0) + 1;
    });
    return totals;
  }

  function belongsHere(row) {
    return (!mode || row.mode === mode) && (!tag || row.strategy_tags.indexOf(tag) >= 0);
  }

  function older(row, than) {
    // A row read before the one on screen (held during a snapshot, or delayed) is not shown.
    var a = Date.parse(row.last_seen_at || "");
    var b = Date.parse((than && than.last_seen_at) || "");
    return !isNaN(a) && !isNaN(b) && a < b;
  }

  function apply(row) {
    var tr = table.querySelector('tbody tr[data-id="' + row.id + '"]');
    if (!tr) {
      // Perhaps a new engine for this list: the snapshot (filtered by the server) decides.
      if (belongsHere(row) && !askedAbout[row.id]) {
        askedAbout[row.id] = true;
        window.fleetLive.resync();
      }
      return false;
    }
    if (older(row, rows[row.id])) return false;
    rows[row.id] = row;
    renderRow(tr, row);
    return true;
  }

  function onSnapshot(snapshot) {
    var seen = {};
    var changed = document.getElementById("fleet-changed");
    snapshot.rows.forEach(function (row) {
      seen[row.id] = true;
      if (!table.querySelector('tbody tr[data-id="' + row.id + '"]')) changed.hidden = false;
      rows[row.id] = null; // a snapshot is the truth, even if older than a row on screen
      apply(row);
    });
    table.querySelectorAll("tbody tr[data-id]").forEach(function (tr) {
      var gone = !seen[tr.dataset.id];
      tr.classList.toggle("gone", gone);
      if (gone) changed.hidden = false;
    });
    complete = true;
    var totals = snapshot.totals;
    totals.firing_alerts = computeTotals().firing_alerts;
    renderTotals(totals);
  }

  function onUpdate(update) {
    if (update.topic !== "fleet") return;
    var changed = false;
    update.rows.forEach(function (row) {
      changed = apply(row) || changed;
    });
    if (changed && complete) renderTotals(computeTotals());
  }

  // Which engines are ready for their next stage: asked once the table is drawn (the gates read
  // every engine's recorded data, which the fleet must not wait for).
  function markReadiness() {
    fetch(table.dataset.readinessUrl, {credentials: "same-origin"})
      .then(function (response) { return response.ok ? response.json() : {ready: {}}; })
      .then(function (data) {
        Object.keys(data.ready).forEach(function (id) {
          var badge = table.querySelector('tbody tr[data-id="' + id + '"] .stage-badge');
          if (!badge || badge.dataset.stage === data.ready[id]) return;
          var next = STAGE_LABELS[data.ready[id]] || data.ready[id];
          badge.classList.add("ready");
          badge.textContent = (STAGE_SHORT[badge.dataset.stage] || badge.dataset.stage) + " \u2191";
          badge.title = "Stage: " + (STAGE_LABELS[badge.dataset.stage] || badge.dataset.stage) +
            "; ready for " + next + ": every criterion of the step passes";
        });
      })
      .catch(function () { /* the badges stay as drawn: the go-live page says it all */ });
  }
  if (table.dataset.readinessUrl) markReadiness();

  window.fleetLive = Live.connect({
    topics: ["fleet"],
    snapshotUrl: table.dataset.snapshotUrl,
    onSnapshot: onSnapshot,
    onUpdate: onUpdate,
  });
})();
