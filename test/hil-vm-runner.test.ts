/**
 * The host side of hil/vm/run.sh: the job script it writes, how it reads the guest's console (CRLF, the
 * exit marker), and the exit codes it promises (the command's, 124 on timeout, 125 when the VM dies, 2 on
 * usage). QEMU is replaced by a stand-in that plays the guest: it runs the job script run.sh wrote (as
 * the guest's init does after chroot) and prints its output with serial-console line endings. The real
 * VM is exercised by `make test-hil`.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const runner = join(root, 'hil/vm/run.sh');

// Plays the guest: parses -append like init.sh does, runs the job, ends with the marker (or misbehaves on demand).
const fakeQemu = `#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -append) app="$2"; shift 2;; *) shift;; esac; done
for a in $app; do case "$a" in hsx_job=*) job="\${a#hsx_job=}";; hsx_nonce=*) nonce="\${a#hsx_nonce=}";; esac; done
case "\${FAKE_QEMU_MODE:-ok}" in
  hang) exec sleep 60;;
  crash) echo "Kernel panic - not syncing"; echo "qemu: fatal" >&2; exit 1;;
esac
echo "[    0.1] some kernel line"
bash "$job" 2>&1 | sed 's/$/\\r/'
rc=\${PIPESTATUS[0]}
printf 'HSX-VM-EXIT %s %s\\r\\n' "$nonce" "$rc"
echo "[    9.9] reboot: Power down"
`;

function setup(): { dir: string; env: NodeJS.ProcessEnv } {
  const dir = mkdtempSync(join(tmpdir(), 'hil-runner-'));
  mkdirSync(join(dir, 'bin'));
  mkdirSync(join(dir, 'cache/kernel'), { recursive: true });
  writeFileSync(join(dir, 'bin/qemu-system-x86_64'), fakeQemu);
  chmodSync(join(dir, 'bin/qemu-system-x86_64'), 0o755);
  // A complete cache as far as run.sh can tell (stamps present), so it does not build the real one.
  writeFileSync(join(dir, 'cache/kernel/COMPLETE'), 'linux-image-fake fake\n');
  writeFileSync(join(dir, 'cache/initramfs.COMPLETE'), 'x\n');
  const env = { ...process.env, PATH: `${join(dir, 'bin')}:${process.env['PATH'] ?? ''}`, HIL_VM_CACHE: join(dir, 'cache') };
  return { dir, env };
}

function run(args: string[], env: NodeJS.ProcessEnv) {
  const r = spawnSync('bash', [runner, ...args], { cwd: root, env, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('the command runs from the caller\'s directory with HSX_* and --env passed in, and its exit code comes back', (t) => {
  const { dir, env } = setup();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = run(['--timeout', '30', '--env', 'EXTRA=two words', '--', 'bash', '-c', 'echo "cwd=$(pwd) hsx=$HSX_PROBE extra=$EXTRA"; echo to-stderr >&2; exit 7'],
    { ...env, HSX_PROBE: 'p1', NOT_PASSED: 'x' });
  t.is(r.code, 7, r.out + r.err);
  t.true(r.out.includes(`cwd=${root} hsx=p1 extra=two words\n`), r.out);
  t.true(r.out.includes('to-stderr\n'), 'stderr of the job arrives on the console too');
  t.false(r.out.includes('\r'), 'serial CRLF is turned back into LF');
  t.false(r.out.includes('HSX-VM-EXIT'), 'the exit marker is consumed, not printed');
  t.false(r.out.includes('reboot: Power down'));
  t.regex(r.out, /\[hil-vm\] command started [\d.]+ s after boot began/);
  t.regex(r.out, /\[hil-vm\] command exited 7 after/);
  t.deepEqual(readdirSync(join(dir, 'cache/jobs')), [], 'job files are removed afterwards');
});

test('output without a final newline is kept, and the marker after it is still found', (t) => {
  const { dir, env } = setup();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = run(['--', 'printf', 'no newline at the end'], env);
  t.is(r.code, 0, r.out + r.err);
  t.true(r.out.includes('no newline at the end\n'), r.out);
  t.false(r.out.includes('HSX-VM-EXIT'));
});

test('exit code 0 passes through, and arguments keep their quoting', (t) => {
  const { dir, env } = setup();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = run(['--', 'printf', '<%s>\\n', 'a b', "it's", '$HOME', ''], env);
  t.is(r.code, 0, r.out + r.err);
  t.true(r.out.includes("<a b>\n<it's>\n<$HOME>\n<>\n"), r.out);
});

test('a guest that never finishes gives 124 after the timeout', (t) => {
  const { dir, env } = setup();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = run(['--timeout', '1', '--', 'true'], { ...env, FAKE_QEMU_MODE: 'hang' });
  t.is(r.code, 124, r.out + r.err);
  t.regex(r.err, /timed out after 1 s/);
});

test('a VM that stops without the exit marker gives 125 and shows QEMU\'s stderr', (t) => {
  const { dir, env } = setup();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = run(['--', 'true'], { ...env, FAKE_QEMU_MODE: 'crash' });
  t.is(r.code, 125, r.out + r.err);
  t.true(r.out.includes('Kernel panic'));
  t.regex(r.err, /stopped without an exit marker/);
  t.regex(r.err, /qemu: fatal/);
});

test('usage error exits 2: no command; nothing is queued for the guest', (t) => {
  const { dir, env } = setup();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.is(run([], env).code, 2);
  t.false(existsSync(join(dir, 'cache/jobs')) && readdirSync(join(dir, 'cache/jobs')).length > 0);
});
