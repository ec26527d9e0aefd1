// What htmx attributes cannot say under a CSP without inline scripts or eval.
"use strict";

// A note or silence form empties once the server took it; on an error it keeps what was typed.
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt;
  if (event.detail.successful && form instanceof HTMLFormElement && form.hasAttribute("data-reset-on-success")) {
    form.reset();
  }
});

// Every <time> shows UTC and the relative time, rendered by the server; this adds the viewer's local
// time, which only the browser knows: "2026-12-06 03:14:05 UTC (04:14 local) · 3 min ago".
// Nothing is added where local time is UTC. Runs on the page and on each block htmx swaps in.
function pad(n) {
  return String(n).padStart(2, "0");
}

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime] .local")) {
    const at = new Date(el.parentElement.getAttribute("datetime"));
    if (Number.isNaN(at.getTime()) || at.getTimezoneOffset() === 0) {
      continue;
    }
    // The local date where it differs from the UTC date shown, unless the line shows the time of day only.
    const short = el.parentElement.hasAttribute("data-short");
    const sameDay = at.getDate() === at.getUTCDate();
    const day = short || sameDay ? "" : `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} `;
    el.textContent = ` (${day}${pad(at.getHours())}:${pad(at.getMinutes())} local)`;
  }
}

document.addEventListener("DOMContentLoaded", () => localTimes(document));
document.addEventListener("htmx:load", (event) => localTimes(event.target));
