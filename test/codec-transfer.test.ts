import test from 'ava';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { openTransferDecoder, restoreTransferDecoder, type SlotIO, type TransferEncoding, type TransferTarget } from '../src/engine/codec/index.js';
import { compressImage, makePatch } from '../src/link/delta/index.js';
import { chunks } from './codec-craft.js';

const PAIRS = '/work/shared/vectors/firmware-pairs/';
const base = new Uint8Array(readFileSync(`${PAIRS}klipper-v3-usart2-usb-clock.old.bin`));
const image = new Uint8Array(readFileSync(`${PAIRS}klipper-v3-usart2-usb-clock.new.bin`));
const sha = (b: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());

function slots(): { io: SlotIO; inactive: Uint8Array; writes: number[] } {
  const inactive = new Uint8Array(64 * 1024);
  const writes: number[] = [];
  let next = 0;
  return {
    inactive,
    writes,
    io: {
      writeInactive: (o, b) => {
        if (o !== next) throw new Error(`write at ${o}, expected ${next}`);
        inactive.set(b, o);
        next = o + b.length;
        writes.push(o);
      },
      readInactive: (o, n) => {
        if (o + n > next) throw new Error('reads bytes not written yet');
        return inactive.slice(o, o + n);
      },
      readActive: (o, n) => base.subarray(o, o + n),
    },
  };
}

const target: TransferTarget = { imageSize: image.length, slotSize: 64 * 1024, active: { size: base.length, sha256: sha(base) } };
const payloads: Array<[TransferEncoding, Uint8Array]> = [
  [{ kind: 'raw' }, image],
  [{ kind: 'deflate', windowBits: 12 }, compressImage(image).bytes],
  [{ kind: 'patch' }, makePatch(base, image, { windowBits: 11 }).bytes],
];

for (const [enc, payload] of payloads) {
  test(`${enc.kind}: the transfer decoder writes the image in order, also when saved and restored after every chunk`, (t) => {
    for (const cut of [false, true]) {
      const s = slots();
      const opened = openTransferDecoder(enc, target, s.io);
      if (!opened.ok) return t.fail(opened.error.message);
      let d = opened.value;
      for (const part of chunks(payload, cut ? 3 : 4, cut ? 700 : 5000)) {
        t.is(d.process(part), null);
        if (cut) {
          const r = restoreTransferDecoder(d.save(), enc, target, s.io);
          if (!r.ok) return t.fail(r.error.message);
          t.is(r.value.inputOffset, d.inputOffset);
          d = r.value;
        }
      }
      t.is(d.finish(), null);
      t.is(d.outputOffset, image.length);
      t.true(Buffer.from(s.inactive.subarray(0, image.length)).equals(Buffer.from(image)), `${enc.kind} cut ${cut}`);
    }
  });
}

test('the transfer decoder refuses what does not fit: slot, window, a patch for another size, a patch without a base', (t) => {
  const s = slots();
  t.like(openTransferDecoder({ kind: 'raw' }, { imageSize: 10, slotSize: 5 }, s.io), { ok: false, error: { reason: 'target_too_large' } });
  t.like(openTransferDecoder({ kind: 'deflate', windowBits: 15 }, { imageSize: 10, slotSize: 50 }, s.io), { ok: false, error: { reason: 'window_exceeded', field: 'windowBits' } });
  t.like(openTransferDecoder({ kind: 'patch' }, { imageSize: 10, slotSize: 50 }, s.io), { ok: false, error: { reason: 'bad_call', field: 'active' } });
  const patch = payloads[2]![1];
  const d = openTransferDecoder({ kind: 'patch' }, { ...target, imageSize: image.length - 1 }, s.io);
  if (!d.ok) return t.fail();
  const before = s.writes.length;
  t.like(d.value.process(patch), { reason: 'bad_header', field: 'header.targetSize', offset: 44 });
  t.is(s.writes.length, before, 'nothing written');
  const raw = openTransferDecoder({ kind: 'raw' }, { imageSize: 4, slotSize: 50 }, slots().io);
  if (!raw.ok) return t.fail();
  t.like(raw.value.process(Uint8Array.of(1, 2, 3, 4, 5)), { reason: 'output_overflow', code: 'ENOSPC' });
  const short = openTransferDecoder({ kind: 'raw' }, { imageSize: 4, slotSize: 50 }, slots().io);
  if (!short.ok) return t.fail();
  t.is(short.value.process(Uint8Array.of(1, 2)), null);
  t.like(short.value.finish(), { reason: 'truncated', offset: 2 });
});
