// kiln's dashboard: the live log (Server-Sent Events), copy buttons, the list's refresh and
// the admin actions. Everything else works without JavaScript. No inline script: the page's
// Content-Security-Policy allows only this file.
'use strict';
(function () {
  const TOKEN_KEY = 'kiln-admin-token';
  window.kilnDuplicates = 0;
  window.kilnLines = 0;
  window.kilnRefreshes = 0;
  window.kilnReconnects = 0;

  // Copy buttons: the whole digest, though the page shows it short.
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    const t = document.createElement('textarea');
    t.value = text;
    document.body.appendChild(t);
    t.select();
    const ok = document.execCommand('copy');
    t.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error('copy refused'));
  }
  document.addEventListener('click', (e) => {
    const b = e.target.closest('button.copy');
    if (!b) return;
    copy(b.dataset.copy).then(
      () => { b.textContent = 'copied'; },
      () => { b.textContent = 'select it'; });
    setTimeout(() => { b.textContent = 'copy'; }, 1500);
  });

  // The live log: lines after the ones the page holds; a reconnect sends Last-Event-ID.
  const log = document.getElementById('log');
  if (log && log.dataset.live === 'true') {
    let last = Number(log.dataset.after);
    const label = document.getElementById('build-state');
    const live = document.getElementById('live');
    const es = new EventSource(log.dataset.events + '?after=' + last);
    window.kilnEvents = es;
    es.onmessage = (e) => {
      const n = Number(e.lastEventId);
      if (!(n > last)) { window.kilnDuplicates += 1; return; }
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      const line = document.createElement('span');
      line.className = 'line';
      line.dataset.n = String(n);
      // The data is the line as a JSON string (an empty line survives that way).
      line.textContent = JSON.parse(e.data);
      log.appendChild(line);
      last = n;
      window.kilnLines += 1;
      if (atEnd) log.scrollTop = log.scrollHeight;
    };
    es.addEventListener('state', (e) => {
      if (label) {
        label.textContent = e.data;
        label.className = 'state state-' + e.data;
      }
    });
    es.onerror = () => {
      // The browser reconnects by itself, sending Last-Event-ID; unless it gave up.
      if (es.readyState === EventSource.CLOSED) {
        if (live) live.textContent = 'disconnected: reload the page';
      } else {
        window.kilnReconnects += 1;
      }
    };
    es.addEventListener('end', (e) => {
      es.close();
      if (live) live.textContent = 'finished: ' + e.data;
      // The artifacts and timings are final now.
      setTimeout(() => location.reload(), 1500);
    });
  }

  // The build list follows the farm: refreshed in place while the tab is visible.
  if (document.getElementById('list')) {
    setInterval(() => {
      if (document.hidden) return;
      fetch(location.href, { headers: { Accept: 'text/html' } })
        .then((r) => (r.ok ? r.text() : Promise.reject(new Error(r.statusText))))
        .then((html) => {
          const doc = new DOMParser().parseFromString(html, 'text/html');
          for (const id of ['list', 'farm']) {
            const fresh = doc.getElementById(id);
            const old = document.getElementById(id);
            if (fresh && old) old.replaceWith(fresh);
          }
          window.kilnRefreshes += 1;
        })
        .catch(() => {});
    }, 5000);
  }

  // Actions: POST with the admin token as a bearer token, asked for once per session.
  const status = document.getElementById('action-status');
  const form = document.getElementById('token-form');
  let pending = null;
  function say(text) { if (status) status.textContent = text; }
  function act(button) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      pending = button;
      if (form) { form.hidden = false; form.querySelector('input').focus(); }
      say('This action needs the admin token.');
      return;
    }
    button.disabled = true;
    fetch(button.dataset.action, {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + token },
    }).then((r) => r.json().catch(() => ({})).then((body) => {
      button.disabled = false;
      if (r.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        pending = button;
        if (form) form.hidden = false;
        say('The admin token was refused: ' + (body.error || r.status));
        return;
      }
      if (!r.ok) { say(button.dataset.label + ' refused: ' + (body.error || r.status)); return; }
      say(button.dataset.label + ': done');
      setTimeout(() => location.reload(), 800);
    }), () => { button.disabled = false; say('The daemon did not answer.'); });
  }
  document.addEventListener('click', (e) => {
    const b = e.target.closest('button.action');
    if (b) act(b);
  });
  if (form) {
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = form.querySelector('input').value.trim();
      if (!v) return;
      sessionStorage.setItem(TOKEN_KEY, v);
      form.hidden = true;
      form.querySelector('input').value = '';
      if (pending) { const b = pending; pending = null; act(b); }
    });
  }
}());
