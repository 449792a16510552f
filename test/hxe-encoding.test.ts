import test from 'ava';
import { formatMode, parseModeText } from '../src/hxe/index.js';
import { compareCodePoints, pyJsonDumps } from '../src/hxe/pyjson.js';
import { utf8Length } from '../src/hxe/strings.js';
import { buildImage, parseImage } from '../src/hxe/index.js';

/** Text helpers behind the mailbox JSON and string tables. */

test('pyJsonDumps matches Python json.dumps(sort_keys=True, separators=(",", ":"))', (t) => {
  // expected strings are what CPython 3 prints for the same objects
  t.is(pyJsonDumps({ b: 1, a: [true, false, null], c: 'x"\\\n\t\u0001é😀\u007f' }), '{"a":[true,false,null],"b":1,"c":"x\\"\\\\\\n\\t\\u0001\\u00e9\\ud83d\\ude00\\u007f"}');
  t.is(pyJsonDumps([1.5, 0.1, 1e16, 1.5e16, 1e-5, 0.0001, 123456.789, -2.5e-7, 1e22]), '[1.5,0.1,1e+16,1.5e+16,1e-05,0.0001,123456.789,-2.5e-07,1e+22]');
  t.is(pyJsonDumps([NaN, Infinity, -Infinity, -0, undefined]), '[NaN,Infinity,-Infinity,0,null]');
  t.is(pyJsonDumps({ '\u{1F600}': 1, '\uFFFF': 2 }), '{"\\uffff":2,"\\ud83d\\ude00":1}', 'keys in code point order, not UTF-16 order');
  t.true(compareCodePoints('a', 'ab') < 0);
  t.is(compareCodePoints('x', 'x'), 0);
});

test('mode names: parsing and formatting', (t) => {
  t.deepEqual(parseModeText('rw|tap'), { ok: true, mask: 0x07 });
  t.deepEqual(parseModeText('HSX_MBX_MODE_RDONLY | fanout_block'), { ok: true, mask: 0x21 });
  t.deepEqual(parseModeText('0x10|wo'), { ok: true, mask: 0x12 });
  t.deepEqual(parseModeText('0x80'), { ok: false, unknown: '0x80' });
  t.deepEqual(parseModeText('rw|bogus'), { ok: false, unknown: 'bogus' });
  t.is(formatMode(0x13), 'RDWR|FANOUT_DROP');
  t.is(formatMode(0x01), 'RDONLY');
  t.is(formatMode(0x2c), 'TAP|FANOUT|FANOUT_BLOCK');
  t.is(formatMode(0x40), '0x40');
  t.is(formatMode(0), '0');
});

test('utf8Length counts bytes like an encoder (incl. surrogate pairs and lone surrogates)', (t) => {
  for (const s of ['', 'abc', 'é', '€', '😀', 'a😀b', '\ud800', '\udc00x']) t.is(utf8Length(s), new TextEncoder().encode(s).length, JSON.stringify(s));
});

test('long strings (over the short-string path) and non-ASCII strings survive a build/parse round trip', (t) => {
  const long = 'n'.repeat(5000);
  const b = buildImage({ code: new Uint8Array(4), values: [{ group: 1, id: 1, name: long, unit: 'µs', groupName: '温度' }] });
  if (!b.ok) return t.fail(b.error.message);
  const r = parseImage(b.value);
  if (!r.ok) return t.fail(r.error.message);
  t.is(r.value.values[0]?.name, long);
  t.is(r.value.values[0]?.unit, 'µs');
  t.is(r.value.values[0]?.groupName, '温度');
});
