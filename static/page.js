/**
 * The candidate page (`static/index.html`, the `join_url`): wires the
 * InterviewClient to the page. A separate file, not an inline script, so the
 * page's Content-Security-Policy can forbid inline scripts.
 */
import { InterviewClient } from '/static/client.js';

const $ = (id) => document.getElementById(id);
const { sessionId, token } = takeCredentials();

/**
 * The session id and token from the join URL. The token is moved out of the
 * address bar at once (history, bookmarks, screen shares and shoulder
 * surfers see `?session=` only) and kept in this tab's sessionStorage, so
 * a reload still rejoins.
 */
function takeCredentials() {
  const params = new URLSearchParams(location.search);
  const id = params.get('session');
  const key = id && `interview-token:${id}`;
  let secret = params.get('token');
  try {
    if (secret && key) sessionStorage.setItem(key, secret);
    else if (key) secret = sessionStorage.getItem(key);
  } catch {
    // Storage disabled: the token lives in memory only, a reload cannot rejoin.
  }
  if (params.has('token')) {
    params.delete('token');
    const query = params.toString();
    history.replaceState(history.state, '', `${location.pathname}${query ? `?${query}` : ''}${location.hash}`);
  }
  return { sessionId: id, token: secret };
}

const STATE_TEXT = { listening: 'listening — your turn', thinking: 'thinking…', speaking: 'speaking', ended: 'finished' };
const CONNECTION_TEXT = {
  connecting: 'connecting…', connected: 'connected', reconnecting: 'reconnecting…',
  failed: 'lost', closed: 'closed',
};
const ERROR_TEXT = {
  media_denied: 'Camera or microphone access was blocked. Allow both for this page (the camera icon in the address bar), then reload.',
  media_unavailable: 'No camera or microphone could be opened. Check they are connected and not used by another app, then reload.',
  unsupported_browser: 'This browser cannot run the interview. Please use a current Chrome, Edge, Firefox or Safari.',
  bad_token: 'This interview link is not valid. Please use the link you were sent.',
  session_ended: 'This interview has already ended.',
  already_connected: 'This interview is already open in another tab or window. Close it, then reload this page.',
  server: 'The interview server had a problem. Please reload this page in a moment.',
  network: 'The connection to the interview was lost. Check your network, then reload this page to rejoin.',
  autoplay_blocked: 'Click anywhere on the page to hear the interviewer.',
};
const ANOMALY_TEXT = {
  multiple_persons: 'More than one person is in view. Please make sure you are alone.',
  devices_detected: 'A device (phone, laptop, screen) is in view. Please put it away.',
  no_person: 'You are not in view. Please face the camera.',
};

function problem(text) {
  $('problem').textContent = text;
  $('problem').hidden = !text;
}

function show(section) {
  for (const id of ['intro', 'live', 'done']) $(id).hidden = id !== section;
}

if (!sessionId) {
  problem('This page needs an interview link (it is missing the session). Please use the link you were sent.');
  $('start').disabled = true;
}

const client = sessionId && new InterviewClient({ serverUrl: '', sessionId, token });
window.__interviewClient = client;  // diagnostics and tests

client?.on('connection', ({ state }) => {
  $('connection').textContent = CONNECTION_TEXT[state] ?? state;
  $('connection').dataset.state = state;
  if (state === 'closed') finish();
  if (state === 'failed') $('end').hidden = true;
});
client?.on('state', ({ state }) => showState(state));
client?.on('interviewer', ({ text }) => {
  showState('speaking');  // a sentence starts: the interviewer is speaking
  $('caption').textContent = text;
  addLine('interviewer', 'Interviewer', text);
});
client?.on('transcript', ({ text }) => addLine('you', 'You', text));
client?.on('anomaly', (anomaly) => {
  const note = document.createElement('p');
  note.className = 'notice';
  note.dataset.anomaly = anomaly.anomaly;
  note.textContent = ANOMALY_TEXT[anomaly.anomaly] ?? `Noted: ${anomaly.anomaly}`;
  $('notices').replaceChildren(note);
});
client?.on('error', ({ code, message }) => {
  problem(ERROR_TEXT[code] ?? message ?? 'Something went wrong.');
  if (code === 'autoplay_blocked') {
    document.addEventListener('click', () => { client.audioElement?.play(); problem(''); }, { once: true });
  }
});

function showState(state) {
  if ($('state').dataset.state === state) return;  // aria-live: announce changes only
  $('state').textContent = STATE_TEXT[state] ?? state;
  $('state').dataset.state = state;
}

function addLine(who, label, text) {
  if (!text) return;
  const item = document.createElement('li');
  item.className = who;
  const name = document.createElement('span');
  name.className = 'who';
  name.textContent = `${label}: `;
  const words = document.createElement('span');
  words.className = 'words';
  words.textContent = text;
  item.append(name, words);
  const list = $('transcript');
  list.append(item);
  // Scroll the list only: scrollIntoView could scroll an embedding page too.
  list.scrollTop = list.scrollHeight;
}

$('start').addEventListener('click', async () => {
  $('start').disabled = true;
  problem('');
  show('live');
  $('end').focus();
  try {
    // A test harness may turn the browser's audio processing off (window.interviewStartOptions).
    await client.start({ container: $('audio-slot'), ...(window.interviewStartOptions ?? {}) });
    $('self-view').srcObject = client.localStream;
  } catch (err) {
    // The reason is on screen (the 'error' event); start() runs once, so a reload retries.
    show('intro');
    $('start').hidden = err.code === 'session_ended' || err.code === 'bad_token';
    $('title').focus();
  }
});

$('end').addEventListener('click', async () => {
  $('end').disabled = true;
  $('end').textContent = 'Ending…';
  await client.end();
  finish();
});

function finish() {
  if (!$('done').hidden) return;
  show('done');
  $('done-heading').focus();
}
