// Live updates for the desk pages: one socket to /ws/live/v1, snapshots when anything was missed.
//
// Live.connect({topics, snapshotUrl, onSnapshot, onUpdate}) subscribes to the topics and calls
// onSnapshot(json) with a fresh snapshot after every (re)connect, after a skipped sequence number
// and whenever the server says "resync"; onUpdate(update) gets each topic's update in between.
// Updates that arrive while a snapshot is on its way are held and replayed after it, so the page
// functions must tolerate an update older than the snapshot (they compare times and ids).
//
// Live.fmt writes numbers as dashboard/templatetags/desk.py does, so a live cell looks like the
// server-rendered one; Live.localizeTimes shows <time data-local> in the operator's timezone.
(function () {
  "use strict";

  var DASH = "—";
  var MINUS = "\u2212";
  var BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
  var BACK_BANNER_MS = 3000;
  var CLOSE_FORBIDDEN = 4403;

  // --- formatting ---------------------------------------------------------------------------

  var grouped = {};
  function number(value, places) {
    var f = grouped[places];
    if (!f) {
      f = grouped[places] = new Intl.NumberFormat("en-US", {
        minimumFractionDigits: places,
        maximumFractionDigits: places,
      });
    }
    return f.format(Math.abs(value));
  }

  function isZeroText(text) {
    return !/[1-9]/.test(text);
  }

  var fmt = {
    money: function (value, places) {
      if (value === null || value === undefined) return DASH;
      var text = number(value, places === undefined ? 2 : places);
      return value < 0 && !isZeroText(text) ? MINUS + text : text;
    },
    signed: function (value, places) {
      if (value === null || value === undefined) return DASH;
      var text = number(value, places === undefined ? 2 : places);
      if (isZeroText(text)) return text;
      return (value > 0 ? "+" : MINUS) + text;
    },
    signClass: function (value) {
      if (!value) return "zero";
      return value > 0 ? "pos" : "neg";
    },
    drawdown: function (value) {
      // One that rounds to 0.00 % is none (as the server writes it).
      if (!value || Math.abs(value) < 0.005) return "0.00%";
      return MINUS + number(value, 2) + "%";
    },
    rate: function (value) {
      if (value === null || value === undefined) return DASH;
      return (value * 100).toFixed(1) + "%";
    },
    latency: function (value) {
      if (value === null || value === undefined) return DASH;
      return number(value, value < 100 ? 1 : 0) + " ms";
    },
    bps: function (value) {
      if (value === null || value === undefined) return DASH;
      var text = Math.abs(value).toFixed(1);
      if (text === "0.0") return text;
      return (value > 0 ? "+" : MINUS) + text;
    },
    quantity: function (value) {
      if (value === null || value === undefined) return DASH;
      var text = new Intl.NumberFormat("en-US", { maximumFractionDigits: 8 }).format(
        Math.abs(value)
      );
      return value < 0 && text !== "0" ? MINUS + text : text;
    },
    age: function (seconds) {
      seconds = Math.max(Math.floor(seconds), 0);
      if (seconds < 60) return seconds + "s";
      if (seconds < 3600) return Math.floor(seconds / 60) + "m";
      if (seconds < 86400) return Math.floor(seconds / 3600) + "h";
      return Math.floor(seconds / 86400) + "d";
    },
  };

  // --- times in the operator's timezone ------------------------------------------------------

  var clock = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  var stamp = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZoneName: "short",
  });
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";

  function localTime(iso, style) {
    var ms = Date.parse(iso);
    if (isNaN(ms)) return DASH;
    return (style === "stamp" ? stamp : clock).format(new Date(ms));
  }

  function timeElement(iso, style) {
    var el = document.createElement("time");
    if (!iso) {
      el.textContent = DASH;
      return el;
    }
    el.dateTime = iso;
    el.dataset.local = style || "time";
    el.textContent = localTime(iso, el.dataset.local);
    el.title = stamp.format(new Date(Date.parse(iso))) + " (" + zone + ")";
    return el;
  }

  function localizeTimes(root) {
    (root || document).querySelectorAll("time[data-local]").forEach(function (el) {
      if (!el.dateTime) return;
      el.textContent = localTime(el.dateTime, el.dataset.local);
      el.title = stamp.format(new Date(Date.parse(el.dateTime))) + " (" + zone + ")";
    });
  }

  // --- connection cells: "online 1s", "stale 14s", "offline" --------------------------------

  function renderConnection(span, connection, lastSeen) {
    span.className = "conn conn-" + connection;
    span.dataset.last = connection;
    span.dataset.lastSeen = lastSeen || "";
    span.title = lastSeen ? "Last seen " + localTime(lastSeen, "stamp") : "Never seen";
    tickConnection(span);
  }

  function tickConnection(span) {
    var connection = span.dataset.last || span.className.replace(/.*conn-(\w+).*/, "$1");
    span.dataset.last = connection;
    var seen = Date.parse(span.dataset.lastSeen || "");
    var age = isNaN(seen) ? null : (Date.now() - seen) / 1000;
    var staleAfter = Number(document.querySelector("[data-stale-after]")?.dataset.staleAfter || 0);
    // An engine that went quiet publishes nothing: the page ages it itself.
    if (connection === "online" && staleAfter && age !== null && age > staleAfter) {
      connection = "stale";
    }
    span.className = "conn conn-" + connection;
    if (connection === "offline") {
      span.textContent = "offline";
      return;
    }
    span.textContent = connection + " ";
    var ageEl = document.createElement("span");
    ageEl.className = "age";
    ageEl.textContent = age === null ? "never" : fmt.age(age);
    span.appendChild(ageEl);
  }

  function tickAll() {
    document.querySelectorAll(".conn[data-last-seen]").forEach(tickConnection);
  }

  // --- a state's cause: "by alice 14:02:11 earnings call" (templates/dashboard/includes/state_cause.html)

  function renderCause(span, row) {
    if (!span) return;
    span.hidden = !row.cause_by;
    span.title = row.cause_title || "";
    var by = document.createElement("span");
    by.className = "cause-by";
    by.textContent = (row.cause_by === "engine" ? "" : "by ") + (row.cause_by || "");
    var why = document.createElement("span");
    why.className = "cause-why";
    why.textContent = row.cause_reason || "";
    span.replaceChildren(by, " ", timeElement(row.cause_at), " ", why);
  }

  function desiredHidden(row) {
    // The wanted state is worth showing when the engine is not in it (a fresh engine that has
    // reported nothing yet is not news).
    return (
      row.desired_state === row.reported_state ||
      (!row.reported_state && row.desired_state === "ACTIVE")
    );
  }

  // --- the banner ----------------------------------------------------------------------------

  var bannerTimer = null;
  function banner(state, text) {
    var el = document.getElementById("live-banner");
    document.body.dataset.live = state;
    if (!el) return;
    clearTimeout(bannerTimer);
    if (!text) {
      el.hidden = true;
      return;
    }
    el.className = "live-banner live-" + state;
    el.textContent = text;
    el.hidden = false;
    if (state === "live") {
      bannerTimer = setTimeout(function () {
        el.hidden = true;
      }, BACK_BANNER_MS);
    }
  }

  // --- the socket ----------------------------------------------------------------------------

  function connect(options) {
    var ws = null;
    var lastSeq = 0;
    var attempts = 0;
    var wasDown = false;
    var held = null; // updates held while a snapshot is being fetched
    var fetchAgain = false;
    var retryTimer = null;
    var state = { snapshots: 0, updates: 0, connects: 0 };

    function socketUrl() {
      var scheme = location.protocol === "https:" ? "wss:" : "ws:";
      return scheme + "//" + location.host + "/ws/live/v1";
    }

    function open() {
      clearTimeout(retryTimer);
      retryTimer = null;
      lastSeq = 0;
      try {
        ws = new WebSocket(socketUrl());
      } catch (err) {
        lost();
        return;
      }
      ws.onmessage = function (event) {
        receive(JSON.parse(event.data));
      };
      ws.onclose = function (event) {
        ws = null;
        if (event.code === CLOSE_FORBIDDEN) {
          banner("down", "Live updates refused — log in again and reload the page.");
          return;
        }
        lost();
      };
    }

    function lost() {
      wasDown = true;
      held = null;
      banner("down", "Live updates lost — reconnecting…");
      var base = BACKOFF_MS[Math.min(attempts, BACKOFF_MS.length - 1)];
      attempts += 1;
      retryTimer = setTimeout(open, base * (0.75 + Math.random() / 2));
    }

    function receive(message) {
      var skipped = message.seq !== lastSeq + 1;
      lastSeq = message.seq;
      if (message.type === "hello") {
        ws.send(JSON.stringify({ subscribe: options.topics }));
        return;
      }
      if (message.type === "subscribed") {
        attempts = 0;
        state.connects += 1;
        // What changed between the page's render (or the socket's loss) and now is in no update.
        resync();
        return;
      }
      if (message.type === "alert") {
        // Sent to every page whatever it subscribed to; whoever shows alerts listens for this.
        document.dispatchEvent(new CustomEvent("live:alert", { detail: message.alert }));
        return;
      }
      if (message.type === "error") {
        if (window.console) console.warn("live:", message.message);
        return;
      }
      if (message.type !== "update") return;
      if (skipped || (message.resync && message.resync.length)) resync();
      message.updates.forEach(function (update) {
        if (held) held.push(update);
        else deliver(update);
      });
    }

    function deliver(update) {
      state.updates += 1;
      options.onUpdate(update);
    }

    function resync() {
      if (held) {
        fetchAgain = true; // the snapshot on its way may predate what was missed
        return;
      }
      held = [];
      fetchAgain = false;
      fetch(options.snapshotUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok || response.redirected) throw new Error("snapshot: " + response.status);
          return response.json();
        })
        .then(function (snapshot) {
          var replay = held || [];
          held = null;
          state.snapshots += 1;
          options.onSnapshot(snapshot);
          replay.forEach(deliver);
          if (fetchAgain) resync();
          else if (ws && ws.readyState === WebSocket.OPEN) live();
        })
        .catch(function (err) {
          held = null;
          if (window.console) console.warn("live:", err);
          // The socket's loss will bring a new snapshot; a lone failed fetch is retried.
          if (ws && ws.readyState === WebSocket.OPEN) setTimeout(resync, 2000);
        });
    }

    function live() {
      if (wasDown) {
        wasDown = false;
        banner("live", "Live again");
      } else {
        banner("live", null);
      }
    }

    window.addEventListener("online", function () {
      if (!ws && retryTimer) open();
    });
    document.body.dataset.live = "connecting";
    open();
    return {
      state: state,
      resync: function () {
        if (ws && ws.readyState === WebSocket.OPEN) resync();
      },
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    tickAll();
    setInterval(tickAll, 1000);
  });

  window.Live = {
    connect: connect,
    fmt: fmt,
    localTime: localTime,
    localizeTimes: localizeTimes,
    timeElement: timeElement,
    renderConnection: renderConnection,
    desiredHidden: desiredHidden,
    renderCause: renderCause,
  };
})();
