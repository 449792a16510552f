import test from 'ava';
import fc from 'fast-check';
import { parseLinkerMailboxJson } from '../src/hxe/sections/mailbox-json.js';
import { MetadataText } from '../src/hxe/strings.js';
import { fixture, fixtureNames } from './hxe-craft.js';

/**
 * The fast path for the linker's `.mailbox` JSON must be JSON.parse for every text it accepts (same keys,
 * order, values, prototypes) and must decline everything else, so JSON.parse keeps giving the verdicts.
 */
const enc = new TextEncoder();

/** Runs the fast path over `text` placed between binary bytes (as it sits in an image); undefined = declined. */
function fast(text: string | Uint8Array): unknown {
  const body = typeof text === 'string' ? enc.encode(text) : text;
  const bytes = new Uint8Array(body.length + 8);
  bytes.fill(0xf7);
  bytes.set(body, 4);
  return parseLinkerMailboxJson(new MetadataText(bytes, 0, bytes.length), 4, 4 + body.length);
}

function jsonParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return 'throws';
  }
}

const keyArb = fc.constantFrom('capacity', 'mode_mask', 'target', 'flags', 'mode', 'name', 'owner_pid', 'x', 'some_key', '__proto__', 'constructor');
const valueArb = fc.oneof(
  { arbitrary: fc.nat({ max: 1_000_000 }), weight: 6 },
  { arbitrary: fc.stringMatching(/^[a-z:_/0-9]{0,12}$/), weight: 6 },
  { arbitrary: fc.constantFrom(0, 999_999_999_999_999, 1e15, -1, 1.5, 1e21), weight: 1 },
  { arbitrary: fc.string({ maxLength: 12 }), weight: 1 },
  { arbitrary: fc.constantFrom('a"b', 'a\\b', 'é', '\u0001', '~ !'), weight: 1 },
  { arbitrary: fc.constantFrom([{ pid: 1 }], null, true, false), weight: 1 },
);
const entryArb = fc.array(fc.tuple(keyArb, valueArb), { maxLength: 5 });
/** Linker-like text built by hand (so duplicate keys and `__proto__` can occur), then mutated. */
const textArb = fc
  .record({
    entries: fc.array(entryArb, { maxLength: 4 }),
    version: fc.constantFrom(1, 2, 0, 10),
    mutation: fc.option(fc.record({ pos: fc.nat(), byte: fc.constantFrom(0x20, 0x22, 0x2c, 0x30, 0x5c, 0x7b, 0x7d, 0x5d, 0x3a, 0x2d, 0x65) }), { nil: undefined, freq: 2 }),
  })
  .map(({ entries, version, mutation }) => {
    const body = entries.map((e) => `{${e.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`).join(',');
    const text = `{"mailboxes":[${body}],"version":${version}}`;
    if (!mutation) return text;
    const at = mutation.pos % (text.length + 1);
    return text.slice(0, at) + String.fromCharCode(mutation.byte) + text.slice(at + 1);
  });

test('fast path: whatever it accepts equals JSON.parse exactly; the rest it declines (3000 cases)', (t) => {
  let accepted = 0;
  fc.assert(
    fc.property(textArb, (text) => {
      const got = fast(text);
      if (got === undefined) return true;
      accepted++;
      const want = jsonParse(text);
      if (want === 'throws') throw new Error(`fast path accepted text JSON.parse rejects: ${text}`);
      // deepEqual plus key order and prototypes, which deepEqual alone does not pin down
      t.deepEqual(got, want);
      t.is(JSON.stringify(got), JSON.stringify(want));
      for (const [g, w] of (got as { mailboxes: object[] }).mailboxes.map((m, i) => [m, (want as { mailboxes: object[] }).mailboxes[i]] as const)) {
        t.deepEqual(Object.keys(g), Object.keys(w as object));
        t.is(Object.getPrototypeOf(g), Object.getPrototypeOf(w));
      }
      return true;
    }),
    { numRuns: 3000, seed: 2611 },
  );
  t.log(`${accepted} of 3000 texts took the fast path`);
  t.true(accepted > 500, 'the generator reaches the fast path often enough to mean something');
});

test('fast path: every toolchain fixture with flat entries takes it, and gives what JSON.parse gives', (t) => {
  let taken = 0;
  for (const name of fixtureNames()) {
    const b = fixture(name);
    const at = Buffer.from(b).indexOf('{"mailboxes":');
    if (at < 0) continue;
    const end = Buffer.from(b).indexOf('}],"version":1}', at) + '}],"version":1}'.length;
    const text = Buffer.from(b.subarray(at, end)).toString('latin1');
    const got = parseLinkerMailboxJson(new MetadataText(b, 0, b.length), at, end);
    if (text.includes('"bindings"')) t.is(got, undefined, `${name}: nested values go to JSON.parse`);
    else {
      t.deepEqual(got, JSON.parse(text), name);
      taken++;
    }
  }
  t.true(taken >= 2, `fixtures on the fast path: ${taken}`);
});

test('fast path declines what is not exactly the linker form', (t) => {
  for (const text of [
    '[{"target":"app:a"}]', // bare array
    '{"mailboxes":[], "version":1}', // whitespace
    '{"version":1,"mailboxes":[]}', // other key order
    '{"mailboxes":[{"capacity":01}],"version":1}',
    '{"mailboxes":[{"capacity":-1}],"version":1}',
    '{"mailboxes":[{"capacity":1.0}],"version":1}',
    '{"mailboxes":[{"capacity":1e2}],"version":1}',
    '{"mailboxes":[{"capacity":1234567890123456}],"version":1}', // 16 digits
    '{"mailboxes":[{"target":"a\\"b"}],"version":1}',
    '{"mailboxes":[{"__proto__":1}],"version":1}',
    '{"mailboxes":[{"Target":"app:a"}],"version":1}',
    '{"mailboxes":[{"target":"app:a"}],"version":1}x',
    '{"mailboxes":[{"target":"app:a"}],"version":1',
    '{"mailboxes":[{"target":"app:a",}],"version":1}',
  ]) t.is(fast(text), undefined, text);
  t.deepEqual(fast('{"mailboxes":[],"version":1}'), { mailboxes: [], version: 1 });
  t.deepEqual(fast('{"mailboxes":[{}],"version":0}'), { mailboxes: [{}], version: 0 });
  t.deepEqual(fast('{"mailboxes":[{"a":1,"a":"x"}],"version":1}'), JSON.parse('{"mailboxes":[{"a":1,"a":"x"}],"version":1}'));
});
