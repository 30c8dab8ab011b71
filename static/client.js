/**
 * The candidate's side of an interview: camera and microphone over WebRTC to
 * the interview server, the interviewer's voice back, live events over the
 * `events` data channel.
 *
 * A dependency-free ES module; no build step.
 *
 *   import { InterviewClient } from '/static/client.js';
 *   const client = new InterviewClient({ serverUrl: '', sessionId, token });
 *   client.on('interviewer', (m) => show(m.text));
 *   await client.start({ container: document.querySelector('#audio') });
 *   ...
 *   await client.end();
 *
 * The server does not trickle ICE, so every offer carries all its candidates.
 * If the connection fails (or stays disconnected for 5 s) the client builds a
 * new RTCPeerConnection with the same camera and microphone tracks and offers
 * again to the same session, with backoff, for up to 30 s.
 */

const PING_INTERVAL_MS = 2000;
const ICE_GATHER_TIMEOUT_MS = 3000;
const DISCONNECTED_GRACE_MS = 5000;
const DEFAULT_REJOIN_WINDOW_MS = 30000;
const CONNECT_TIMEOUT_MS = 15000;
const END_TIMEOUT_MS = 3000;
const REQUEST_TIMEOUT_MS = 10000;
const CONFIG_TIMEOUT_MS = 2000;
const DEFAULT_MAX_FRAMERATE = 10;
// How long a candidate waits for a free slot when the server says it is busy (503).
const BUSY_WAIT_MS = 15 * 60 * 1000;

/**
 * @typedef {'transcript'|'interviewer'|'state'|'anomaly'|'error'|'connection'} InterviewEvent
 * @typedef {'new'|'connecting'|'busy'|'connected'|'reconnecting'|'failed'|'closed'} ConnectionState
 * @typedef {'media_denied'|'media_unavailable'|'unsupported_browser'|'bad_token'|
 *   'session_ended'|'already_connected'|'network'|'server'|'autoplay_blocked'} ErrorCode
 *
 * @typedef {object} StartOptions
 * @property {boolean} [audio=true] send the microphone
 * @property {boolean} [video=true] send the camera
 * @property {HTMLElement|null} [container] where the interviewer's `<audio>` goes
 *   (default: hidden, appended to `<body>`)
 * @property {boolean} [echoCancellation=true]
 * @property {boolean} [noiseSuppression=true]
 * @property {boolean} [autoGainControl=true]
 */

/** A client-side failure; `code` says what kind, `retryable` whether a rejoin may help. */
export class InterviewError extends Error {
  /**
   * @param {ErrorCode} code
   * @param {string} message
   * @param {{retryable?: boolean, status?: number}} [details]
   */
  constructor(code, message, { retryable = false, status = 0, retryAfterMs = 0 } = {}) {
    super(message);
    this.name = 'InterviewError';
    this.code = code;
    this.retryable = retryable;
    this.status = status;
    /** When the server said to come back (503 + `Retry-After`), in ms; 0 if it did not. */
    this.retryAfterMs = retryAfterMs;
  }
}

export class InterviewClient {
  /**
   * @param {{serverUrl?: string, sessionId: string, token?: string|null}} options
   *   `serverUrl` is the server's base URL ('' for the page's own origin).
   */
  constructor({ serverUrl = '', sessionId, token = null }) {
    if (!sessionId) throw new TypeError('InterviewClient needs a sessionId');
    this.serverUrl = serverUrl.replace(/\/+$/, '');
    this.sessionId = sessionId;
    this.token = token;
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
    /** @type {ConnectionState} */
    this._state = 'new';
    /** @type {RTCPeerConnection|null} */
    this._pc = null;
    /** @type {RTCDataChannel|null} */
    this._channel = null;
    /** @type {MediaStream|null} */
    this._stream = null;
    /** @type {HTMLAudioElement|null} */
    this._audio = null;
    /** Settings from the server's `GET /config`, with defaults if it fails. */
    this._config = { maxFramerate: DEFAULT_MAX_FRAMERATE, rejoinWindowMs: DEFAULT_REJOIN_WINDOW_MS, iceServers: [] };
    this._started = false;
    // Set once the interview is over (ended by us or by the server): a
    // closing connection is then expected, not something to recover from.
    this._leaving = false;
    this._finished = false;
    /** @type {Promise<void>|null} */
    this._rejoining = null;
    this._pingTimer = 0;
    this._disconnectTimer = 0;
    // Closing the connection ourselves tells the server at once (DTLS
    // close_notify); a closing tab alone leaves it to its keepalive timeout.
    this._onPageHide = () => this._finish('closed');
  }

  /** @returns {ConnectionState} */
  get connectionState() { return this._state; }

  /** The camera and microphone stream (for a self-view), once started. */
  get localStream() { return this._stream; }

  /** The element playing the interviewer's voice, once started. */
  get audioElement() { return this._audio; }

  /** The current RTCPeerConnection (diagnostics: stats, sender parameters). */
  get peerConnection() { return this._pc; }

  /**
   * @param {InterviewEvent} event
   * @param {(payload: any) => void} fn
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }

  /**
   * @param {InterviewEvent} event
   * @param {(payload: any) => void} fn
   */
  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
    return this;
  }

  /**
   * Ask for the camera and microphone, connect, and resolve once connected.
   * Rejects with an `InterviewError` (also emitted as an 'error' event).
   * @param {StartOptions} [options]
   */
  async start(options = {}) {
    if (this._started) throw new Error('start() was already called');
    this._started = true;
    const { audio = true, video = true, container = null } = options;
    try {
      checkSupport();
      this._setState('connecting');
      this._stream = await openMedia(audio, video, options);
      this._config = await this._fetchConfig();
      this._audio = createAudioElement(container);
      this._pingTimer = setInterval(() => this._send({ type: 'ping' }), PING_INTERVAL_MS);
      window.addEventListener('pagehide', this._onPageHide);
      await this._connectWithRetry();
    } catch (err) {
      const error = asInterviewError(err);
      this._fail(error);
      throw error;
    }
  }

  /**
   * End the interview: tell the server, wait (briefly) for it to close the
   * connection, release the camera and microphone.
   */
  async end() {
    if (this._finished || !this._started) return;
    this._leaving = true;
    const channel = this._channel;
    if (channel?.readyState === 'open') {
      const closed = new Promise((resolve) => channel.addEventListener('close', resolve, { once: true }));
      channel.send(JSON.stringify({ type: 'end' }));
      await Promise.race([closed, sleep(END_TIMEOUT_MS)]);
    } else {
      // No channel to speak on: the management call (accepted in local mode,
      // or when the server accepts the session token for it).
      await this._request('POST', `/sessions/${this.sessionId}/end`, undefined, true).catch(() => {});
    }
    this._finish('closed');
  }

  // -- connecting --------------------------------------------------------------

  /**
   * Build a peer connection, offer, and wait until it is connected.
   * @param {number} timeoutMs
   */
  async _connect(timeoutMs) {
    const pc = this._buildPeer();
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await iceGatheringComplete(pc, ICE_GATHER_TIMEOUT_MS);
      const sdp = pc.localDescription.sdp;
      if (!/^a=candidate:/m.test(sdp)) {
        // Posting would reserve the session for a peer that can never connect.
        throw new InterviewError('network', 'no network path found (no ICE candidates)', { retryable: true });
      }
      const answer = await this._request('POST', `/sessions/${this.sessionId}/offer`, { sdp, type: 'offer' });
      await pc.setRemoteDescription(answer);
      await this._limitFramerate(pc);
      await connected(pc, timeoutMs);
    } catch (err) {
      if (this._pc === pc) this._closePeer();
      throw err;
    }
  }

  /** A new RTCPeerConnection carrying the local tracks; it becomes `this._pc`. */
  _buildPeer() {
    this._closePeer();
    const pc = new RTCPeerConnection({ iceServers: this._config.iceServers });
    this._pc = pc;
    const stream = this._stream;
    const [mic] = stream.getAudioTracks();
    const [camera] = stream.getVideoTracks();
    // sendrecv: the server answers on this transceiver with the interviewer's voice.
    pc.addTransceiver(mic ?? 'audio', { direction: mic ? 'sendrecv' : 'recvonly', streams: [stream] });
    if (camera) pc.addTransceiver(camera, { direction: 'sendonly', streams: [stream] });
    const channel = pc.createDataChannel('events', { ordered: true });
    channel.addEventListener('message', (event) => this._handleMessage(event.data));
    // The server closing the channel is the quickest sign that it dropped us.
    channel.addEventListener('close', () => { if (pc === this._pc) this._handleDrop(); });
    this._channel = channel;
    pc.addEventListener('track', (event) => this._handleTrack(event));
    pc.addEventListener('connectionstatechange', () => {
      if (pc === this._pc) this._handleConnectionState(pc.connectionState);
    });
    return pc;
  }

  /** @param {RTCPeerConnection} pc */
  async _limitFramerate(pc) {
    const sender = pc.getSenders().find((s) => s.track?.kind === 'video');
    if (!sender) return;
    const parameters = sender.getParameters();
    if (!parameters.encodings?.length) return;
    for (const encoding of parameters.encodings) encoding.maxFramerate = this._config.maxFramerate;
    try {
      await sender.setParameters(parameters);
    } catch (err) {
      console.warn('cannot limit the camera frame rate:', err);
    }
  }

  /** @param {RTCPeerConnectionState} state */
  _handleConnectionState(state) {
    clearTimeout(this._disconnectTimer);
    if (this._finished || this._state === 'connecting') return;
    if (state === 'connected' && !this._rejoining) {
      this._setState('connected');  // recovered on its own
    } else if (state === 'failed') {
      this._handleDrop();
    } else if (state === 'disconnected') {
      this._disconnectTimer = setTimeout(() => this._handleDrop(), DISCONNECTED_GRACE_MS);
    }
  }

  /** The connection is gone: finish if the interview is over, else rejoin (once). */
  _handleDrop() {
    if (this._finished || this._rejoining || this._state === 'connecting') return;
    if (this._leaving) {
      this._finish('closed');
      return;
    }
    this._setState('reconnecting');
    this._closePeer();
    this._rejoining = this._connectWithRetry().catch((err) => this._fail(asInterviewError(err)))
      .finally(() => { this._rejoining = null; });
  }

  /**
   * Connect to the session, retrying what may pass (network errors, the
   * server still holding the previous connection) with backoff, within the
   * server's rejoin grace window (30 s by default).
   */
  async _connectWithRetry() {
    let deadline = Date.now() + this._config.rejoinWindowMs;
    const busyDeadline = Date.now() + BUSY_WAIT_MS;
    let delay = 500;
    for (;;) {
      try {
        await this._connect(Math.max(1000, Math.min(CONNECT_TIMEOUT_MS, deadline - Date.now())));
        if (this._finished) this._closePeer();  // ended while connecting
        else this._setState('connected');
        return;
      } catch (err) {
        const error = asInterviewError(err);
        if (this._finished) return;
        if (error.code === 'busy' && Date.now() < busyDeadline) {
          // The server is full: wait as long as it asks (with some jitter, so
          // that everyone told to wait does not come back at once), then again.
          this._setState('busy');
          const wait = (error.retryAfterMs || delay) * (1 + Math.random() * 0.3);
          await sleep(Math.min(wait, busyDeadline - Date.now()));
          deadline = Date.now() + this._config.rejoinWindowMs;
          continue;
        }
        if (!error.retryable || Date.now() + delay >= deadline) throw error;
        await sleep(delay);
        delay = Math.min(delay * 2, 4000);
      }
    }
  }

  // -- what arrives --------------------------------------------------------------

  /** @param {RTCTrackEvent} event */
  _handleTrack(event) {
    if (event.track.kind !== 'audio' || !this._audio) return;
    this._audio.srcObject = event.streams[0] ?? new MediaStream([event.track]);
    this._audio.play().catch((err) => {
      if (err.name === 'NotAllowedError') {
        this._emitError('autoplay_blocked', 'the browser blocked the interviewer\'s audio; click the page to hear it');
      }
    });
  }

  /** @param {string} data one JSON event from the server */
  _handleMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (!message || typeof message.type !== 'string' || message.type === 'pong') return;
    // The server closes the connection after 'ended'; that is not a drop.
    if (message.type === 'state' && message.state === 'ended') this._leaving = true;
    this._emit(message.type, message);
  }

  // -- helpers ---------------------------------------------------------------------

  _send(message) {
    if (this._channel?.readyState === 'open') this._channel.send(JSON.stringify(message));
  }

  /** `GET /config`; every setting optional, the defaults stand in for what is missing. */
  async _fetchConfig() {
    let body = {};
    try {
      const response = await fetch(`${this.serverUrl}/config`, { signal: timeoutSignal(CONFIG_TIMEOUT_MS) });
      if (response.ok) body = await response.json();
    } catch {
      // An older server, or a slow one: the defaults will do.
    }
    const fps = Number(body.max_framerate);
    const grace = Number(body.rejoin_grace_s);
    return {
      maxFramerate: fps > 0 ? fps : DEFAULT_MAX_FRAMERATE,
      rejoinWindowMs: grace > 0 ? grace * 1000 : DEFAULT_REJOIN_WINDOW_MS,
      iceServers: Array.isArray(body.ice_servers) ? body.ice_servers : [],
    };
  }

  /**
   * A JSON request to the server; rejects with an `InterviewError`.
   * @param {string} method
   * @param {string} path
   * @param {object} [body]
   * @param {boolean} [keepalive] survive the page unloading
   */
  async _request(method, path, body, keepalive = false) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let response;
    try {
      response = await fetch(`${this.serverUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        keepalive,
        signal: timeoutSignal(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      throw new InterviewError('network', `cannot reach the interview server (${err.message})`, { retryable: true });
    }
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) throw httpError(response.status, payload.error, retryAfterMs(response));
    return payload;
  }

  _closePeer() {
    clearTimeout(this._disconnectTimer);
    const pc = this._pc;
    this._pc = null;
    this._channel = null;
    pc?.close();
  }

  /** Stop everything; `state` is the final connection state. */
  _finish(state) {
    if (this._finished) return;
    this._finished = true;
    clearInterval(this._pingTimer);
    window.removeEventListener('pagehide', this._onPageHide);
    this._closePeer();
    this._stream?.getTracks().forEach((track) => track.stop());
    if (this._audio) this._audio.srcObject = null;
    this._setState(state);
  }

  /** @param {InterviewError} error */
  _fail(error) {
    this._emitError(error.code, error.message);
    this._finish('failed');
  }

  /** @param {ConnectionState} state */
  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    this._emit('connection', { state });
  }

  _emitError(code, message) {
    this._emit('error', { type: 'error', code, message });
  }

  _emit(event, payload) {
    for (const fn of this._handlers.get(event) ?? []) {
      try {
        fn(payload);
      } catch (err) {
        console.error(`an InterviewClient '${event}' handler threw:`, err);
      }
    }
  }
}

function checkSupport() {
  if (!window.RTCPeerConnection || !navigator.mediaDevices?.getUserMedia) {
    const reason = window.isSecureContext ? 'this browser does not support WebRTC'
      : 'the camera needs a secure (https://) page';
    throw new InterviewError('unsupported_browser', reason);
  }
}

/** @param {StartOptions} options */
async function openMedia(audio, video, options) {
  const { echoCancellation = true, noiseSuppression = true, autoGainControl = true } = options;
  const constraints = {
    audio: audio && { echoCancellation, noiseSuppression, autoGainControl },
    video: video && { width: { ideal: 640 }, height: { ideal: 480 } },
  };
  try {
    return await navigator.mediaDevices.getUserMedia(constraints);
  } catch (err) {
    if (err.name === 'NotAllowedError' || err.name === 'SecurityError') {
      throw new InterviewError('media_denied', 'camera or microphone access was denied');
    }
    throw new InterviewError('media_unavailable', `no usable camera or microphone (${err.name}: ${err.message})`);
  }
}

function createAudioElement(container) {
  const audio = document.createElement('audio');
  audio.autoplay = true;
  if (container) {
    container.append(audio);
  } else {
    audio.hidden = true;
    document.body.append(audio);
  }
  return audio;
}

/**
 * `Retry-After` (seconds; RFC 9110 also allows a date) in ms, or 0.
 * @param {Response} response
 */
function retryAfterMs(response) {
  const raw = response.headers.get('Retry-After');
  if (!raw) return 0;
  const seconds = Number(raw);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(raw) - Date.now();
  return Math.max(0, Math.min(ms, 60_000)) || 0;
}

/**
 * @param {number} status
 * @param {string} [message] the server's `{"error"}` text
 * @param {number} [retryAfter] ms the server asked to wait (503)
 * @returns {InterviewError}
 */
function httpError(status, message, retryAfter = 0) {
  const text = message || `HTTP ${status}`;
  if (status === 503) {
    return new InterviewError('busy', text, { status, retryable: true, retryAfterMs: retryAfter });
  }
  if (status === 401 || status === 403) {
    return new InterviewError('bad_token', 'this interview link is not valid (wrong or expired token)', { status });
  }
  if (status === 404 || (status === 409 && /ended/i.test(text))) {
    return new InterviewError('session_ended', 'this interview has ended or does not exist', { status });
  }
  if (status === 409) {
    // The server still holds the previous connection: retry until it lets go.
    return new InterviewError('already_connected', text, { status, retryable: true });
  }
  return new InterviewError('server', text, { status, retryable: status >= 500 || status === 429 });
}

function asInterviewError(err) {
  if (err instanceof InterviewError) return err;
  return new InterviewError('network', err?.message || String(err), { retryable: true });
}

/** Resolve when ICE gathering is complete or after `ms`, whichever is first. */
function iceGatheringComplete(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === 'complete') done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/** Resolve when `pc` is connected; reject if it fails, closes, or `ms` passes. */
function connected(pc, ms) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const state = pc.connectionState;
      if (state === 'connected') finish(null);
      else if (state === 'failed' || state === 'closed') {
        finish(new InterviewError('network', `the connection ${state}`, { retryable: true }));
      }
    };
    const finish = (error) => {
      clearTimeout(timer);
      pc.removeEventListener('connectionstatechange', check);
      if (error) reject(error); else resolve();
    };
    const timer = setTimeout(() => finish(new InterviewError(
      'network', `no connection within ${Math.round(ms / 1000)} s`, { retryable: true })), ms);
    pc.addEventListener('connectionstatechange', check);
    check();
  });
}

function timeoutSignal(ms) {
  return typeof AbortSignal.timeout === 'function' ? AbortSignal.timeout(ms) : undefined;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
