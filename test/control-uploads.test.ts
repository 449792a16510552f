/**
 * A streaming upload belongs to the connection that began it (issue 23, probe 14: another
 * operator's `provision.abort` of my session succeeded, and session ids are small and sequential).
 * Over real TCP with tokens: another operator's write, end and abort are `EPERM:not_owner` and
 * change nothing; an admin may still abort it; the owner finishes it.
 */
import test from 'ava';
import { sha256Hex, ROLES, type Role } from '../src/gateway/control/auth.js';
import { fixture, startHarness } from './control-harness.js';

const TOKENS: Record<Role, string> = { viewer: 'view-token-u', operator: 'oper-token-u', admin: 'admin-token-u' };
const tokens = [
  ...ROLES.map((role) => ({ name: `${role}-1`, role, sha256: sha256Hex(TOKENS[role]) })),
  { name: 'operator-2', role: 'operator' as const, sha256: sha256Hex('oper-token-other') },
];

test('another connection cannot write, end or abort my upload; an admin can abort it; twice', async (t) => {
  const h = await startHarness({ tokens });
  t.teardown(() => h.close());
  const image = fixture('t01_minimal.hxe');
  const mine = await h.client();
  const theirs = await h.client();
  const admin = await h.client();
  t.like(await mine.request({ cmd: 'auth', token: TOKENS.operator }), { status: 'ok' });
  t.like(await theirs.request({ cmd: 'auth', token: 'oper-token-other' }), { status: 'ok' });
  t.like(await admin.request({ cmd: 'auth', token: TOKENS.admin }), { status: 'ok' });

  for (const run of [1, 2]) {
    const begun = await mine.request({ cmd: 'provision.begin', total_bytes: image.length });
    t.is(begun['status'], 'ok', `run ${run}: ${JSON.stringify(begun)}`);
    const sid = begun['session_id'] as number;
    const half = Math.floor(image.length / 2);
    t.like(await mine.request({ cmd: 'provision.write', session_id: sid, seq: 0, data: Buffer.from(image.subarray(0, half)).toString('base64') }), { status: 'ok' });

    for (const req of [
      { cmd: 'provision.write', session_id: sid, seq: 1, data: Buffer.from(image.subarray(half)).toString('base64') },
      { cmd: 'provision.end', session_id: sid },
      { cmd: 'provision.abort', session_id: sid },
    ]) {
      const r = await theirs.request(req);
      t.like(r, { status: 'error', error: 'EPERM:not_owner' }, `run ${run}: ${req.cmd}`);
    }
    // nothing changed: the session is still open with half the bytes, and the owner can finish it
    const status = h.engine.sessions().find((s) => s.sessionId === sid);
    t.is(status?.bytesWritten, half, `run ${run}: the other connection wrote nothing`);

    if (run === 1) {
      t.like(await mine.request({ cmd: 'provision.write', session_id: sid, seq: 1, data: Buffer.from(image.subarray(half)).toString('base64') }), { status: 'ok' });
      const end = await mine.request({ cmd: 'provision.end', session_id: sid });
      t.is(end['status'], 'ok', JSON.stringify(end));
      const pid = (end['task'] as Record<string, unknown>)['pid'] as number;
      t.like(await admin.request({ cmd: 'provision.unload', pid }), { status: 'ok' });
    } else {
      // an admin clears a stuck upload of someone else
      t.like(await admin.request({ cmd: 'provision.abort', session_id: sid }), { status: 'ok' });
      t.false(h.engine.sessions().some((s) => s.sessionId === sid));
    }
  }
});
