// Alerts on every page: a toast when an alert fires or resolves, and the firing count on the
// Alerts link. Its own socket (no topics), so it works on pages without live tables too.
(function () {
  "use strict";
  var badge = document.getElementById("alerts-badge");
  if (!badge) return; // not logged in, or no permission to see alerts
  var BACKOFF_MS = [1000, 2000, 5000, 10000, 30000];
  var attempts = 0;
  var countTimer = null;

  function refreshCount() {
    clearTimeout(countTimer);
    countTimer = setTimeout(function () {
      fetch(badge.dataset.countUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          if (!body) return;
          badge.textContent = String(body.firing);
          badge.hidden = body.firing === 0;
          badge.classList.toggle("critical", body.critical > 0);
        })
        .catch(function () {});
    }, 150);
  }

  function toast(alert) {
    var box = document.getElementById("toasts");
    if (!box) {
      box = document.createElement("div");
      box.id = "toasts";
      box.setAttribute("aria-live", "assertive");
      document.body.appendChild(box);
    }
    var item = document.createElement("div");
    item.className = "toast toast-" + (alert.state === "resolved" ? "resolved" : alert.severity);
    var main = document.createElement("a");
    main.className = "toast-main";
    main.href = badge.parentElement.getAttribute("href");
    var head = document.createElement("strong");
    head.textContent = alert.state === "resolved" ? "Resolved" : alert.state === "firing" ? "Alert (" + alert.severity + ")" : alert.state;
    var text = document.createElement("span");
    text.textContent = alert.summary;
    main.appendChild(head);
    main.appendChild(text);
    item.appendChild(main);
    // What to do about it (journal runbooks): its own link, so it is one click from the toast.
    if (alert.runbook && alert.state !== "resolved") {
      var plan = document.createElement("a");
      plan.className = "toast-runbook";
      plan.href = alert.runbook.url;
      plan.textContent = "Runbook: " + alert.runbook.title;
      item.appendChild(plan);
    }
    box.appendChild(item);
    // Critical ones stay until clicked; the rest fade after a while.
    if (alert.severity !== "critical" || alert.state === "resolved") {
      setTimeout(function () { item.remove(); }, 8000);
    }
  }

  function open() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var ws = new WebSocket(scheme + "//" + location.host + "/ws/live/v1");
    ws.onopen = function () {
      attempts = 0;
      refreshCount();
    };
    ws.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type === "hello") {
        // Sent once the server has joined this socket to the alerts: from now on none is missed
        // (tests wait for this mark).
        badge.dataset.live = "on";
        return;
      }
      if (message.type !== "alert") return;
      if (message.alert.state !== "pending" && !message.alert.acknowledged_by) toast(message.alert);
      refreshCount();
    };
    ws.onclose = function (event) {
      delete badge.dataset.live;
      if (event.code === 4403) return; // logged out
      var wait = BACKOFF_MS[Math.min(attempts, BACKOFF_MS.length - 1)];
      attempts += 1;
      setTimeout(open, wait * (0.75 + Math.random() / 2));
    };
  }

  refreshCount();
  open();
})();
