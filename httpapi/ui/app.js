// Tollgate's dashboard. Everything it shows comes from the admin API
// (described at /openapi.json); it keeps no state beyond the admin key,
// which stays in this tab's sessionStorage and goes out only as a Bearer
// header. Data is put into the page as text, never as HTML.
'use strict';

const KEY_STORE = 'tollgate.adminKey';
const REFRESH_MS = 1000;
const PAGE_SIZE = 20;

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}

// api sends one admin request and returns the decoded JSON answer (null
// for 204). A 401 means a key is needed or was refused.
async function api(method, path, body) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = 'Bearer ' + key;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) throw new AuthError(key ? 'The admin key was refused.' : '');
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.message || resp.status + ' ' + resp.statusText);
  return data;
}

// el makes an element with text content and attributes.
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// syncRows shows items in a table, one row per key. Rows are made once and
// then updated in place, and the DOM is touched only where something
// changed, so a button is never swapped under a user's pointer by a
// refresh. create(item) returns a new row; update(tr, item) fills it in.
function syncRows(table, items, key, create, update, emptyText) {
  const tbody = $(table).tBodies[0];
  if (items.length === 0) {
    const only = tbody.rows.length === 1 ? tbody.rows[0] : null;
    if (!only || only.dataset.key !== undefined || only.textContent !== emptyText) {
      const td = el('td', emptyText, { class: 'muted', colspan: $(table).tHead.rows[0].cells.length });
      const tr = el('tr');
      tr.append(td);
      tbody.replaceChildren(tr);
    }
    return;
  }
  const old = new Map();
  for (const tr of tbody.rows) if (tr.dataset.key !== undefined) old.set(tr.dataset.key, tr);
  const rows = items.map((item) => {
    const k = key(item);
    let tr = old.get(k);
    if (!tr) {
      tr = create(item);
      tr.dataset.key = k;
    }
    update(tr, item);
    return tr;
  });
  const same = rows.length === tbody.rows.length && rows.every((tr, i) => tbody.rows[i] === tr);
  if (!same) tbody.replaceChildren(...rows);
}

// cellsRow makes a row of n empty cells.
function cellsRow(n) {
  const tr = el('tr');
  for (let i = 0; i < n; i++) tr.append(el('td'));
  return tr;
}

function setText(node, value) {
  const s = value === undefined || value === null ? '' : String(value);
  if (node.textContent !== s) node.textContent = s;
}

function setData(tr, name, value) {
  if (tr.dataset[name] !== String(value)) tr.dataset[name] = value;
}

function ago(iso) {
  if (!iso) return '';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  return Math.floor(s / 3600) + ' h ago';
}

// ---- backends ----

async function loadBackends() {
  const { backends } = await api('GET', '/backends');
  syncRows('backends', backends, (b) => b.url, () => {
    const tr = cellsRow(7);
    tr.cells[1].append(el('span'));
    return tr;
  }, (tr, b) => {
    const c = tr.cells;
    let ejection = '';
    if (b.ejected_until) ejection = 'until ' + new Date(b.ejected_until).toLocaleTimeString() + (b.ejection_reason ? ': ' + b.ejection_reason : '');
    setText(c[0], b.url);
    const health = c[1].firstChild;
    setText(health, b.healthy ? 'healthy' : 'unhealthy');
    health.className = b.healthy ? 'ok' : 'bad';
    setText(c[2], ago(b.since));
    setText(c[3], b.last_status || '');
    setText(c[4], b.last_check ? b.last_latency_ms + ' ms' : '');
    setText(c[5], b.last_error);
    setText(c[6], ejection);
    setData(tr, 'url', b.url);
    setData(tr, 'healthy', b.healthy);
  }, 'no backends');
}

// ---- traffic ----

const SERIES = [
  ['total', 'all'], ['2xx', '2xx'], ['4xx', '4xx'], ['429', '429 refused'], ['5xx', '5xx'],
];
const SVG = 'http://www.w3.org/2000/svg';

function sparkline(values, cls) {
  const w = 300, h = 40, max = Math.max(1, ...values);
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark ' + cls);
  const pts = values.map((v, i) => `${(i * w / Math.max(1, values.length - 1)).toFixed(1)},${(h - 1 - v * (h - 2) / max).toFixed(1)}`);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', pts.join(' '));
  svg.append(line);
  return svg;
}

async function loadTraffic() {
  const t = await api('GET', '/stats/traffic');
  const charts = SERIES.map(([name, label]) => {
    const v = t.series[name] || [];
    const last10 = v.slice(-10);
    const avg = last10.reduce((a, b) => a + b, 0) / Math.max(1, last10.length);
    const peak = Math.max(0, ...v);
    const box = el('div', null, { class: 'chart', 'data-series': name });
    box.append(el('div', label, { class: 'label' }),
      el('div', avg.toFixed(1) + '/s', { class: 'value' }),
      sparkline(v, 's' + name),
      el('div', 'peak ' + peak + '/s', { class: 'muted small' }));
    return box;
  });
  $('traffic').replaceChildren(...charts);
}

async function loadTop() {
  const top = await api('GET', '/stats/top-clients?limit=10');
  const show = (table, list, empty) => syncRows(table, list, (e) => e.client_id, () => cellsRow(2), (tr, e) => {
    setText(tr.cells[0], e.client_id);
    setText(tr.cells[1], e.error ? `${e.count} ±${e.error}` : e.count);
  }, empty);
  show('top-admitted', top.admitted, 'nobody yet');
  show('top-refused', top.refused, 'nobody refused');
}

// ---- clients ----

const pages = { after: [''], next: '' }; // after values of the pages seen

function clientsPath() {
  const q = new URLSearchParams({ limit: PAGE_SIZE });
  const after = pages.after[pages.after.length - 1];
  if (after) q.set('after', after);
  const prefix = $('search').value.trim();
  if (prefix) q.set('prefix', prefix);
  return '/clients?' + q;
}

async function loadClients() {
  const { clients, next } = await api('GET', clientsPath());
  pages.next = next;
  $('next-page').disabled = !next;
  $('first-page').disabled = pages.after.length === 1;
  syncRows('clients', clients, (c) => c.client_id, () => {
    const tr = cellsRow(6);
    const actions = el('span', null, { class: 'actions' });
    actions.append(
      el('button', 'Edit', { type: 'button', 'data-action': 'edit' }),
      el('button', 'Rotate key', { type: 'button', 'data-action': 'rotate' }),
      el('button', 'Delete', { type: 'button', 'data-action': 'delete', class: 'danger' }));
    tr.cells[5].append(actions);
    return tr;
  }, (tr, c) => {
    const key = c.api_key_prefix ? c.api_key_prefix + '…' : '••••' + c.api_key.slice(-4);
    setText(tr.cells[0], c.client_id);
    setText(tr.cells[1], key);
    setText(tr.cells[2], c.rate_per_sec);
    setText(tr.cells[3], c.capacity);
    setText(tr.cells[4], c.tokens.toFixed(1));
    setData(tr, 'client', c.client_id);
    setData(tr, 'rate', c.rate_per_sec);
    setData(tr, 'capacity', c.capacity);
  }, 'no clients');
}

function showKey(c) {
  $('new-key-client').textContent = c.client_id;
  $('new-key-value').textContent = c.api_key;
  $('new-key').hidden = false;
  $('copy-key').textContent = 'Copy';
}

// copyKey copies the new key; without the clipboard API (plain http on a
// non-loopback name) it selects the key for the user to copy.
async function copyKey() {
  try {
    await navigator.clipboard.writeText($('new-key-value').textContent);
    $('copy-key').textContent = 'Copied';
  } catch {
    const range = document.createRange();
    range.selectNodeContents($('new-key-value'));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
}

function numberOrUndefined(input) {
  return input.value === '' ? undefined : Number(input.value);
}

async function createClient(ev) {
  ev.preventDefault();
  const body = { client_id: $('create-id').value.trim() };
  const rate = numberOrUndefined($('create-rate'));
  const capacity = numberOrUndefined($('create-capacity'));
  if (rate !== undefined) body.rate_per_sec = rate;
  if (capacity !== undefined) body.capacity = capacity;
  await guarded('clients-error', async () => {
    const c = await api('POST', '/clients', body);
    showKey(c);
    $('create-form').reset();
    await loadClients();
  });
}

function confirmAction(text) {
  return new Promise((resolve) => {
    const d = $('confirm-dialog');
    $('confirm-text').textContent = text;
    d.addEventListener('close', () => resolve(d.returnValue === 'yes'), { once: true });
    d.returnValue = '';
    d.showModal();
  });
}

let editing = '';

async function clientAction(ev) {
  const button = ev.target.closest('button[data-action]');
  if (!button) return;
  const tr = button.closest('tr');
  const id = tr.dataset.client;
  const path = '/clients/' + encodeURIComponent(id);
  switch (button.dataset.action) {
    case 'edit':
      editing = id;
      $('edit-client').textContent = id;
      $('edit-rate').value = tr.dataset.rate;
      $('edit-capacity').value = tr.dataset.capacity;
      $('edit-error').textContent = '';
      $('edit-dialog').showModal();
      break;
    case 'rotate':
      if (await confirmAction(`Give ${id} a new key? The old key stops working at once.`)) {
        await guarded('clients-error', async () => { showKey(await api('POST', path + '/rotate-key')); });
      }
      break;
    case 'delete':
      if (await confirmAction(`Delete ${id}? Its key stops working at once.`)) {
        await guarded('clients-error', async () => { await api('DELETE', path); await loadClients(); });
      }
      break;
  }
}

async function saveLimits(ev) {
  ev.preventDefault();
  const body = { rate_per_sec: Number($('edit-rate').value), capacity: Number($('edit-capacity').value) };
  await guarded('edit-error', async () => {
    await api('PATCH', '/clients/' + encodeURIComponent(editing), body);
    $('edit-dialog').close();
    await loadClients();
  });
}

// guarded runs fn and shows its failure in the element errorId.
async function guarded(errorId, fn) {
  $(errorId).textContent = '';
  try {
    await fn();
  } catch (err) {
    if (err instanceof AuthError) return needKey(err.message);
    $(errorId).textContent = err.message;
  }
}

// ---- sign-in and refresh ----

let timer = 0;

function needKey(message) {
  clearTimeout(timer);
  sessionStorage.removeItem(KEY_STORE);
  $('main').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message || '';
  $('status').textContent = 'sign-in needed';
  $('admin-key').focus();
}

async function refresh() {
  clearTimeout(timer);
  try {
    await Promise.all([loadBackends(), loadTraffic(), loadTop(), loadClients()]);
    $('sign-in').hidden = true;
    $('main').hidden = false;
    $('sign-out').hidden = !sessionStorage.getItem(KEY_STORE);
    $('status').textContent = 'updated ' + new Date().toLocaleTimeString();
    $('status').className = 'muted';
  } catch (err) {
    if (err instanceof AuthError) return needKey(err.message);
    $('status').textContent = 'update failed: ' + err.message;
    $('status').className = 'error';
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function signIn(ev) {
  ev.preventDefault();
  sessionStorage.setItem(KEY_STORE, $('admin-key').value);
  $('admin-key').value = '';
  refresh();
}

function start() {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => needKey(''));
  $('create-form').addEventListener('submit', createClient);
  $('edit-form').addEventListener('submit', saveLimits);
  $('clients').addEventListener('click', clientAction);
  for (const b of document.querySelectorAll('dialog .cancel')) {
    b.addEventListener('click', () => b.closest('dialog').close());
  }
  $('copy-key').addEventListener('click', copyKey);
  $('dismiss-key').addEventListener('click', () => { $('new-key').hidden = true; });
  $('search').addEventListener('input', () => { pages.after = ['']; guarded('clients-error', loadClients); });
  $('search-form').addEventListener('submit', (ev) => ev.preventDefault());
  $('next-page').addEventListener('click', () => { pages.after.push(pages.next); guarded('clients-error', loadClients); });
  $('first-page').addEventListener('click', () => { pages.after = ['']; guarded('clients-error', loadClients); });
  refresh();
}

start();
