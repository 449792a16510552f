/**
 * The live page's script (runs in the browser; served as /page.js, see assets.ts). No framework:
 * it fetches the state once (`/api/state`), follows the gateway's server-sent events
 * (`/api/events`, read with fetch so the token travels in a header, never in a URL), applies job
 * events and progress itself and fetches the state again when a scan or a boot changed what a row
 * shows. Every element is built with the DOM, never from HTML text: device and job fields are data.
 *
 * The project compiles with Node's types only, so the few browser objects used are declared here,
 * in this module's scope.
 */
import type { JobRecord } from '../../jobs/types.js';
import type { DeviceRow, PageRows, PageState } from '../model.js';

interface El {
  textContent: string | null;
  hidden: boolean;
  value: string;
  checked: boolean;
  disabled: boolean;
  className: string;
  style: { width: string };
  dataset: Record<string, string | undefined>;
  appendChild(c: El | TextNode): void;
  replaceChildren(...c: Array<El | TextNode>): void;
  querySelector(sel: string): El | null;
  setAttribute(k: string, v: string): void;
  addEventListener(type: string, fn: (e: { preventDefault(): void }) => void): void;
}
interface TextNode {
  readonly nodeType: number;
}
declare const document: {
  getElementById(id: string): El | null;
  createElement(tag: string): El;
  createTextNode(text: string): TextNode;
  querySelector(sel: string): El | null;
};
declare const sessionStorage: { getItem(k: string): string | null; setItem(k: string, v: string): void };

type Json = Record<string, any>;
type Job = JobRecord;
type Target = JobRecord['targets'][number];
// The shapes the server sends (type-only imports: erased from the browser's script).
type Row = DeviceRow;
type State = PageState;

const $ = (id: string): El => document.getElementById(id) as El;
let token = sessionStorage.getItem('hsx-token') ?? '';
let state: State | null = null;
/** `<link>/<target>` → percent, while a job runs on it. */
const progress = new Map<string, number>();
let stream: AbortController | null = null;
let reloadTimer: ReturnType<typeof setTimeout> | null = null;
let retryTimer: ReturnType<typeof setTimeout> | null = null;

function h(tag: string, attrs: Record<string, string> = {}, ...children: Array<El | TextNode | string | null>): El {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  return e;
}

const short = (sha: string | null | undefined): string => (sha ? sha.slice(0, 12) : '—');
const time = (ts: number | null): string => (ts ? new Date(ts * 1000).toLocaleTimeString() : '—');
const canOperate = (): boolean => state !== null && (state.you.role === 'operator' || state.you.role === 'admin');

function headers(extra: Record<string, string> = {}): Record<string, string> {
  return token ? { ...extra, authorization: `Bearer ${token}` } : extra;
}

async function load(): Promise<void> {
  const r = await fetch('/api/state', { headers: headers() });
  const body = (await r.json()) as Json;
  if (!r.ok) {
    setLive(false, r.status === 401 ? 'token needed' : `error ${r.status}`);
    $('who').textContent = String(body['message'] ?? body['error'] ?? '');
    return;
  }
  state = body as State;
  render();
  openStream(state.seq);
}

/**
 * A scan, a boot or a device error changes the device rows, not the jobs (job events carry their
 * records): fetch only the rows (`?part=rows`), a fraction of the whole state's size and of the
 * gateway's work to build it.
 */
function scheduleReload(): void {
  if (reloadTimer !== null) return;
  reloadTimer = setTimeout(() => {
    reloadTimer = null;
    void fetch('/api/state?part=rows', { headers: headers() })
      .then(async (r) => {
        if (!r.ok || !state) return;
        const rows = (await r.json()) as PageRows;
        state = { ...state, links: rows.links, devices: rows.devices, recent: rows.recent, seq: Math.max(state.seq, rows.seq) };
        render();
      })
      .catch(() => undefined);
  }, 250);
}

const jobRevision = (j: Job): number => Number((j as unknown as Json)['revision'] ?? 0);

function setLive(on: boolean, text: string): void {
  const e = $('live');
  e.className = on ? 'live on' : 'live off';
  e.textContent = text;
}

/** Reads the event stream: `id:`/`data:` lines, an empty line ends an event. */
function openStream(since: number): void {
  stream?.abort();
  const ctl = new AbortController();
  stream = ctl;
  void (async () => {
    try {
      const r = await fetch(`/api/events?since=${since}`, { headers: headers({ accept: 'text/event-stream' }), signal: ctl.signal });
      if (!r.ok || !r.body) throw new Error(`events: ${r.status}`);
      setLive(true, 'live');
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      let data = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line === '') {
            if (data) onEvent(JSON.parse(data) as Json);
            data = '';
          } else if (line.startsWith('data: ')) data += line.slice(6);
        }
      }
    } catch {
      /* closed or cut off: resynchronise below */
    }
    if (stream !== ctl) return;
    setLive(false, 'reconnecting');
    if (retryTimer === null) retryTimer = setTimeout(() => {
      retryTimer = null;
      void load();
    }, 2000);
  })();
}

function upsertJob(job: Job): void {
  if (!state) return;
  const i = state.jobs.findIndex((j) => j.id === job.id);
  if (i >= 0) {
    if (jobRevision(state.jobs[i]!) > jobRevision(job)) return;
    state.jobs[i] = job;
  } else state.jobs.unshift(job);
}

function onEvent(ev: Json): void {
  if (!state) return;
  const d = (ev['data'] ?? {}) as Json;
  if (typeof ev['seq'] === 'number') state.seq = Math.max(state.seq, ev['seq']);
  const type = String(ev['type']);
  if (type === 'job.progress') {
    const job = state.jobs.find((j) => j.id === d['job_id']);
    if (!job) return;
    const key = `${job.link}/${String(d['target'])}`;
    const pct = typeof d['percent'] === 'number' ? d['percent'] : 0;
    progress.set(key, pct);
    const t = job.targets.find((x) => x.target === String(d['target']));
    if (t) t.acked_bytes = Number(d['acked_bytes'] ?? t.acked_bytes);
    setBar(key, pct);
    return;
  }
  if (type.startsWith('job.') && d['job']) {
    const job = d['job'] as Job;
    upsertJob(job);
    for (const t of job.targets) {
      const key = `${job.link}/${t.target}`;
      if (t.state === 'IN_PROGRESS' && !progress.has(key)) progress.set(key, 0);
      if (t.state !== 'IN_PROGRESS' && t.state !== 'QUEUED') progress.delete(key);
    }
    render();
    return;
  }
  if (type === 'warning') return;
  // a scan, a boot, a device error: what the rows show changed
  scheduleReload();
}

function setBar(key: string, pct: number): void {
  const row = document.querySelector(`tr[data-key="${CSS_escape(key)}"]`);
  const bar = row?.querySelector('.bar');
  if (!row || !bar) return;
  bar.dataset['pct'] = String(pct);
  (bar.querySelector('i') as El).style.width = `${pct}%`;
  const st = row.querySelector('[data-field=status]');
  if (st && pct < 100) {
    st.textContent = `FLASHING ${pct}%`;
    st.className = 'st st-FLASHING';
    row.dataset['status'] = 'FLASHING';
  }
}

function CSS_escape(s: string): string {
  return s.replace(/["\\]/g, '\\$&');
}

/** The newest job naming this target, and its record of it. */
function lastJobOf(row: Row): { job: Job; t: Target } | null {
  if (!state || !row.link || !row.target) return null;
  for (const job of state.jobs) {
    if (job.link !== row.link) continue;
    const t = job.targets.find((x) => x.target === row.target);
    if (t) return { job, t };
  }
  return null;
}

function render(): void {
  if (!state) return;
  $('gw-id').textContent = state.gateway.id;
  $('who').textContent = state.gateway.auth === 'tokens' ? `${state.you.name} (${state.you.role})` : 'loopback: no tokens configured';
  renderAlerts();
  renderLinks();
  renderDevices();
  renderJobs();
  renderForm();
}

function renderAlerts(): void {
  const list = $('alerts');
  const items = [...state!.recent].reverse().map((a) =>
    h('li', { class: a.level, 'data-type': a.type }, h('b', {}, `${time(a.ts)} ${a.device ?? ''} ${a.type}`), ' ', a.message),
  );
  list.replaceChildren(...(items.length ? items : [h('li', { class: 'none' }, 'none')]));
}

function renderLinks(): void {
  const body = $('links').querySelector('tbody') as El;
  body.replaceChildren(...state!.links.map((l) =>
    h('tr', { class: l.error ? 'failed' : '' }, h('td', {}, l.name), h('td', {}, String(l.targets)), h('td', {}, time(l.scanned_ts)), h('td', { class: 'err' }, l.error ?? '')),
  ));
}

function renderDevices(): void {
  const body = $('devices').querySelector('tbody') as El;
  body.replaceChildren(...state!.devices.map((row) => {
    const last = lastJobOf(row);
    const pct = progress.get(row.key);
    let status = row.sha256 ? 'READY' : 'EMPTY';
    let error: string | null = null;
    if (pct !== undefined && last && (last.t.state === 'IN_PROGRESS' || last.t.state === 'QUEUED')) status = 'FLASHING';
    else if (last && (last.t.state === 'FAILED' || last.t.state === 'TIMED_OUT')) {
      status = 'FAILED';
      error = last.t.error ? `${last.job.id}: ${last.t.error.code} ${last.t.error.reason} — ${last.t.error.message}` : `${last.job.id} failed`;
    }
    const boot = row.local?.boot;
    const wear = row.local?.wear;
    const bar = h('div', { class: 'bar', 'data-pct': String(pct ?? (status === 'FLASHING' ? 0 : '')) }, h('i'));
    (bar.querySelector('i') as El).style.width = `${pct ?? 0}%`;
    const tr = h('tr', { 'data-key': row.key, 'data-status': status, 'data-sha': row.sha256 ?? '', class: status === 'FAILED' ? 'failed' : '' },
      h('td', {}, row.device ?? '—'),
      h('td', {}, row.link ? `${row.link} / ${row.target}` : 'local'),
      h('td', {}, h('span', { class: `st st-${status}`, 'data-field': 'status' }, status === 'FLASHING' ? `FLASHING ${pct ?? 0}%` : status), error ? h('div', { class: 'err', 'data-field': 'error' }, error) : null),
      h('td', {}, row.app_name ?? '—'),
      h('td', {}, row.version ?? '—'),
      h('td', { class: 'sha', 'data-field': 'sha', title: row.sha256 ?? '' }, short(row.sha256)),
      h('td', {}, (row.slots ?? []).map((s) => `${s.slot}${s.active ? '*' : ''}: ${s.state}${s.sha256 ? ` ${short(s.sha256).slice(0, 8)}` : ''}`).join(' · ') || '—'),
      h('td', { class: boot && (!boot.ok || boot.halted) ? 'err' : '' }, boot ? `${boot.halted ? 'HALTED' : boot.ok ? 'ok' : 'failed'} (#${boot.attempt})${boot.failed.length ? ` ${boot.failed.map((f) => `${f.source}: ${f.error}`).join('; ')}` : ''}` : '—'),
      h('td', { class: wear && wear.ratio >= 0.8 ? 'wear-hi' : '' }, wear ? `${(wear.ratio * 100).toFixed(3)}% (max ${wear.max_erases}/${wear.endurance}, ${wear.total_erases} erases)` : '—'),
      h('td', {}, bar),
    );
    return tr;
  }));
}

function renderJobs(): void {
  const body = $('jobs').querySelector('tbody') as El;
  body.replaceChildren(...state!.jobs.map((job) => {
    const bad = job.state === 'FAILED' || job.state === 'TIMED_OUT';
    const chips = job.targets.map((t) => {
      const failed = t.state === 'FAILED' || t.state === 'TIMED_OUT' || t.state === 'CANCELED';
      return h('span', { class: `chip ${failed ? 'bad' : t.state === 'SUCCEEDED' || t.state === 'SKIPPED' ? 'good' : ''}`, 'data-target': t.target, 'data-state': t.state },
        `${t.target} ${t.state}${t.outcome ? ` ${t.outcome}` : ''}${t.error ? `: ${t.error.code} ${t.error.reason} — ${t.error.message}` : ''}`);
    });
    const running = job.state === 'QUEUED' || job.state === 'IN_PROGRESS';
    let cancel: El | null = null;
    if (running && canOperate()) {
      cancel = h('button', { type: 'button', 'data-cancel': job.id }, 'cancel');
      cancel.addEventListener('click', () => void post(`/api/jobs/${encodeURIComponent(job.id)}/cancel`, {}));
    }
    return h('tr', { 'data-job': job.id, 'data-state': job.state, class: bad ? 'failed' : '' },
      h('td', {}, job.id), h('td', {}, job.link), h('td', {}, `${job.image.name} `, h('span', { class: 'sha' }, short(job.image.sha256))),
      h('td', {}, h('span', { class: `st st-${job.state}` }, job.state), job.reason ? h('div', { class: 'err' }, job.reason) : null),
      h('td', {}, ...chips), h('td', {}, time(job.submitted_ts)), h('td', {}, cancel));
  }));
}

let formFilled = '';
function renderForm(): void {
  const s = state!;
  const op = canOperate() && s.gateway.jobs === 'enabled';
  $('submit-form').hidden = !op;
  $('viewer-note').hidden = op || s.you.role !== 'viewer';
  const sig = JSON.stringify([s.links.map((l) => l.name), s.images]);
  if (!op || sig === formFilled) return;
  formFilled = sig;
  $('f-link').replaceChildren(...s.links.map((l) => h('option', { value: l.name }, l.name)));
  $('f-image').replaceChildren(...s.images.map((i) => h('option', { value: i }, i)));
}

async function post(path: string, body: Json): Promise<Json> {
  const r = await fetch(path, { method: 'POST', headers: headers({ 'content-type': 'application/json' }), body: JSON.stringify(body) });
  const reply = (await r.json()) as Json;
  const out = $('f-result');
  if (reply['ok']) out.textContent = reply['job'] ? `${String((reply['job'] as Json)['id'])} ${String((reply['job'] as Json)['state'])}` : 'ok';
  else out.textContent = `refused: ${String(reply['error'])}${reply['detail']?.['message'] ? ` — ${String(reply['detail']['message'])}` : ''}`;
  out.className = reply['ok'] ? '' : 'err';
  if (reply['ok'] && reply['job']) {
    upsertJob(reply['job'] as Job);
    render();
  }
  return reply;
}

$('submit-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const nodes = $('f-nodes').value.trim();
  const body: Json = { link: $('f-link').value, image: $('f-image').value };
  if (nodes) body['nodes'] = nodes;
  if ($('f-force').checked) body['options'] = { force: true };
  void post('/api/jobs', body);
});

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem('hsx-token', token);
  $('token').value = '';
  formFilled = '';
  void load();
});

void load();
