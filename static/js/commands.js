// Command dialogs: the header's kill button and the fleet's per-engine and selection actions.
// A button with data-open-dialog="<id>" opens that <dialog>; data-selector (or
// data-selector-from="<css of a select>") fills the form's selector, data-label names the
// target, data-action replaces the form's action. A field with data-expect keeps the submit
// disabled until it holds exactly that text (the server checks it again).
(function () {
  "use strict";

  function killConfirmation(selector) {
    // The same rule as services.kill_confirmation: an engine's name, or KILL ALL.
    return selector.indexOf("engine:") === 0 ? selector.slice("engine:".length) : "KILL ALL";
  }

  function syncConfirm(form) {
    var field = form.querySelector("[data-expect]");
    if (!field) return;
    var submit = form.querySelector("button[type=submit]");
    submit.disabled = field.value.trim() !== field.dataset.expect;
  }

  var scopeAsked = 0;

  function showKillScope(dialog, selector) {
    // What the kill will hit, counted by the server for this selector. The kill never waits
    // for it: the form works whatever this answers, or if it never does.
    var line = dialog.querySelector("[data-kill-scope]");
    if (!line) return;
    var asked = ++scopeAsked;
    line.classList.remove("error");
    line.textContent = "Counting the engines this kill hits…";
    fetch(line.dataset.url + "?selector=" + encodeURIComponent(selector), {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(JSON.stringify(body.errors || body));
          return body;
        });
      })
      .then(function (scope) {
        if (asked !== scopeAsked) return;
        var text = "This kill hits " + scope.engines + " engine" + (scope.engines === 1 ? "" : "s") +
          ", gross exposure " + scope.gross_exposure_text;
        if (scope.halted_already) text += " (" + scope.halted_already + " already HALTED)";
        line.textContent = text + ".";
      })
      .catch(function (error) {
        if (asked !== scopeAsked) return;
        line.classList.add("error");
        line.textContent = "Could not count the engines this kill hits (" + error.message + ").";
      });
  }

  function openDialog(button) {
    var dialog = document.getElementById(button.dataset.openDialog);
    if (!dialog) return;
    var from = button.closest("dialog");
    if (from) from.close(); // a dialog that leads to another (More… -> Reduce)
    var passing = dialog.querySelectorAll("[data-pass-target]");
    if (passing.length) {
      // A menu of dialogs: its buttons open theirs for the same target.
      passing.forEach(function (next) {
        next.dataset.selector = button.dataset.selector;
        next.dataset.label = button.dataset.label;
      });
      dialog.querySelectorAll("[data-target-label]").forEach(function (el) {
        el.textContent = button.dataset.label;
      });
      dialog.showModal();
      return;
    }
    var form = dialog.querySelector("form");
    form.reset();
    var selector = button.dataset.selector;
    var label = button.dataset.label;
    if (button.dataset.selectorFrom) {
      var select = document.querySelector(button.dataset.selectorFrom);
      selector = select.value;
      label = select.options[select.selectedIndex].text;
    }
    if (selector !== undefined) {
      form.querySelector("[name=selector]").value = selector;
      var expect = form.querySelector("[data-expect]");
      if (expect) {
        expect.dataset.expect = killConfirmation(selector);
        dialog.querySelectorAll(".expect").forEach(function (el) {
          el.textContent = expect.dataset.expect;
        });
      }
    }
    if (label !== undefined) {
      dialog.querySelectorAll("[data-target-label]").forEach(function (el) {
        el.textContent = label;
      });
    }
    if (button.dataset.action) form.action = button.dataset.action;
    var chosen = form.querySelector("[name=selector]");
    if (chosen) showKillScope(dialog, chosen.value);
    syncConfirm(form);
    dialog.showModal();
  }

  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-open-dialog]");
    if (opener && !opener.disabled) {
      openDialog(opener);
      return;
    }
    var closer = event.target.closest("[data-close-dialog]");
    if (closer) closer.closest("dialog").close();
  });

  document.addEventListener("input", function (event) {
    if (event.target.matches("[data-expect]")) syncConfirm(event.target.form);
  });
})();
