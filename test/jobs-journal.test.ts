/**
 * The job journal (src/gateway/jobs/journal.ts, docs/jobs.md#the-journal): the line layout built by
 * hand, replay (last snapshot wins, next_id), a torn tail, a bit-flipped middle line, compaction,
 * and failed appends that leave nothing behind (injected and, where tmpfs can be mounted, real).
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { JobJournal, JOURNAL_FILE, decodeLine, encodeLine, replayBytes, type JobsFs, type JournalRecord } from '../src/gateway/jobs/journal.js';
import type { JobRecord } from '../src/gateway/jobs/types.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = fs.mkdtempSync(join(tmpdir(), 'hsx-jobs-journal-'));
  dirs.push(d);
  return d;
};
test.after.always(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function rec(n: number, state: JobRecord['state'] = 'QUEUED', revision = 1): JobRecord {
  return {
    id: `j-${n}`,
    link: 'can0',
    image: { name: 'app.hxe', sha256: 'ab'.repeat(32), size: 100, app_name: 'app' },
    options: {},
    state,
    targets: [{ target: '7', state, outcome: null, error: null, from: null, to: null, acked_bytes: 0, updated_ts: n }],
    submitted_by: { name: 'local', role: 'admin', via: 'control' },
    client_token: null,
    submitted_ts: n,
    started_ts: null,
    finished_ts: null,
    reason: null,
    revision,
  };
}

const jobLine = (n: number, state: JobRecord['state'] = 'QUEUED', revision = 1): JournalRecord => ({ k: 'job', next_id: n + 1, job: rec(n, state, revision) });

test('a line is {"c":"<crc32 hex>","r":<record>} + newline, the CRC over the record bytes exactly (built by hand)', (t) => {
  const r = jobLine(3);
  const json = JSON.stringify(r);
  const body = Buffer.from(json, 'utf8');
  const crc = crc32(body).toString(16).padStart(8, '0');
  const byHand = Buffer.concat([Buffer.from('{"c":"'), Buffer.from(crc), Buffer.from('","r":'), body, Buffer.from('}'), Buffer.from([0x0a])]);
  const line = encodeLine(r);
  t.deepEqual(line, byHand);
  // The offsets the docs' table gives.
  t.is(line.toString('latin1', 0, 6), '{"c":"');
  t.is(line.toString('latin1', 6, 14), crc);
  t.is(line.toString('latin1', 14, 20), '","r":');
  t.is(line[line.length - 2], 0x7d);
  t.is(line[line.length - 1], 0x0a);
  // The whole line is JSON too.
  t.deepEqual(JSON.parse(line.toString('utf8')), { c: crc, r: JSON.parse(json) });
  const d = decodeLine(line.subarray(0, line.length - 1));
  t.true(d.ok);
  if (d.ok) t.deepEqual(d.rec, r);
  // Any single flipped bit in the record is caught.
  const flipped = Buffer.from(line.subarray(0, line.length - 1));
  flipped[40] = flipped[40]! ^ 0x04;
  const bad = decodeLine(flipped);
  t.false(bad.ok);
  if (!bad.ok) t.true(bad.reason === 'crc_mismatch' || bad.reason === 'bad_frame');
});

test('append then replay: every record in order, the last snapshot per id wins, next_id never goes back', (t) => {
  const dir = tmp();
  const { journal, replay } = JobJournal.open(dir);
  t.is(replay.jobs.size, 0);
  t.is(replay.nextId, 1);
  journal.append(jobLine(1));
  journal.append(jobLine(2));
  journal.append(jobLine(1, 'IN_PROGRESS', 2), jobLine(1, 'SUCCEEDED', 3));
  journal.append({ k: 'hdr', v: 1, next_id: 9 });
  t.is(journal.lines, 5);
  journal.close();
  const again = JobJournal.open(dir);
  t.deepEqual([...again.replay.jobs.keys()], ['j-1', 'j-2']);
  t.is(again.replay.jobs.get('j-1')!.state, 'SUCCEEDED');
  t.is(again.replay.jobs.get('j-1')!.revision, 3);
  t.is(again.replay.nextId, 9);
  t.is(again.replay.report.intact, 5);
  t.is(again.replay.report.torn, 0);
  t.deepEqual(again.replay.report.damaged, []);
  again.journal.close();
});

test('a torn final line is dropped and counted, cut off the file, and the next append starts clean', (t) => {
  const dir = tmp();
  const { journal } = JobJournal.open(dir);
  journal.append(jobLine(1));
  journal.append(jobLine(2));
  journal.close();
  const path = join(dir, JOURNAL_FILE);
  const good = fs.statSync(path).size;
  const half = encodeLine(jobLine(3)).subarray(0, 37);
  fs.appendFileSync(path, half);
  const r = JobJournal.open(dir);
  t.is(r.replay.report.torn, 1);
  t.is(r.replay.report.torn_bytes, half.length);
  t.deepEqual(r.replay.report.damaged, []);
  t.deepEqual([...r.replay.jobs.keys()], ['j-1', 'j-2']);
  t.is(fs.statSync(path).size, good, 'the torn tail is cut off');
  r.journal.append(jobLine(3));
  r.journal.close();
  const r2 = JobJournal.open(dir);
  t.deepEqual([...r2.replay.jobs.keys()], ['j-1', 'j-2', 'j-3']);
  t.is(r2.replay.report.torn, 0);
  t.deepEqual(r2.replay.report.damaged, []);
  r2.journal.close();
});

test('a tail of zeros (a crash after the size grew, before the data) is a torn tail', (t) => {
  const dir = tmp();
  const { journal } = JobJournal.open(dir);
  journal.append(jobLine(1));
  journal.close();
  fs.appendFileSync(join(dir, JOURNAL_FILE), Buffer.alloc(300));
  const r = JobJournal.open(dir);
  t.is(r.replay.report.torn, 1);
  t.is(r.replay.report.torn_bytes, 300);
  t.deepEqual([...r.replay.jobs.keys()], ['j-1']);
  r.journal.close();
});

test('a bit flipped in a middle line is reported (line, offset, reason) and skipped; the rest replays', (t) => {
  const dir = tmp();
  const { journal } = JobJournal.open(dir);
  for (let n = 1; n <= 5; n++) journal.append(jobLine(n));
  journal.close();
  const path = join(dir, JOURNAL_FILE);
  const buf = fs.readFileSync(path);
  const starts = [0];
  for (let i = 0; i < buf.length - 1; i++) if (buf[i] === 0x0a) starts.push(i + 1);
  const at = starts[2]! + 60; // inside line 3's record
  buf[at] = buf[at]! ^ 0x01;
  fs.writeFileSync(path, buf);
  const r = JobJournal.open(dir);
  t.is(r.replay.report.damaged.length, 1);
  t.like(r.replay.report.damaged[0], { line: 3, offset: starts[2], reason: 'crc_mismatch' });
  t.is(r.replay.report.torn, 0);
  t.deepEqual([...r.replay.jobs.keys()], ['j-1', 'j-2', 'j-4', 'j-5']);
  t.is(r.replay.nextId, 6);
  r.journal.close();
});

test('a line whose CRC holds but whose record is not one is reported as bad_record', (t) => {
  const body = Buffer.from(JSON.stringify({ k: 'job', next_id: 2, job: { id: 'nope' } }));
  const line = Buffer.concat([Buffer.from('{"c":"' + crc32(body).toString(16).padStart(8, '0') + '","r":'), body, Buffer.from('}\n')]);
  const r = replayBytes(Buffer.concat([line, encodeLine(jobLine(1))]));
  t.is(r.report.damaged.length, 1);
  t.is(r.report.damaged[0]!.reason, 'bad_record');
  t.is(r.jobs.size, 1);
});

test('compaction rewrites one snapshot per job after a header (temp + rename), and appends go on in the new file', (t) => {
  const dir = tmp();
  const { journal } = JobJournal.open(dir);
  for (let n = 1; n <= 4; n++) for (const s of ['QUEUED', 'IN_PROGRESS', 'SUCCEEDED'] as const) journal.append(jobLine(n, s));
  t.is(journal.lines, 12);
  journal.rewrite([rec(3, 'SUCCEEDED'), rec(4, 'SUCCEEDED')], 5);
  t.is(journal.lines, 3);
  t.false(fs.existsSync(join(dir, JOURNAL_FILE + '.tmp')));
  journal.append(jobLine(5));
  journal.close();
  const r = JobJournal.open(dir);
  t.deepEqual([...r.replay.jobs.keys()], ['j-3', 'j-4', 'j-5']);
  t.is(r.replay.nextId, 6);
  t.is(r.replay.report.intact, 4);
  r.journal.close();
});

test('a header alone keeps next_id when every job has been dropped', (t) => {
  const dir = tmp();
  const { journal } = JobJournal.open(dir);
  journal.append(jobLine(41));
  journal.rewrite([], 42);
  journal.close();
  const r = JobJournal.open(dir);
  t.is(r.replay.jobs.size, 0);
  t.is(r.replay.nextId, 42);
  r.journal.close();
});

test('a failed append (half written, then ENOSPC) is rolled back: nothing of it stays, the next append is clean', (t) => {
  const dir = tmp();
  let fail = false;
  const faulty: JobsFs = {
    ...fs,
    writeSync: ((fd: number, buf: Uint8Array, off?: number, len?: number) => {
      if (fail) {
        fs.writeSync(fd, buf, off ?? 0, Math.floor((len ?? buf.length) / 2));
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      }
      return fs.writeSync(fd, buf, off ?? 0, len ?? buf.length - (off ?? 0));
    }) as typeof fs.writeSync,
  };
  const { journal } = JobJournal.open(dir, { fs: faulty });
  journal.append(jobLine(1));
  const size = fs.statSync(join(dir, JOURNAL_FILE)).size;
  fail = true;
  const err = t.throws(() => journal.append(jobLine(2)));
  t.is((err as { errno?: string }).errno, 'ENOSPC');
  t.is(fs.statSync(join(dir, JOURNAL_FILE)).size, size, 'the half line is cut off again');
  fail = false;
  journal.append(jobLine(3));
  journal.close();
  const r = JobJournal.open(dir);
  t.deepEqual([...r.replay.jobs.keys()], ['j-1', 'j-3']);
  t.deepEqual(r.replay.report.damaged, []);
  t.is(r.replay.report.torn, 0);
  r.journal.close();
});

function tryMount(dir: string, size: string): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test.serial('a real full disk (a tiny tmpfs): append throws ENOSPC and the journal still replays intact', (t) => {
  const mnt = tmp();
  if (!tryMount(mnt, '64k')) {
    t.log('cannot mount tmpfs here; covered by the injected-fs test');
    t.pass();
    return;
  }
  try {
    const { journal } = JobJournal.open(mnt);
    journal.append(jobLine(1));
    // Fill the file system.
    const filler = fs.openSync(join(mnt, 'filler'), 'w');
    try {
      for (;;) fs.writeSync(filler, Buffer.alloc(4096, 1));
    } catch (e) {
      t.is((e as { code?: string }).code, 'ENOSPC');
    }
    fs.closeSync(filler);
    const big = { k: 'job', next_id: 3, job: { ...rec(2), client_token: 'x'.repeat(8000) } } as JournalRecord;
    const err = t.throws(() => journal.append(big));
    t.is((err as { errno?: string }).errno, 'ENOSPC');
    journal.close();
    const r = JobJournal.open(mnt);
    t.deepEqual([...r.replay.jobs.keys()], ['j-1']);
    t.is(r.replay.report.torn, 0);
    r.journal.close();
  } finally {
    execFileSync('umount', [mnt]);
  }
});
