// The batch page: renders a batch's progress, and polls the API for it until every engine has
// answered. renderBatch(root, batch) only draws; where the data comes from (this poll, later a
// WebSocket push) is the caller's business.
(function () {
  "use strict";

  var POLL_MS = 500;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function msAfter(moment, start) {
    // Date.parse keeps milliseconds; the server cuts to the millisecond the same way.
    if (!moment) return "—";
    return Math.round(Date.parse(moment) - Date.parse(start)) + " ms";
  }

  function commandRow(command) {
    var tr = el("tr");
    tr.dataset.command = command.id;
    var engine = el("td");
    var link = el("a", "", command.engine);
    link.href = "/engines/" + encodeURIComponent(command.engine) + "/commands/";
    engine.appendChild(link);
    tr.appendChild(engine);
    var status = el("td");
    status.appendChild(el("span", "status status-" + command.status, command.status));
    tr.appendChild(status);
    tr.appendChild(el("td", "num", msAfter(command.delivered_at, command.created_at)));
    tr.appendChild(el("td", "num", msAfter(command.acknowledged_at, command.created_at)));
    tr.appendChild(el("td", "num", msAfter(command.completed_at, command.created_at)));
    var state = el("td");
    if (command.state_after) {
      state.appendChild(
        el("span", "state state-" + command.state_after.toLowerCase(), command.state_after)
      );
    } else {
      state.textContent = "—";
    }
    tr.appendChild(state);
    var shortfall = el("td");
    if (command.shortfall) shortfall.appendChild(el("strong", "shortfall", command.shortfall));
    tr.appendChild(shortfall);
    return tr;
  }

  function renderBatch(root, batch) {
    root.querySelector("#batch-summary").textContent = batch.summary;
    root.querySelector("#batch-status").textContent = batch.finished
      ? "finished"
      : "waiting for engines…";
    root.dataset.finished = batch.finished ? "true" : "false";

    var byStatus = root.querySelector("#batch-by-status");
    byStatus.replaceChildren.apply(
      byStatus,
      Object.keys(batch.by_status).map(function (status) {
        return el("li", "status-" + status, batch.by_status[status] + " " + status);
      })
    );

    var incomplete = root.querySelector("#batch-incomplete");
    incomplete.replaceChildren.apply(
      incomplete,
      batch.incomplete.map(function (line) {
        return el("li", "", line);
      })
    );
    incomplete.hidden = batch.incomplete.length === 0;

    var tbody = root.querySelector("#batch-commands tbody");
    tbody.replaceChildren.apply(tbody, batch.commands.map(commandRow));
  }

  function pollBatch(url, onBatch, onError) {
    var stopped = false;
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (batch) {
          onBatch(batch);
          if (!batch.finished && !stopped) setTimeout(tick, POLL_MS);
        })
        .catch(function (error) {
          onError(error);
          // A restart of the web server or a network blip: keep trying, more slowly.
          if (!stopped) setTimeout(tick, POLL_MS * 4);
        });
    }
    tick();
    return function stop() {
      stopped = true;
    };
  }

  window.BatchPage = { render: renderBatch, poll: pollBatch };

  var root = document.getElementById("batch");
  if (root && root.dataset.finished !== "true") {
    pollBatch(
      root.dataset.url,
      function (batch) {
        renderBatch(root, batch);
      },
      function (error) {
        root.querySelector("#batch-status").textContent =
          "no update (" + error.message + "), retrying…";
      }
    );
  }
})();
