"""The admin page: one HTML document, one stylesheet, one vanilla script (no build, no CDN).

Kept as strings in this module so the page ships inside the wheel with no
package-data rules. Everything the page shows is built with DOM calls
(``textContent``), never ``innerHTML`` with data, so registry metadata or a
flag reason cannot inject markup.
"""

# ruff: noqa: E501 (the page's CSS and JavaScript keep their own line lengths)
from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["page_routes"]

_HEADERS = {
    # The page runs only its own script; no frames (a framed page could be
    # clickjacked into a confirmed write); nothing cached; no referrer.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="admin-base" content="{base}">
<title>foundation admin</title>
<link rel="stylesheet" href="{base}admin.css">
<script src="{base}admin.js" defer></script>
</head>
<body>
<header>
  <h1>foundation <span>admin</span></h1>
  <span id="live" class="pill off" title="server-sent events">offline</span>
  <span id="mode" class="pill"></span>
  <form id="login-form" autocomplete="off">
    <input id="token" type="password" placeholder="operator token" aria-label="operator token">
    <button id="login" type="submit">Sign in</button>
  </form>
  <span id="who" hidden>signed in as <b id="operator"></b>
    <button id="logout" type="button" class="link">sign out</button></span>
</header>
<div id="degraded" role="alert" hidden></div>
<div id="message" role="status" hidden></div>
<main>
<section id="flags-section">
  <h2>Flags</h2>
  <label class="reason">Reason for changes <input id="reason"
    placeholder="why (recorded in the audit trail)"></label>
  <table id="flags"><thead><tr><th>flag</th><th>state</th><th>rollout / split</th>
    <th>allow / assigned</th><th>deny</th><th>actions</th></tr></thead><tbody></tbody></table>
  <div class="row" id="evaluator">
    <h3>What does this actor get?</h3>
    <select id="eval-flag" aria-label="flag"></select>
    <input id="eval-actor" placeholder="actor id" aria-label="actor">
    <button id="eval-go" type="button">Evaluate</button>
    <span id="eval-out"></span>
  </div>
</section>
<section id="migration-section">
  <h2>Migration</h2>
  <div id="migration"></div>
</section>
<section id="supervision-section">
  <h2>Supervision</h2>
  <div id="supervision"></div>
</section>
<section id="agents-section">
  <h2>Agents <small id="agent-counts"></small></h2>
  <div class="row">
    <input id="agent-search" placeholder="search keys, nodes, metadata" aria-label="search">
    <input id="agent-where" placeholder="role:eq:worker; limits.cpu:gte:2"
      aria-label="metadata filters">
    <button id="agent-go" type="button">Filter</button>
  </div>
  <table id="agents"><thead><tr><th>key</th><th>kind</th><th>node</th><th>pid</th>
    <th>metadata</th><th>registered</th></tr></thead><tbody></tbody></table>
  <h3>Recently dead</h3>
  <table id="dead"><thead><tr><th>key</th><th>kind</th><th>node</th><th>Down reason</th>
    <th>detail</th><th>when</th></tr></thead><tbody></tbody></table>
</section>
<section id="history-section">
  <h2>Audit history</h2>
  <p id="history-retention" hidden></p>
  <table id="history"><thead><tr><th>when</th><th>flag</th><th>who</th><th>why</th>
    <th>change</th></tr></thead><tbody></tbody></table>
</section>
</main>
<dialog id="confirm">
  <form method="dialog" id="confirm-form">
    <h3 id="confirm-title"></h3>
    <p>Type <code id="confirm-word"></code> to confirm.</p>
    <input id="confirm-input" autocomplete="off" aria-label="confirmation">
    <input id="confirm-reason" placeholder="reason" aria-label="reason">
    <menu><button value="cancel" type="button" id="confirm-cancel">Cancel</button>
      <button value="ok" id="confirm-ok" class="danger" disabled>Confirm</button></menu>
  </form>
</dialog>
</body>
</html>
"""

CSS = """
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2430; --mute:#6b7484; --line:#e2e5ea;
  --on:#127a3c; --off:#a12a2a; --accent:#2c5fd6; --warn:#9a6500; }
* { box-sizing: border-box; }
[hidden] { display:none !important; }
body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; gap:12px; align-items:center; padding:10px 20px; background:#18202e;
  color:#fff; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0 12px 0 0; } header h1 span { color:#8fb0ff; }
header form { margin-left:auto; display:flex; gap:6px; }
#who { margin-left:auto; } #who b { color:#8fb0ff; }
main { display:grid; grid-template-columns: 1fr 1fr; gap:16px; padding:16px 20px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:12px 16px; overflow:auto; }
#flags-section, #agents-section, #history-section { grid-column: 1 / -1; }
#migration-section:has(+ #supervision-section[hidden]) { grid-column: 1 / -1; }
h2 { font-size:16px; margin:0 0 10px; } h3 { font-size:14px; margin:12px 0 6px; }
h2 small { color:var(--mute); font-weight:normal; margin-left:8px; }
table { width:100%; border-collapse:collapse; }
th, td { text-align:left; padding:5px 6px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { color:var(--mute); font-weight:600; font-size:12px; }
td.desc small { display:block; color:var(--mute); }
input, select, button { font:inherit; padding:4px 8px; border:1px solid #c4c9d2;
  border-radius:5px; background:#fff; color:var(--ink); }
button { cursor:pointer; background:#eef2fb; border-color:#b9c6e6; }
button:disabled { opacity:.45; cursor:default; }
button.danger { background:#fbeeee; border-color:#e0b4b4; color:var(--off); }
button.link { background:none; border:none; color:#8fb0ff; text-decoration:underline; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-weight:600;
  font-size:12px; }
.badge.on { background:#e2f5e9; color:var(--on); } .badge.off { background:#f8e4e4; color:var(--off); }
.pill { padding:2px 10px; border-radius:10px; font-size:12px; background:#34405a; }
.pill.on { background:#1f7a44; } .pill.off { background:#7a2a2a; } .pill:empty { display:none; }
.actor { display:inline-block; background:#eef0f4; border-radius:4px; padding:0 5px;
  margin:1px; font-size:12px; }
.row { display:flex; gap:8px; align-items:center; flex-wrap:wrap; margin:8px 0; }
.row h3 { margin:0 8px 0 0; }
td.actions { white-space:nowrap; } td.actions input { width:70px; }
td.actions input.actor-input { width:90px; } td.actions input.share-input { width:56px; }
td.actions .line.shares { display:flex; gap:4px; align-items:center; margin-top:4px; }
.variants { display:block; font-family: ui-monospace, monospace; font-size:12px; color:#39425a; }
.badge.variant { background:#e6ecfa; color:var(--accent); }
.reason { display:block; margin-bottom:8px; color:var(--mute); }
.reason input { width:360px; }
#message { margin:10px 20px 0; padding:8px 12px; border-radius:6px; background:#fdecec;
  color:var(--off); border:1px solid #f0c2c2; }
#message.ok { background:#e8f6ee; color:var(--on); border-color:#bfe3cc; }
#message.warn, #degraded { background:#fff4dc; color:#6b4600; border-color:#e8cf94; }
#degraded { margin:10px 20px 0; padding:8px 12px; border-radius:6px; border:1px solid #e8cf94; }
#history-retention { margin:0 0 6px; color:var(--mute); font-size:12px; }
#degraded .component { margin:2px 0; } #degraded .err { color:var(--mute); font-size:12px; }
.badge.sync { background:#fff1cc; color:var(--warn); margin-left:4px; }
.problems li { color:var(--warn); }
.stages { display:flex; gap:6px; margin:8px 0; flex-wrap:wrap; }
.stage { border:1px solid var(--line); border-radius:6px; padding:6px 10px; min-width:120px; }
.stage.done { background:#e2f5e9; border-color:#bfe3cc; }
.stage small { display:block; color:var(--mute); }
.tree ul { list-style:none; padding-left:18px; margin:2px 0; }
.tree li { margin:2px 0; }
.status-running { color:var(--on); } .status-restarting, .status-stopped { color:var(--warn); }
.status-abandoned { color:var(--off); font-weight:600; }
tr.flash td { animation: flash 2s ease-out; }
@keyframes flash { from { background:#fff3b0; } to { background:transparent; } }
dialog { border:1px solid var(--line); border-radius:8px; padding:16px 20px; min-width:360px; }
dialog input { display:block; width:100%; margin:6px 0; }
menu { display:flex; gap:8px; justify-content:flex-end; padding:0; }
code { background:#eef0f4; padding:0 4px; border-radius:3px; }
.meta { font-family: ui-monospace, monospace; font-size:12px; color:#39425a; }
.mute { color:var(--mute); }
"""

JS = r"""
'use strict';
const BASE = document.querySelector('meta[name="admin-base"]').content;
const KEY = 'foundation-admin-token';
let token = sessionStorage.getItem(KEY) || '';
let who = { writes: false };
const $ = (sel) => document.querySelector(sel);

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || ('HTTP ' + status));
    this.status = status; this.name = (body && body.error) || 'Error';
  }
}

async function api(method, path, body) {
  const headers = { 'Accept': 'application/json' };
  if (token) headers['Authorization'] = 'Bearer ' + token;
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(BASE + path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function say(text, ok) {
  const m = $('#message');
  m.textContent = text; m.hidden = !text; m.className = ok === 'warn' ? 'warn' : (ok ? 'ok' : '');
}

function fail(err) {
  say(err.name + ': ' + err.message);
  if (err.status === 401) showLogin();
}

const when = (t) => new Date(t * 1000).toLocaleString();
const reason = () => $('#reason').value.trim() || null;

// ------------------------------------------------------------------ session
function showLogin() {
  $('#login-form').hidden = false; $('#who').hidden = true;
}

async function login(secret) {
  token = secret;
  try {
    who = await api('GET', 'api/whoami');
  } catch (err) {
    token = ''; sessionStorage.removeItem(KEY);
    fail(err); return false;
  }
  if (secret) sessionStorage.setItem(KEY, secret);
  $('#login-form').hidden = !!who.operator;
  $('#who').hidden = !who.operator;
  $('#operator').textContent = who.operator || '';
  $('#mode').textContent = who.read_only ? 'read-only' : (who.writes ? '' : 'writes off');
  document.body.classList.toggle('can-write', !!(who.operator && who.writes));
  say('');
  refreshAll();
  startEvents();
  return true;
}

const canWrite = () => !!(who.operator && who.writes);

// -------------------------------------------------------------------- flags
let flagNames = [];

const SYNC_NOTE = {
  pending: 'applied on this node only, not yet committed to the store: other nodes still serve the old state until it is',
  stale: 'the store is unreachable: this node serves its copy, which may miss changes made elsewhere',
};
// A SQLite store whose file was deleted or replaced while in use (reopen_needed):
// no node copy and no kill switch kept; every write fails until it is reopened.
const STALE_FILE = 'the store\'s file was deleted or replaced while in use: this process reads ' +
  'the old file, which other processes no longer see; every write fails, kill switches ' +
  'included, until the store is reopened (restart the process)';

function syncNote(sync, store) {
  return sync === 'stale' && store && store.reopen_needed ? STALE_FILE : SYNC_NOTE[sync] || '';
}

async function write(path, body, done) {
  try {
    const f = await api('POST', path, body);
    const note = f && syncNote(f.sync, f.store);
    say('done: ' + path.replace('api/', '') + (note ? ' — ' + f.sync + ': ' + note : ''),
      note ? 'warn' : true);
    if (done) done();
    refreshFlags(); refreshHistory(); refreshStatus();
  } catch (err) { fail(err); refreshStatus(); }
}

// As the API's "sync" of a written flag: pending (a kill switch not yet committed),
// stale (the store answers from this node's copy) or committed.
function flagSync(store, name) {
  if (!store) return 'committed';
  if ((store.pending_flags || []).includes(name)) return 'pending';
  return store.state === 'stale' ? 'stale' : 'committed';
}

function syncBadge(f) {
  if (!f.sync || f.sync === 'committed') return null;
  return h('span', { class: 'badge sync ' + f.sync, title: f.syncNote || SYNC_NOTE[f.sync] || '', text: f.sync });
}

// --------------------------------------------------------- degraded banner
const clock = (t) => new Date(t * 1000).toLocaleTimeString();

function componentLine(name, c, what) {
  return h('div', { class: 'component', 'data-component': name, 'data-state': c.state },
    h('b', { text: name + ' ' + c.state }), c.since ? ' since ' + clock(c.since) : '', ' — ' + what,
    c.last_error ? h('div', { class: 'err', text: 'last error: ' + c.last_error }) : null);
}

function showStatus(s) {
  const el = $('#degraded');
  const lines = [];
  const r = s.registry, f = s.flag_store;
  if (r && r.degraded)
    lines.push(componentLine('registry', r, 'agents shown are the last state this server saw'));
  if (f && f.degraded) {
    const pending = f.pending ? '; ' + f.pending + ' kill switch' + (f.pending > 1 ? 'es' : '') +
      ' pending (' + f.pending_flags.join(', ') + '): off on this node, not yet committed' : '';
    lines.push(componentLine('flag store', f, (f.state === 'stale' && f.reopen_needed
      ? STALE_FILE
      : f.state === 'stale'
      ? 'flags are served from this node\'s copy; writes other than kill switches fail'
      : f.read_only ? 'Redis is a read-only replica; writes other than kill switches fail'
      : f.state === 'pending' ? 'committing'
      : 'this node\'s copy of the flags is in memory (its file failed): not durable until it can be written')
      + pending));
  }
  el.hidden = !s.degraded;
  el.dataset.degraded = s.degraded ? 'true' : 'false';
  el.replaceChildren(...(s.degraded ? [h('b', { text: 'Degraded: ' }),
    'the service runs from its caches until the backend is back.', ...lines] : []));
}

async function refreshStatus() {
  try { showStatus(await api('GET', 'api/status')); } catch (err) { /* the banner keeps its last word */ }
}

function actorList(items) {
  return items.length ? items.map((a) => h('span', { class: 'actor', text: a }))
                      : [h('span', { class: 'mute', text: '—' })];
}

function toggleButton(f, enc, dis) {
  return f.switch
    ? h('button', { class: 'toggle danger', disabled: dis, text: 'Disable',
        onclick: () => confirmThen('Disable flag ' + f.name, f.name, (r) =>
          write('api/flags/' + enc + '/disable', { reason: r, confirm: f.name })) })
    : h('button', { class: 'toggle', disabled: dis, text: 'Enable',
        onclick: () => write('api/flags/' + enc + '/enable', { reason: reason() }) });
}

// A variant value as JSON, cut for display (object variants may be large); the title has it all.
function jsonText(value, limit) {
  const text = JSON.stringify(value);
  return h('span', { class: 'json', title: text.length > limit ? text : null,
    text: text.length > limit ? text.slice(0, limit) + '\u2026' : text });
}

const shareText = (split) => Object.entries(split).filter(([, p]) => p > 0)
  .map(([v, p]) => v + ' ' + p + '%').join(' · ');

// A typed flag (string, integer, float, object): variants, assignments, a split.
function typedRow(f) {
  const enc = encodeURIComponent(f.name);
  const dis = !canWrite();
  const names = Object.keys(f.variants);
  const actor = h('input', { class: 'actor-input', placeholder: 'actor',
    'aria-label': 'actor for ' + f.name, disabled: dis });
  const pick = h('select', { class: 'variant-select', 'aria-label': 'variant for ' + f.name, disabled: dis },
    ...names.map((n) => h('option', { value: n, text: n })),
    h('option', { value: '', text: '(unassign)' }));
  const shares = names.map((n) => h('input', { class: 'share-input', type: 'number', min: 0, max: 100,
    step: 'any', placeholder: f.split ? String(f.split[n] || 0) : (n === f.default_variant ? '100' : '0'),
    'data-variant': n, 'aria-label': 'share of ' + n + ' for ' + f.name, disabled: dis }));
  const needActor = () => {
    if (!actor.value.trim()) { say('type an actor first'); return null; }
    return actor.value.trim();
  };
  const assigned = Object.entries(f.assign);
  return h('tr', { 'data-flag': f.name, 'data-kind': f.kind },
    h('td', { class: 'desc' }, h('b', { text: f.name }),
      h('small', { text: (f.description || '') + ' (' + f.kind + ', default ' + f.default_variant + ')' }),
      h('span', { class: 'variants' }, ...names.map((n) => h('span', { class: 'variant-def', 'data-variant': n },
        n + ' = ', jsonText(f.variants[n], 60), ' ')))),
    h('td', {}, h('span', { class: 'badge ' + (f.switch ? 'on' : 'off'), text: f.switch ? 'on' : 'off' }),
      ' ', h('span', { class: 'badge variant current', title: 'the answer without an actor', text: f.variant }),
      syncBadge(f)),
    h('td', { class: 'split', text: f.split ? shareText(f.split) : 'no split (' + f.default_variant + ')' }),
    h('td', { class: 'assign' }, assigned.length
      ? assigned.map(([a, v]) => h('span', { class: 'actor', 'data-actor': a, text: a + ' → ' + v }))
      : [h('span', { class: 'mute', text: '—' })]),
    h('td', { class: 'deny' }, actorList(f.deny)),
    h('td', { class: 'actions' }, h('div', { class: 'line' }, toggleButton(f, enc, dis), ' ', actor, pick,
      h('button', { class: 'assign-btn', disabled: dis, text: 'Assign', onclick: () => {
        const a = needActor(); if (a === null) return;
        write('api/flags/' + enc + '/assign', { actor: a, variant: pick.value || null, reason: reason() },
          () => { actor.value = ''; });
      } }),
      h('button', { class: 'deny-btn', disabled: dis, text: 'Deny', onclick: () => {
        const a = needActor(); if (a === null) return;
        write('api/flags/' + enc + '/deny', { actor: a, reason: reason() }, () => { actor.value = ''; });
      } }), ' ',
      h('button', { class: 'clear', disabled: dis, text: 'Clear',
        onclick: () => write('api/flags/' + enc + '/clear', { reason: reason() }) })),
      h('div', { class: 'line shares' }, ...names.flatMap((n, i) => [h('label', { text: n }), shares[i]]),
        h('button', { class: 'split-set', disabled: dis, text: 'Set split', onclick: () => {
          if (shares.every((x) => x.value === '')) { say('type the shares first'); return; }
          const split = {};
          for (const x of shares) if (x.value !== '') split[x.dataset.variant] = Number(x.value);
          write('api/flags/' + enc + '/split', { split, reason: reason() },
            () => { for (const x of shares) x.value = ''; });
        } }))));
}

function flagRow(f) {
  if (f.kind && f.kind !== 'boolean') return typedRow(f);
  const enc = encodeURIComponent(f.name);
  const dis = !canWrite();
  const pct = h('input', { class: 'pct-input', type: 'number', min: 0, max: 100, step: 'any',
    placeholder: '%', 'aria-label': 'percentage for ' + f.name, disabled: dis });
  const actor = h('input', { class: 'actor-input', placeholder: 'actor',
    'aria-label': 'actor for ' + f.name, disabled: dis });
  const toggle = toggleButton(f, enc, dis);
  const actorWrite = (verb) => () => {
    if (!actor.value.trim()) { say('type an actor first'); return; }
    write('api/flags/' + enc + '/' + verb, { actor: actor.value.trim(), reason: reason() },
      () => { actor.value = ''; });
  };
  return h('tr', { 'data-flag': f.name, 'data-kind': 'boolean' },
    h('td', { class: 'desc' }, h('b', { text: f.name }),
      h('small', { text: (f.description || '') + ' (default ' + (f.default ? 'on' : 'off') + ')' })),
    h('td', {}, h('span', { class: 'badge ' + (f.switch ? 'on' : 'off'), text: f.switch ? 'on' : 'off' }),
      syncBadge(f)),
    h('td', { class: 'pct', text: f.percentage === null ? '100% (no rollout)' : f.percentage + '%' }),
    h('td', { class: 'allow' }, actorList(f.allow)),
    h('td', { class: 'deny' }, actorList(f.deny)),
    h('td', { class: 'actions' }, toggle, ' ', pct,
      h('button', { class: 'pct-set', disabled: dis, text: 'Set %', onclick: () => {
        if (pct.value === '') { say('type a percentage first'); return; }
        write('api/flags/' + enc + '/percentage', { percentage: Number(pct.value), reason: reason() },
          () => { pct.value = ''; });
      } }), ' ', actor,
      h('button', { class: 'allow-btn', disabled: dis, text: 'Allow', onclick: actorWrite('allow') }),
      h('button', { class: 'deny-btn', disabled: dis, text: 'Deny', onclick: actorWrite('deny') }), ' ',
      h('button', { class: 'clear', disabled: dis, text: 'Clear',
        onclick: () => write('api/flags/' + enc + '/clear', { reason: reason() }) })));
}

let flashFlag = null;
async function refreshFlags() {
  if (!who.flags) { $('#flags-section').hidden = true; return; }
  try {
    const data = await api('GET', 'api/flags');
    const body = $('#flags tbody');
    // A live update re-renders the rows: keep what the operator is typing, and the focus.
    const kept = {};
    const inputs = (tr) => tr.querySelectorAll('.pct-input, .actor-input, .share-input, .variant-select');
    const slot = (el) => el.className + '/' + (el.dataset.variant || '');
    for (const tr of body.querySelectorAll('tr[data-flag]')) {
      kept[tr.dataset.flag] = {};
      for (const el of inputs(tr)) kept[tr.dataset.flag][slot(el)] = el.value;
    }
    const active = document.activeElement;
    const focusRow = active && active.closest ? active.closest('tr[data-flag]') : null;
    const focus = focusRow ? [focusRow.dataset.flag, slot(active)] : null;
    for (const f of data.flags) {
      f.sync = flagSync(data.store, f.name);
      f.syncNote = syncNote(f.sync, data.store);
    }
    body.replaceChildren(...data.flags.map(flagRow));
    for (const tr of body.querySelectorAll('tr[data-flag]')) {
      const k = kept[tr.dataset.flag];
      for (const el of inputs(tr)) {
        // A select keeps its choice only if that variant still exists.
        if (k && slot(el) in k && (el.tagName !== 'SELECT' || [...el.options].some((o) => o.value === k[slot(el)])))
          el.value = k[slot(el)];
      }
      if (focus && focus[0] === tr.dataset.flag) {
        const el = [...inputs(tr)].find((x) => slot(x) === focus[1]) ||
          tr.querySelector('.' + CSS.escape(focus[1].split(/[ /]/)[0] || 'none'));
        if (el) el.focus();
      }
    }
    if (flashFlag) {
      const row = body.querySelector('tr[data-flag="' + CSS.escape(flashFlag) + '"]');
      if (row) row.classList.add('flash');
      flashFlag = null;
    }
    const names = data.flags.map((f) => f.name);
    if (names.join('\n') !== flagNames.join('\n')) {
      flagNames = names;
      $('#eval-flag').replaceChildren(...names.map((n) => h('option', { value: n, text: n })));
    }
  } catch (err) { fail(err); }
}

async function evaluate() {
  const name = $('#eval-flag').value;
  const actor = $('#eval-actor').value.trim();
  try {
    const r = await api('GET', 'api/flags/' + encodeURIComponent(name) + '/evaluate' +
      (actor ? '?actor=' + encodeURIComponent(actor) : ''));
    if (r.kind && r.kind !== 'boolean') {
      $('#eval-out').replaceChildren(
        h('span', { class: 'badge variant', text: r.variant }), ' = ',
        h('code', { class: 'eval-value' }, jsonText(r.value, 200)), ' ',
        h('span', { class: 'mute', text: r.reason + ': ' + r.why }));
      return;
    }
    $('#eval-out').replaceChildren(
      h('span', { class: 'badge ' + (r.enabled ? 'on' : 'off'), text: r.enabled ? 'ON' : 'OFF' }),
      ' ', h('span', { class: 'mute', text: r.why }));
  } catch (err) { fail(err); }
}

function describeChange(c) {
  const parts = [];
  if (c.old.switch !== c.new.switch) parts.push(c.new.switch ? 'switched on' : 'switched off');
  if (c.old.percentage !== c.new.percentage)
    parts.push('rollout ' + (c.old.percentage ?? '—') + ' → ' + (c.new.percentage ?? '—'));
  const added = (a, b) => b.filter((x) => !a.includes(x));
  for (const x of added(c.old.allow, c.new.allow)) parts.push('allow +' + x);
  for (const x of added(c.old.deny, c.new.deny)) parts.push('deny +' + x);
  for (const x of added(c.new.allow, c.old.allow)) parts.push('allow \u2212' + x);
  for (const x of added(c.new.deny, c.old.deny)) parts.push('deny \u2212' + x);
  const oa = c.old.assign || {}, na = c.new.assign || {};
  for (const a of new Set([...Object.keys(oa), ...Object.keys(na)])) {
    if (oa[a] === na[a]) continue;
    parts.push(na[a] === undefined ? 'unassign ' + a : 'assign ' + a + ' \u2192 ' + na[a]);
  }
  const os = c.old.split ?? null, ns = c.new.split ?? null;
  if (JSON.stringify(os) !== JSON.stringify(ns))
    parts.push('split ' + (os ? shareText(os) : '—') + ' \u2192 ' + (ns ? shareText(ns) : '—'));
  return parts.join(', ') ||
    (c.no_op ? 'no-op: runtime state set or cleared, effective state unchanged'
             : 'no effective change');
}

async function refreshHistory() {
  if (!who.flags) { $('#history-section').hidden = true; return; }
  try {
    const data = await api('GET', 'api/history?limit=50');
    const kept = $('#history-retention');
    kept.textContent = data.retention ? 'Bounded history: ' + data.retention + '.' : '';
    kept.hidden = !data.retention;
    $('#history tbody').replaceChildren(...data.changes.map((c) => h('tr', {},
      h('td', { text: when(c.at) }), h('td', { text: c.flag }),
      h('td', { text: c.by || '—' }), h('td', { text: c.reason || '—' }),
      h('td', { text: describeChange(c) }))));
  } catch (err) { fail(err); }
}

// ---------------------------------------------------------------- migration
async function refreshMigration() {
  if (!who.migration) { $('#migration-section').hidden = true; return; }
  let m;
  try { m = await api('GET', 'api/migration'); } catch (err) { fail(err); return; }
  const dis = !canWrite();
  const target = h('select', { id: 'mig-target', 'aria-label': 'roll back to stage', disabled: dis || m.stage === 0 },
    ...Array.from({ length: m.stage }, (_, i) => h('option', { value: i, text: 'stage ' + i })));
  const confirmWord = m.stage_name || String(m.stage);
  $('#migration').replaceChildren(
    h('div', { id: 'mig-status' }, 'plan ', h('b', { text: m.plan }), ': stage ',
      h('b', { id: 'mig-stage', text: m.stage }), ' of ' + m.total,
      m.stage_name ? ' (' + m.stage_name + ')' : ' (not started)'),
    h('div', { class: 'stages' }, ...m.stages.map((s) => h('div', {
        class: 'stage' + (s.number <= m.stage ? ' done' : '') },
      h('b', { text: s.number + '. ' + s.name }), h('small', { text: 'risk: ' + s.risk }),
      h('small', { text: s.flags.join(', ') })))),
    m.problems.length
      ? h('ul', { class: 'problems', id: 'mig-problems' },
          ...m.problems.map((p) => h('li', { text: p })))
      : h('p', { class: 'mute', id: 'mig-problems', text: 'readiness: no problems' }),
    h('div', { class: 'row' },
      h('button', { id: 'mig-advance', disabled: dis || m.stage >= m.total, text: 'Advance',
        onclick: () => migrate('advance', { reason: reason() }) }),
      target,
      h('button', { id: 'mig-rollback', disabled: dis || m.stage === 0, text: 'Roll back',
        onclick: () => migrate('rollback', { stage: Number(target.value), reason: reason() }) }),
      h('button', { id: 'mig-emergency', class: 'danger', disabled: dis, text: 'Emergency rollback',
        onclick: () => confirmThen('Emergency rollback of ' + m.plan + ' (every plan flag off)',
          confirmWord, (r) => migrate('emergency', { reason: r, confirm: confirmWord }), true) })),
    h('h3', { text: 'Steps' }),
    h('table', { id: 'mig-history' }, h('tbody', {}, ...m.history.map((e) => h('tr', {},
      h('td', { text: when(e.at) }), h('td', { text: e.action }),
      h('td', { text: e.from_stage + ' → ' + e.to_stage }),
      h('td', { text: e.by || '—' }), h('td', { text: e.reason || '—' }))))));
}

async function migrate(action, body) {
  try {
    const m = await api('POST', 'api/migration/' + action, body);
    const pending = m && m.store && m.store.pending_flags.length;
    say('migration: ' + action + ' done' + (pending ? ' \u2014 pending: ' + SYNC_NOTE.pending : ''),
      pending ? 'warn' : true);
    refreshMigration(); refreshFlags(); refreshHistory(); refreshStatus();
  } catch (err) { fail(err); refreshMigration(); refreshStatus(); }
}

// ------------------------------------------------------------------- agents
async function refreshAgents() {
  if (!who.registry) { $('#agents-section').hidden = true; return; }
  const q = new URLSearchParams();
  const search = $('#agent-search').value.trim();
  if (search) q.append('q', search);
  for (const w of $('#agent-where').value.split(';')) if (w.trim()) q.append('where', w.trim());
  try {
    const [data, dead] = await Promise.all([
      api('GET', 'api/agents?' + q.toString()), api('GET', 'api/agents/dead?limit=50')]);
    const counts = (o) => Object.entries(o).map(([k, v]) => k + ' ' + v).join(', ') || 'none';
    $('#agent-counts').textContent = data.matched + ' shown of ' + data.total +
      ' · by kind: ' + counts(data.by_kind) + ' · by node: ' + counts(data.by_node);
    $('#agents tbody').replaceChildren(...data.agents.map((a) => h('tr', { 'data-key': a.key_text },
      h('td', {}, h('b', { text: a.key_text })), h('td', { text: a.kind }),
      h('td', { text: a.node }), h('td', { text: a.pid ?? '—' }),
      h('td', { class: 'meta', text: JSON.stringify(a.metadata) }),
      h('td', { text: when(a.registered_at) }))));
    $('#dead tbody').replaceChildren(...dead.dead.map((a) => h('tr', { 'data-key': a.key_text },
      h('td', {}, h('b', { text: a.key_text })), h('td', { text: a.kind }),
      h('td', { text: a.node }), h('td', {}, h('span', { class: 'badge off', text: a.down.reason })),
      h('td', { class: 'meta', text: [a.down.exception, a.down.exit_code !== null ?
        'exit ' + a.down.exit_code : null, a.down.signal !== null ? 'signal ' + a.down.signal : null]
        .filter((x) => x).join(' ') || '—' }),
      h('td', { text: when(a.at) }))));
  } catch (err) { fail(err); }
}

// -------------------------------------------------------------- supervision
function treeNode(s) {
  return h('li', {}, h('b', { text: s.name }), ' ',
    h('span', { class: 'mute', text: s.strategy + ', ' + s.state }),
    h('ul', {}, ...s.children.map((c) => h('li', { 'data-child': c.id },
      h('span', { text: c.id }), ' ', h('span', { class: 'mute', text: c.kind + ' · ' + c.restart }), ' ',
      h('span', { class: 'status-' + c.status, text: c.status }), ' ',
      h('span', { class: 'mute', text: 'restarts: ' + c.restarts }),
      c.supervisor ? h('ul', {}, treeNode(c.supervisor)) : null))));
}

async function refreshSupervision() {
  if (!who.supervision) { $('#supervision-section').hidden = true; return; }
  try {
    const data = await api('GET', 'api/supervision');
    $('#supervision').replaceChildren(h('ul', { class: 'tree' }, ...data.supervisors.map(treeNode)));
  } catch (err) { fail(err); }
}

// ------------------------------------------------------------- confirmation
function confirmThen(title, word, action, needReason) {
  const dlg = $('#confirm');
  $('#confirm-title').textContent = title;
  $('#confirm-word').textContent = word;
  const input = $('#confirm-input'), why = $('#confirm-reason'), ok = $('#confirm-ok');
  input.value = ''; why.value = reason() || '';
  const check = () => { ok.disabled = input.value !== word || (needReason && !why.value.trim()); };
  input.oninput = check; why.oninput = check; check();
  $('#confirm-cancel').onclick = () => dlg.close();
  $('#confirm-form').onsubmit = (ev) => {
    ev.preventDefault();
    if (input.value !== word) return;
    dlg.close();
    action(why.value.trim() || null);
  };
  dlg.showModal();
  input.focus();
}

// ------------------------------------------------------------- live updates
const pending = new Set();
let timer = null;
function schedule(what) {
  pending.add(what);
  if (timer) return;
  timer = setTimeout(() => {
    timer = null;
    const todo = new Set(pending); pending.clear();
    if (todo.has('flags')) { refreshFlags(); refreshHistory(); }
    if (todo.has('migration')) refreshMigration();
    if (todo.has('agents')) refreshAgents();
    if (todo.has('supervision')) refreshSupervision();
  }, 80);
}

let streamAbort = null;
async function startEvents() {
  if (streamAbort) streamAbort.abort();
  const ctl = new AbortController(); streamAbort = ctl;
  let delay = 500;
  while (!ctl.signal.aborted) {
    try {
      const headers = { 'Accept': 'text/event-stream' };
      if (token) headers['Authorization'] = 'Bearer ' + token;
      const res = await fetch(BASE + 'api/events', { headers, signal: ctl.signal, cache: 'no-store' });
      if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let event = 'message', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (block.startsWith(':')) continue;
          onEvent(event, data ? JSON.parse(data) : {});
          delay = 500;
        }
      }
    } catch (err) {
      if (ctl.signal.aborted) return;
      if (err.status === 401) { fail(err); return; }
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function setLive(on) {
  const el = $('#live'); el.textContent = on ? 'live' : 'reconnecting'; el.className = 'pill ' + (on ? 'on' : 'off');
}

function onEvent(event, data) {
  if (event === 'hello') { setLive(true); refreshAll(); }
  else if (event === 'flag') { flashFlag = data.flag; schedule('flags'); }
  else if (event === 'migration') schedule('migration');
  else if (event === 'agent') { schedule('agents'); schedule('supervision'); }
  else if (event === 'status') { showStatus(data); schedule('flags'); }
  else if (event === 'resync') refreshAll();
}

function refreshAll() {
  refreshStatus(); refreshFlags(); refreshHistory(); refreshMigration(); refreshAgents(); refreshSupervision();
}

// -------------------------------------------------------------------- start
document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', (ev) => {
    ev.preventDefault(); login($('#token').value.trim()).then((ok) => { if (ok) $('#token').value = ''; });
  });
  $('#logout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY); token = ''; login('');
  });
  $('#eval-go').addEventListener('click', evaluate);
  $('#agent-go').addEventListener('click', refreshAgents);
  $('#agent-search').addEventListener('input', () => schedule('agents'));
  login(token);
});
"""


async def _index(request: Request) -> Response:
    base = request.scope.get("root_path", "").rstrip("/") + "/"
    return Response(
        HTML.replace("{base}", html.escape(base, quote=True)),
        media_type="text/html; charset=utf-8",
        headers=_HEADERS,
    )


async def _script(request: Request) -> Response:
    return Response(JS, media_type="text/javascript; charset=utf-8", headers=_HEADERS)


async def _style(request: Request) -> Response:
    return Response(CSS, media_type="text/css; charset=utf-8", headers=_HEADERS)


def page_routes() -> list[Route]:
    """``/`` (the page), ``/admin.js`` and ``/admin.css``."""
    return [
        Route("/", _index, methods=["GET"]),
        Route("/admin.js", _script, methods=["GET"]),
        Route("/admin.css", _style, methods=["GET"]),
    ]
