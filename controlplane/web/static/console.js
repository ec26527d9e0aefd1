// What htmx attributes cannot say under a CSP without inline scripts or eval.
"use strict";

// A note or silence form empties once the server took it; on an error it keeps what was typed.
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt;
  if (event.detail.successful && form instanceof HTMLFormElement && form.hasAttribute("data-reset-on-success")) {
    form.reset();
  }
});
