// Switchboard console: opens and closes the confirmation dialogs (the
// forms inside them do the rest; no other script runs on these pages).
"use strict";
document.addEventListener("click", function (e) {
  var open = e.target.closest("[data-dialog]");
  if (open) {
    var d = document.getElementById(open.getAttribute("data-dialog"));
    if (d && d.showModal) { e.preventDefault(); d.showModal(); }
    return;
  }
  var close = e.target.closest("[data-close]");
  if (close) {
    var dlg = close.closest("dialog");
    if (dlg) { e.preventDefault(); dlg.close(); }
  }
});
