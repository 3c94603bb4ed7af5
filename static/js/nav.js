// The admins' navigation groups its pages in <details> menus (templates/_nav.html), which open and
// close without this file, by mouse or by Enter or Space on the group's name. This adds what a menu
// is expected to do besides: one open at a time; Escape closes it and puts focus back on its name;
// a click elsewhere, or focus moving out of it (Tab past its last link), closes it.
(function () {
  "use strict";
  const GROUP = "details[data-nav-group]";

  function closeAll(except) {
    document.querySelectorAll(GROUP + "[open]").forEach(function (group) {
      if (group !== except) group.open = false;
    });
  }

  // "toggle" does not bubble: listen while it is captured on its way down.
  document.addEventListener("toggle", function (event) {
    const group = event.target;
    if (group.matches && group.matches(GROUP) && group.open) closeAll(group);
  }, true);

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    if (document.querySelector("dialog:modal")) return; // the dialog's Escape, not ours
    const group = document.querySelector(GROUP + "[open]");
    if (!group) return; // Escape stays the page's own (dialogs, fields)
    const hadFocus = group.contains(document.activeElement);
    group.open = false;
    if (hadFocus) group.querySelector("summary").focus();
    event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    if (!event.target.closest || !event.target.closest(GROUP)) closeAll(null);
  });

  document.addEventListener("focusout", function (event) {
    const group = event.target.closest && event.target.closest(GROUP);
    if (!group || !group.open) return;
    // relatedTarget is where focus goes; null when it leaves for no focusable element (a click
    // on the page, which the click handler settles) or for another window.
    if (event.relatedTarget && !group.contains(event.relatedTarget)) group.open = false;
  });
})();
