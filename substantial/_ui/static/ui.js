// Refreshes the live part of a page (#live) every data-refresh seconds, with a pause
// button. The new part comes from the server, already escaped; no other script runs.
"use strict";
(function () {
  const live = document.getElementById("live");
  const every = live ? Number(live.dataset.refresh) : 0;
  if (!live || !(every > 0)) return;
  let paused = false;
  const button = document.createElement("button");
  button.type = "button";
  button.id = "pause";
  button.className = "pause";
  const show = () => {
    button.textContent = paused ? "Resume refresh" : "Pause refresh";
    button.setAttribute("aria-pressed", String(paused));
  };
  button.addEventListener("click", () => { paused = !paused; show(); });
  show();
  live.before(button);
  let ticks = 0;
  async function refresh() {
    live.dataset.ticks = String(++ticks);  // what a test watches, paused or not
    if (!paused && !document.hidden) {
      try {
        const response = await fetch(location.href, { headers: { "Accept": "text/html" } });
        if (response.ok) {
          const page = new DOMParser().parseFromString(await response.text(), "text/html");
          const fresh = page.getElementById("live");
          if (fresh && !paused) {
            live.replaceChildren(...fresh.childNodes);
            live.dataset.refreshed = String(Date.now());
            if (!(Number(fresh.dataset.refresh) > 0)) {  // the run has ended
              button.remove();
              if (!page.querySelector(".actions")) document.querySelector(".actions")?.remove();
              return;
            }
          }
        }
      } catch (error) {
        // the view is unreachable for a moment: try again at the next tick
      }
    }
    setTimeout(refresh, every * 1000);
  }
  setTimeout(refresh, every * 1000);
})();
