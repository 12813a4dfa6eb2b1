// asyncjobs dashboard: live parts, "load more", and actions. No framework, no inline
// script (the Content-Security-Policy forbids it). Every fragment this script inserts is
// HTML drawn by the server's templates, where every value from Redis is escaped; what it
// writes itself (messages) goes in as text.
"use strict";
(function () {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const refreshMs = Number(document.body.dataset.refreshMs) || 2000;
  let timer = null;

  function flash(text, ok) {
    const box = document.getElementById("flash");
    box.textContent = text;
    box.className = ok ? "ok" : "bad";
    box.hidden = false;
  }

  function partUrl(name, href) {
    const url = new URL(href || window.location.href);
    url.searchParams.set("part", name);
    if (!href) url.searchParams.delete("cursor");
    return url;
  }

  async function fetchText(url) {
    const reply = await fetch(url, {credentials: "same-origin", headers: {accept: "text/html"}});
    if (!reply.ok) throw new Error(`${reply.status} ${reply.statusText}`);
    return reply.text();
  }

  function paused(part) {
    return part.dataset.expanded === "1" || part.querySelector("input[data-select]:checked");
  }

  async function refresh(force) {
    const parts = document.querySelectorAll("[data-part]");
    for (const part of parts) {
      if (!force && paused(part)) continue;
      try {
        part.innerHTML = await fetchText(partUrl(part.dataset.part));
        delete part.dataset.expanded;
        part.classList.remove("stale");
      } catch (err) {
        part.classList.add("stale");
      }
    }
    document.body.dataset.refreshed = String(Date.now());
  }

  async function loadMore(link) {
    const row = link.closest("tr");
    const body = link.closest("tbody");
    const part = link.closest("[data-part]");
    try {
      const html = await fetchText(partUrl("rows", link.href));
      row.remove();
      body.insertAdjacentHTML("beforeend", html);
      if (part) part.dataset.expanded = "1";
    } catch (err) {
      flash(`Could not load more: ${err.message}`, false);
    }
  }

  function idsOf(button) {
    if (button.dataset.selected) {
      const scope = document.querySelector(`[data-selectable="${button.dataset.selected}"]`);
      return Array.from(scope.querySelectorAll("input[data-select]:checked"), (box) => box.value);
    }
    return button.dataset.ids ? [button.dataset.ids] : [];
  }

  async function act(button) {
    const ids = idsOf(button);
    if (button.dataset.selected && ids.length === 0) {
      flash("Select some jobs first.", false);
      return;
    }
    const question = button.dataset.confirm + (ids.length > 1 ? ` (${ids.length} jobs)` : "");
    if (!window.confirm(question)) return;
    button.disabled = true;
    try {
      const reply = await fetch(`${meta("asyncjobs-base")}actions/${button.dataset.action}`, {
        method: "POST",
        credentials: "same-origin",
        headers: {"content-type": "application/json", "x-csrf-token": meta("csrf-token")},
        body: JSON.stringify({queue: button.dataset.queue, ids: ids, confirm: true}),
      });
      const data = await reply.json().catch(() => ({message: `${reply.status} ${reply.statusText}`}));
      flash(data.message, reply.ok);
    } catch (err) {
      flash(`The action failed: ${err.message}`, false);
    } finally {
      button.disabled = false;
    }
    await refresh(true);
  }

  document.addEventListener("click", (event) => {
    const more = event.target.closest("a[data-more]");
    if (more) {
      event.preventDefault();
      loadMore(more);
      return;
    }
    const button = event.target.closest("button[data-action]");
    if (button) {
      event.preventDefault();
      act(button);
    }
  });

  function schedule() {
    timer = window.setTimeout(async () => {
      if (!document.hidden) await refresh(false);
      schedule();
    }, refreshMs);
  }
  if (document.querySelector("[data-part]")) schedule();
  window.asyncjobsRefresh = () => refresh(true);
})();
