import test from 'ava';
import { ok, err } from '../src/hxe/result.js';

test('Result helpers carry value or error', (t) => {
  const a = ok(3);
  const b = err('x');
  t.true(a.ok);
  t.is(a.value, 3);
  t.false(b.ok);
  t.is(b.error, 'x');
});
