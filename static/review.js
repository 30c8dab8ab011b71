/**
 * The review page (`/review/{session_id}?token=…`, the `review_url`): the
 * recording with the flags on its time bar, the transcript following
 * playback, decisions per flag and for the interview, and the report.
 *
 * Every time comes from the server on the recording's clock (`offset_s`),
 * so seeking the video to a line's or a flag's offset shows that moment.
 * The page holds no data itself: it reads `GET /sessions/{id}/review` with
 * the review token, or with the API key the sessions list keeps in this
 * tab's sessionStorage (it then mints a token for the video's URL).
 */

const $ = (id) => document.getElementById(id);
const sessionId = location.pathname.split('/').filter(Boolean)[1] || '';
const API_KEY_SLOT = 'interview-api-key';
const LABELS = {
  multiple_persons: 'More than one person', devices_detected: 'Device in view',
  no_person: 'Nobody in view',
};
const DECISION_TEXT = { confirmed: 'confirmed', dismissed: 'dismissed', open: 'undecided' };

const state = { token: null, data: null, selected: null, current: -1, userScrolled: 0 };
const video = $('video');

/** The review token from the URL, moved out of the address bar at once. */
function takeToken() {
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  if (params.has('token')) {
    params.delete('token');
    const query = params.toString();
    history.replaceState(history.state, '', `${location.pathname}${query ? `?${query}` : ''}`);
    try { sessionStorage.setItem(`review-token:${sessionId}`, token); } catch { /* memory only */ }
    return token;
  }
  try { return sessionStorage.getItem(`review-token:${sessionId}`); } catch { return null; }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, { ...options, headers, cache: 'no-store' });
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok) {
    const message = (body && body.error) || `${resp.status} ${resp.statusText}`;
    const error = new Error(message);
    error.status = resp.status;
    throw error;
  }
  return body;
}

/** With the API key only (the sessions list), mint a deciding token for this page. */
async function tokenFromKey() {
  let key = null;
  try { key = sessionStorage.getItem(API_KEY_SLOT); } catch { /* none */ }
  if (!key) return null;
  const resp = await fetch(`/sessions/${sessionId}/review-tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ scope: 'decide', reviewer: 'api-key holder', ttl_s: 12 * 3600 }),
  });
  if (!resp.ok) return null;
  const minted = await resp.json();
  try { sessionStorage.setItem(`review-token:${sessionId}`, minted.token); } catch { /* memory */ }
  return minted.token;
}

/** A media URL (a <video> or <img> sends no header) with the page's own
 * short-lived read-only token in its query, never the reviewer's token. */
function withToken(url) {
  const token = state.data && state.data.media_token;
  if (!url || !token) return url;
  const u = new URL(url, location.href);
  u.searchParams.set('token', token);
  return u.pathname + u.search;
}

function problem(text) {
  const box = $('problem');
  box.textContent = text;
  box.hidden = !text;
}

function clock(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${rest}` : `${m}:${rest}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

/** The recording's length: the video's once known, else the row's. */
function length() {
  const d = video.duration;
  if (Number.isFinite(d) && d > 0) return d;
  const data = state.data;
  const last = Math.max(0, ...data.transcript.map((l) => l.end_offset_s || l.offset_s || 0),
    ...data.flags.map((f) => f.offset_s || 0));
  return data.duration_s || last || 1;
}

function seek(seconds, play = true) {
  if (seconds == null) return;
  video.currentTime = Math.max(0, seconds);
  if (play && video.src) video.play().catch(() => {});
  follow(true);
}

// -- rendering ---------------------------------------------------------------------

function render() {
  const data = state.data;
  $('title').textContent = `Interview review: ${data.job_role || 'interview'}`;
  document.title = `Review: ${data.job_role || data.session_id}`;
  const started = data.start_time ? new Date(data.start_time).toLocaleString() : 'not started';
  $('summary').textContent = [
    started, `status ${data.status.replace('_', ' ')}`,
    data.duration_s != null ? `${clock(data.duration_s)} long` : null,
    data.live ? 'still live' : null,
  ].filter(Boolean).join(' · ');
  renderVideo();
  renderLines();
  renderFlags();
  renderReview();
  renderReport();
  $('loading').hidden = true;
  $('content').hidden = false;
}

function renderVideo() {
  const data = state.data;
  const ready = data.recording_ready && data.recording_url;
  $('no-recording').hidden = Boolean(ready);
  video.hidden = !ready;
  if (ready && !video.src) video.src = withToken(data.recording_url);
}

function renderLines() {
  const list = $('lines');
  list.replaceChildren();
  state.data.transcript.forEach((line, i) => {
    const who = line.role === 'assistant' ? 'Interviewer' : 'Candidate';
    const at = line.offset_s;
    const button = el('button', {
      type: 'button', class: 'line-button', disabled: at == null,
      'aria-label': `${who} at ${clock(at)}: ${line.content}`,
      onclick: () => seek(at),
    }, el('span', { class: 'when', text: clock(at) }), el('span', { class: 'who', text: who }),
    el('span', { class: 'words', text: line.content }));
    list.append(el('li', { class: line.role === 'assistant' ? 'interviewer' : 'you', 'data-index': i }, button));
  });
}

function flagTitle(flag) {
  return LABELS[flag.type] || flag.type.replace('_', ' ');
}

function renderFlags() {
  const data = state.data;
  const bar = $('timebar');
  bar.querySelectorAll('.mark').forEach((m) => m.remove());
  const list = $('flags');
  list.replaceChildren();
  const total = length();
  for (const flag of data.flags) {
    const decision = flag.decision ? flag.decision.decision : 'open';
    const label = `${flagTitle(flag)} at ${clock(flag.offset_s)} (${DECISION_TEXT[decision]})`;
    const left = flag.offset_s == null ? 0 : Math.min(100, (100 * flag.offset_s) / total);
    const mark = el('button', {
      type: 'button', class: `mark ${decision}`,
      'data-flag': flag.flag, 'aria-label': label, title: label,
      onclick: () => select(flag.flag, true),
    });
    mark.style.left = `${left}%`; // CSSOM: the page's CSP forbids style attributes
    bar.append(mark);
    list.append(el('li', { class: `flag ${decision}`, 'data-flag': flag.flag },
      el('button', {
        type: 'button', class: 'flag-button', 'data-flag': flag.flag,
        'aria-pressed': state.selected === flag.flag ? 'true' : 'false',
        onclick: () => select(flag.flag, true),
      },
      el('span', { class: 'when', text: clock(flag.offset_s) }),
      el('span', { class: 'what', text: flagTitle(flag) }),
      el('span', { class: `badge ${decision}`, text: DECISION_TEXT[decision] }))));
  }
  if (!data.flags.length) list.append(el('li', { class: 'muted', text: 'No flags: nothing unusual was seen.' }));
  const open = data.review.open_flags;
  $('open-count').textContent = data.flags.length ? `(${open} open of ${data.flags.length})` : '';
  if (state.selected != null) showEvidence(state.selected);
}

function select(index, play) {
  const flag = state.data.flags[index];
  if (!flag) return;
  state.selected = index;
  seek(flag.offset_s, false);
  if (play) video.pause();
  showEvidence(index);
  document.querySelectorAll('.flag-button').forEach((b) => {
    b.setAttribute('aria-pressed', String(Number(b.dataset.flag) === index));
  });
  $('evidence').focus({ preventScroll: false });
}

function showEvidence(index) {
  const flag = state.data.flags[index];
  const box = $('evidence');
  box.hidden = false;
  box.dataset.flag = index;
  $('evidence-heading').textContent = `${flagTitle(flag)} at ${clock(flag.offset_s)}`;
  const img = $('evidence-img');
  img.src = withToken(flag.evidence_url) || '';
  img.alt = `Evidence: the frame where "${flagTitle(flag)}" was seen`;
  const what = (flag.detections || []).map((d) => (typeof d === 'string' ? d : d.label || JSON.stringify(d)));
  $('evidence-text').textContent = `${flag.count ?? ''} seen${what.length ? `: ${what.join(', ')}` : ''} (${flag.timestamp || ''})`;
  const decision = flag.decision;
  $('flag-note').value = decision && decision.note ? decision.note : '';
  $('flag-decision').textContent = decision
    ? `${DECISION_TEXT[decision.decision]} by ${decision.decided_by}, ${new Date(decision.decided_at).toLocaleString()}`
    : 'Undecided.';
  const canDecide = state.data.you.can_decide;
  for (const id of ['confirm', 'dismiss', 'reopen', 'flag-note']) $(id).disabled = !canDecide;
}

async function decideFlag(decision) {
  const index = state.selected;
  if (index == null) return;
  try {
    await api(`/sessions/${sessionId}/flags/${index}`, {
      method: 'PUT', body: JSON.stringify({ decision, note: $('flag-note').value || null }),
    });
    problem('');
    await load();
    $('flag-decision').focus?.();
  } catch (error) {
    problem(`The decision was not saved: ${error.message}`);
  }
}

function renderReview() {
  const review = state.data.review;
  $('review-status').value = review.status;
  $('review-note').value = review.note || '';
  $('review-state').textContent = review.decided_by
    ? `${review.status.replace('_', ' ')}, by ${review.decided_by}, ${new Date(review.decided_at).toLocaleString()}`
    : 'Not reviewed yet.';
  const canDecide = state.data.you.can_decide;
  for (const id of ['review-status', 'review-note', 'save-review']) $(id).disabled = !canDecide;
  if (!canDecide) $('review-state').textContent += ' (this link may read, not decide)';
  const history = $('history');
  history.replaceChildren(...review.history.map((h) => el('li', {
    text: `${new Date(h.decided_at).toLocaleString()}: ${h.flag == null ? 'review' : `flag ${h.flag + 1}`} ${h.decision.replace('_', ' ')} by ${h.decided_by}${h.note ? `: “${h.note}”` : ''}`,
  })));
}

/** The transcript line holding `quote` (the report's quotes), or -1. */
function lineOf(quote) {
  const want = quote.toLowerCase().replace(/\s+/g, ' ').trim();
  return state.data.transcript.findIndex((l) => l.content.toLowerCase().replace(/\s+/g, ' ').includes(want));
}

function renderReport() {
  const box = $('report');
  box.replaceChildren();
  const report = state.data.report;
  if (!report) {
    box.append(el('p', { class: 'muted', text: 'No report yet: it is written when the interview ends.' }));
    return;
  }
  const questions = report.questions || [];
  if (questions.length) {
    const rows = questions.map((q) => el('tr', {},
      el('td', { text: q.question || '' }),
      el('td', { text: q.answer_duration_s != null ? `${q.answer_duration_s} s` : '–' }),
      el('td', { text: q.words_per_minute != null ? String(q.words_per_minute) : '–' })));
    box.append(el('div', { class: 'table-wrap' }, el('table', {},
      el('thead', {}, el('tr', {}, el('th', { text: 'Question' }), el('th', { text: 'Answer time' }),
        el('th', { text: 'Words/min' }))),
      el('tbody', {}, ...rows))));
  }
  const evaluation = report.evaluation;
  const scores = evaluation && (evaluation.competencies || evaluation.scores);
  if (Array.isArray(scores) && scores.length) {
    box.append(el('h3', { text: 'Evaluation' }));
    const list = el('ul', { class: 'scores' });
    for (const c of scores) {
      const quotes = (c.quotes || []).map((q) => {
        const i = lineOf(q);
        const at = i >= 0 ? state.data.transcript[i].offset_s : null;
        return el('li', {}, at == null ? el('q', { text: q })
          : el('button', { type: 'button', class: 'link', onclick: () => seek(at) }, el('q', { text: q }),
            el('span', { class: 'muted', text: ` (${clock(at)})` })));
      });
      list.append(el('li', {},
        el('strong', { text: `${c.name || c.competency || 'Score'}: ${c.score ?? '–'}` }),
        c.rationale ? el('p', { text: c.rationale }) : null,
        quotes.length ? el('ul', {}, ...quotes) : null));
    }
    box.append(list);
  }
  const talk = report.talk_time_s;
  if (talk) box.append(el('p', { class: 'muted', text: `Talk time: candidate ${talk.candidate} s, interviewer ${talk.interviewer} s.` }));
}

// -- following playback --------------------------------------------------------------

/** Highlight the line being played; keep it in view unless the reader scrolled away. */
function follow(force = false) {
  const t = video.currentTime || 0;
  $('clock').textContent = clock(t);
  $('progress').style.width = `${Math.min(100, (100 * t) / length())}%`;
  const lines = state.data ? state.data.transcript : [];
  let current = -1;
  lines.forEach((line, i) => { if (line.offset_s != null && line.offset_s <= t + 0.05) current = i; });
  if (current === state.current && !force) return;
  state.current = current;
  document.querySelectorAll('#lines li').forEach((li) => {
    const on = Number(li.dataset.index) === current;
    li.classList.toggle('current', on);
    if (on) li.querySelector('button').setAttribute('aria-current', 'true');
    else li.querySelector('button').removeAttribute('aria-current');
  });
  const li = document.querySelector(`#lines li[data-index="${current}"]`);
  if (li && Date.now() - state.userScrolled > 4000) {
    const pane = $('lines');
    const top = li.offsetTop - pane.offsetTop;
    if (top < pane.scrollTop || top > pane.scrollTop + pane.clientHeight - li.offsetHeight) {
      pane.scrollTop = Math.max(0, top - pane.clientHeight / 3);
    }
  }
}

// -- start -----------------------------------------------------------------------------

async function load() {
  state.data = await api(`/sessions/${sessionId}/review`);
  render();
  follow(true);
}

async function start() {
  if (!/^[0-9a-f-]{36}$/i.test(sessionId)) {
    problem('This is not a review link: the session id is missing.');
    $('loading').hidden = true;
    return;
  }
  state.token = takeToken() || await tokenFromKey();
  try {
    try {
      await load();
    } catch (error) {
      // A token kept from an earlier visit may have expired: with the API key
      // in this tab (the sessions list), mint a fresh one and try once more.
      if (error.status !== 401) throw error;
      const fresh = await tokenFromKey();
      if (!fresh) throw error;
      state.token = fresh;
      await load();
    }
  } catch (error) {
    $('loading').hidden = true;
    problem(error.status === 401 || error.status === 403
      ? 'This review link is not valid (or no longer).' : `The interview could not be loaded: ${error.message}`);
  }
}

video.addEventListener('timeupdate', () => follow());
video.addEventListener('seeked', () => follow(true));
video.addEventListener('loadedmetadata', () => {
  $('length').textContent = clock(video.duration);
  if (state.data) renderFlags();
});
$('lines').addEventListener('wheel', () => { state.userScrolled = Date.now(); }, { passive: true });
$('lines').addEventListener('touchmove', () => { state.userScrolled = Date.now(); }, { passive: true });
$('confirm').addEventListener('click', () => decideFlag('confirmed'));
$('dismiss').addEventListener('click', () => decideFlag('dismissed'));
$('reopen').addEventListener('click', () => decideFlag('open'));
$('timebar').addEventListener('click', (event) => {
  if (event.target !== $('timebar') && event.target !== $('progress')) return;
  const rect = $('timebar').getBoundingClientRect();
  seek(((event.clientX - rect.left) / rect.width) * length(), false);
});
$('review-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await api(`/sessions/${sessionId}/review`, {
      method: 'PUT',
      body: JSON.stringify({ status: $('review-status').value, note: $('review-note').value || null }),
    });
    problem('');
    await load();
  } catch (error) {
    problem(`The review was not saved: ${error.message}`);
  }
});

window.__review = state;
start();
