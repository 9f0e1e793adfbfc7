// curvd dashboard: the session list and, for the selected session, its
// step history as hand-drawn SVG charts, polled from the daemon's own API
// (GET /v1/sessions and GET /v1/sessions/{id}/steps). Plain ES2017, no
// build step, nothing loaded from elsewhere.
'use strict';

(function () {
  const POLL_MS = 1500;
  const PAGE_SIZE = 1000;       // the daemon's largest page
  const MAX_POINTS = 20000;     // steps held in the page per session
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c'];
  const SVG = 'http://www.w3.org/2000/svg';
  // One chart per figure family: a series reads report[key], or
  // timing_ms[key] for the time split.
  const CHARTS = [
    { id: 'loss', title: 'loss', series: [{ key: 'loss' }] },
    { id: 'damping', title: 'damping \u03bb / \u03b3',
      series: [{ key: 'lambda', label: '\u03bb' }, { key: 'gamma', label: '\u03b3' }] },
    { id: 'rho', title: '\u03c1 (reduction ratio)', series: [{ key: 'rho', label: '\u03c1' }] },
    { id: 'alpha', title: '\u03b1 (step scale)', series: [{ key: 'alpha', label: '\u03b1' }] },
    { id: 'mu', title: '\u03bc (momentum)', series: [{ key: 'mu', label: '\u03bc' }] },
    { id: 'norms', title: 'update and gradient norms',
      series: [{ key: 'update_norm' }, { key: 'grad_norm' }] },
    { id: 'timing', title: 'daemon time per step (ms)',
      series: ['decode', 'step', 'encode', 'save'].map((k) => ({ key: k, timing: true })) },
  ];

  const $ = (id) => document.getElementById(id);
  const state = {
    token: localStorage.getItem('curvd-token') || '',
    selected: decodeURIComponent(location.hash.slice(1)) || null,
    session: null,   // the selected session's JSON
    history: [],     // its steps, oldest first
    since: 0,        // the last step read
    missed: 0,       // steps the daemon no longer held when asked
    log: false,
  };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // A GET of the daemon's API with the token, as its auth expects
  // (Authorization: Bearer, server/http/auth.c).
  async function api(path) {
    const headers = state.token ? { Authorization: 'Bearer ' + state.token } : {};
    const r = await fetch(path, { headers, cache: 'no-store' });
    if (r.ok) return r.json();
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }

  function setStatus(text, error) {
    $('status').textContent = text;
    $('status').className = error ? 'error' : '';
  }

  function fmt(v) {
    if (typeof v !== 'number' || !isFinite(v)) return v === undefined || v === null ? '\u2014' : String(v);
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : String(+v.toPrecision(5));
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- The session list ----

  async function allSessions() {
    let out = [], token = '';
    for (let page = 0; page < 20; page++) {
      const q = '/v1/sessions?page_size=' + PAGE_SIZE + (token ? '&page_token=' + encodeURIComponent(token) : '');
      const r = await api(q);
      out = out.concat(r.sessions);
      if (!r.next_page_token) break;
      token = r.next_page_token;
    }
    return out;
  }

  function renderSessions(list) {
    const body = $('sessions').tBodies[0];
    body.replaceChildren();
    $('no-sessions').hidden = list.length > 0;
    for (const s of list) {
      const report = (s.last_step && s.last_step.report) || {};
      const tr = document.createElement('tr');
      tr.dataset.id = s.id;
      if (s.id === state.selected) tr.className = 'selected';
      const id = el('td');
      id.appendChild(el('code', s.id.slice(0, 8)));
      id.title = s.id;
      tr.append(id, el('td', s.name || ''), el('td', s.optimizer), el('td', String(s.step), 'num'),
        el('td', fmt(report.loss), 'num'), el('td', s.updated_at.replace('T', ' ').replace('Z', '')),
        el('td', s.pending_callback ? 'yes: ' + s.pending_callback.split('/').slice(-3).join('/') : '\u2014'));
      tr.addEventListener('click', () => select(s.id));
      body.appendChild(tr);
    }
  }

  // ---- The selected session ----

  function select(id) {
    state.selected = id;
    state.session = null;
    state.history = [];
    state.since = 0;
    state.missed = 0;
    history.replaceState(null, '', '#' + encodeURIComponent(id));
    for (const tr of $('sessions').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.id === id);
    buildCharts();
    refresh();
  }

  // Every step after state.since, a page at a time.
  async function readHistory() {
    const base = '/v1/sessions/' + encodeURIComponent(state.selected) + '/steps?page_size=' + PAGE_SIZE;
    for (let page = 0; page < 100; page++) {
      const r = await api(base + '&since=' + state.since);
      if (r.oldest_step > state.since + 1 && r.steps.length) state.missed += r.oldest_step - state.since - 1;
      for (const e of r.steps) state.history.push(e);
      if (r.steps.length) state.since = r.steps[r.steps.length - 1].step;
      if (r.next_since === undefined) break;
    }
    if (state.history.length > MAX_POINTS) state.history.splice(0, state.history.length - MAX_POINTS);
  }

  function renderDetail() {
    const s = state.session;
    $('detail').hidden = !s;
    if (!s) return;
    $('detail-id').textContent = s.id + (s.name ? ' (' + s.name + ')' : '');
    const last = state.history.length ? state.history[state.history.length - 1] : null;
    let text = s.optimizer + ', step ' + s.step + ', ' + state.history.length + ' steps shown';
    if (last && last.report && last.report.loss !== undefined) text += ', loss ' + fmt(last.report.loss);
    if (state.missed) text += ' (' + state.missed + ' earlier steps were no longer kept)';
    $('detail-summary').textContent = text;
    $('config').textContent = JSON.stringify(s.config, null, 2);
    for (const c of CHARTS) drawChart(c);
  }

  // ---- Charts ----

  function buildCharts() {
    const box = $('charts');
    box.replaceChildren();
    for (const c of CHARTS) {
      const card = el('div', undefined, 'chart');
      card.id = 'chart-' + c.id;
      card.appendChild(el('h3', c.title));
      card.appendChild(svg('svg', { viewBox: '0 0 420 200', role: 'img', 'aria-label': c.title }));
      card.appendChild(el('div', undefined, 'legend'));
      box.appendChild(card);
    }
  }

  function valueOf(entry, s) {
    const src = s.timing ? entry.timing_ms : entry.report;
    const v = src ? src[s.key] : undefined;
    return typeof v === 'number' && isFinite(v) && (!state.log || v > 0) ? v : null;
  }

  // Ticks: linear, 5 evenly spaced; log, the powers of ten in range (or
  // the ends when the range is under a decade).
  function ticks(lo, hi) {
    if (!state.log) return [0, 1, 2, 3, 4].map((i) => lo + (hi - lo) * i / 4);
    const out = [];
    for (let p = Math.ceil(lo); p <= Math.floor(hi); p++) out.push(p);
    return out.length >= 2 ? out : [lo, hi];
  }

  function drawChart(c) {
    const card = $('chart-' + c.id);
    if (!card) return;
    const plot = card.querySelector('svg'), legend = card.querySelector('.legend');
    plot.replaceChildren();
    legend.replaceChildren();
    const W = 420, H = 200, L = 56, R = 10, T = 8, B = 22;
    const lines = c.series.map((s) => {
      const pts = [];
      for (const e of state.history) {
        const v = valueOf(e, s);
        if (v !== null) pts.push([e.step, state.log ? Math.log10(v) : v]);
      }
      return { s, pts };
    }).filter((l) => l.pts.length);
    const n = lines.reduce((k, l) => k + l.pts.length, 0);
    card.dataset.points = String(n);
    card.dataset.scale = state.log ? 'log' : 'linear';
    if (!n) {
      plot.appendChild(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' },
        'no ' + c.title + ' in these reports'));
      return;
    }
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const l of lines) for (const [x, y] of l.pts) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
    for (const t of ticks(y0, y1)) {
      plot.appendChild(svg('line', { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: 'grid' }));
      plot.appendChild(svg('text', { x: L - 4, y: sy(t) + 3, 'text-anchor': 'end' },
        fmt(state.log ? Math.pow(10, t) : t)));
    }
    plot.appendChild(svg('line', { x1: L, x2: L, y1: T, y2: H - B, class: 'axis' }));
    plot.appendChild(svg('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis' }));
    plot.appendChild(svg('text', { x: L, y: H - 6, 'text-anchor': 'start' }, 'step ' + x0));
    plot.appendChild(svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }, String(x1)));
    lines.forEach((l, i) => {
      const color = COLORS[i % COLORS.length];
      const d = l.pts.map(([x, y]) => sx(x).toFixed(1) + ',' + sy(y).toFixed(1)).join(' ');
      plot.appendChild(svg('polyline', { points: d, stroke: color, 'data-series': l.s.key }));
      const item = el('span', (l.s.label || l.s.key) + ' ' + fmt(state.log ? Math.pow(10, l.pts[l.pts.length - 1][1]) : l.pts[l.pts.length - 1][1]));
      const swatch = el('i');
      swatch.style.background = color;
      item.prepend(swatch);
      legend.appendChild(item);
    });
  }

  // ---- Polling ----

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const list = await allSessions();
      renderSessions(list);
      if (state.selected) {
        const s = list.find((x) => x.id === state.selected);
        if (!s) {
          state.selected = null;
          state.session = null;
        } else {
          state.session = s;
          if (!$('charts').children.length) buildCharts();
          await readHistory();
        }
        renderDetail();
      }
      setStatus('updated ' + new Date().toLocaleTimeString(), false);
    } catch (e) {
      if (e.status === 401) {
        setStatus(state.token ? 'the daemon does not know this token' : 'this daemon needs a token', true);
        $('token').focus();
        return; // no polling until a token is given
      }
      setStatus('cannot reach the daemon: ' + e.message, true);
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = $('token').value.trim();
    if (state.token) localStorage.setItem('curvd-token', state.token);
    else localStorage.removeItem('curvd-token');
    refresh();
  });
  $('log-scale').addEventListener('change', (ev) => {
    state.log = ev.target.checked;
    renderDetail();
  });
  $('token').value = state.token;
  refresh();
})();
