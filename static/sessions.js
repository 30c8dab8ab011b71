/**
 * The sessions list (`/review`) for the API key holder: recent interviews
 * with their status, length, open flags and review status, filtered by
 * status and date, each linking to its review page, a page of 50 at a
 * time. The key is kept in this tab's sessionStorage only; the review pages
 * it opens read it from there.
 */

const $ = (id) => document.getElementById(id);
const KEY_SLOT = 'interview-api-key';

function key() {
  try { return sessionStorage.getItem(KEY_SLOT); } catch { return null; }
}

function problem(text) {
  $('problem').textContent = text;
  $('problem').hidden = !text;
}

function clock(seconds) {
  if (seconds == null) return '–';
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

const PAGE = 50;
// The list shown: the filters its first page was asked with, where the next
// page starts (`next`), and which request is the current one.
const shown = { filters: null, next: null, request: 0 };

function filters() {
  const params = new URLSearchParams();
  const status = $('status').value;
  const review = $('review-status').value;
  if (status) params.set('status', status);
  if (review) params.set('review_status', review);
  if ($('since').value) params.set('since', `${$('since').value}T00:00:00Z`);
  if ($('until').value) params.set('until', `${$('until').value}T23:59:59Z`);
  return params;
}

function filtersOf(params) {
  const copy = new URLSearchParams(params);
  copy.delete('after');
  return copy.toString();
}

async function list(more = false) {
  const request = ++shown.request;
  $('more').disabled = true; // one "More" at a time
  try {
    await fill(more, request);
  } finally {
    if (request === shown.request) $('more').disabled = false;
  }
}

async function fill(more, request) {
  // "More" goes on with the filters of the list on screen, not the form's
  // (edited but not submitted); a newer request makes an older one moot.
  const params = new URLSearchParams(more ? shown.filters : filters());
  params.set('limit', String(PAGE));
  if (more) params.set('after', shown.next);
  const headers = {};
  if (key()) headers.Authorization = `Bearer ${key()}`;
  const resp = await fetch(`/sessions?${params}`, { headers, cache: 'no-store' });
  if (request !== shown.request) return;
  if (resp.status === 401) {
    try { sessionStorage.removeItem(KEY_SLOT); } catch { /* none */ }
    $('key-form').hidden = false;
    $('filters').hidden = true;
    problem(key() ? 'That API key was refused.' : 'This list needs the API key.');
    return;
  }
  const body = await resp.json();
  if (request !== shown.request) return;
  if (!resp.ok) {
    problem(body.error || `${resp.status}`);
    return;
  }
  problem('');
  $('key-form').hidden = true;
  $('filters').hidden = false;
  const items = body.sessions.map((s) => {
    const when = s.start_time ? new Date(s.start_time).toLocaleString() : 'not started';
    const link = document.createElement('a');
    link.href = new URL(s.review_page, location.href).pathname;
    link.textContent = s.job_role || s.session_id;
    const meta = document.createElement('p');
    meta.className = 'muted';
    meta.textContent = `${when} · ${s.status.replace('_', ' ')} · ${clock(s.duration_s)} · `
      + `${s.open_flags} open flag${s.open_flags === 1 ? '' : 's'} of ${s.flags} · review: ${s.review_status.replace('_', ' ')}`;
    const li = document.createElement('li');
    li.dataset.session = s.session_id;
    li.append(link, meta);
    return li;
  });
  if (more) {
    $('sessions').append(...items);
  } else {
    $('sessions').replaceChildren(...items);
    shown.filters = filtersOf(params);
  }
  shown.next = body.next;
  $('more').hidden = !shown.next;
  const count = $('sessions').children.length;
  const plural = count === 1 ? '' : 's';
  $('count').textContent = `${count} interview${plural}${shown.next ? ', more below' : ''}`;
}

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  try { sessionStorage.setItem(KEY_SLOT, $('api-key').value); } catch { /* memory only: no */ }
  list();
});
$('filters').addEventListener('submit', (event) => {
  event.preventDefault();
  list();
});
$('more').addEventListener('click', () => {
  list(true).catch((error) => problem(`The list could not be loaded: ${error.message}`));
});
list().catch((error) => problem(`The list could not be loaded: ${error.message}`));
